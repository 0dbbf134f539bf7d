"""Run directories: a trained model with its resolved configuration, history and metrics.

    RUN_DIR/config.json        kind, data/model/train configs (and the VAE's for Type 2), versions
    RUN_DIR/model.safetensors  the weights; its metadata holds the digest of the architecture
    RUN_DIR/history.json       per-epoch training history
    RUN_DIR/metrics.json       metrics measured after training (validation, test)

Weights are stored with safetensors, which holds tensors only: loading a run can never
execute code from a file. Every file is written atomically.
"""

import dataclasses
import hashlib
import json
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mivae import __version__
from mivae.artifacts import atomic_path, weights_read
from mivae.config import CNNConfig, DataConfig, MIWAEConfig, MLPConfig, TrainConfig, VAEConfig, from_dict, to_dict
from mivae.errors import MivaeError
from mivae.hardware import resolve_precision
from mivae.models import KINDS, build_model
from mivae.training import History


@dataclass
class Run:
    """A trained model and everything needed to rebuild and judge it."""

    kind: str  # one of mivae.models.KINDS
    data: DataConfig
    model_config: VAEConfig | MLPConfig | CNNConfig  # the classifier's config for Type 2 kinds
    train: TrainConfig
    model: torch.nn.Module
    image_shape: tuple[int, int]
    n_classes: int
    vae_config: VAEConfig | MIWAEConfig | None = None  # Type 2 only: the frozen imputer's config
    history: History | None = None
    metrics: dict = dataclasses.field(default_factory=dict)


def write_json(path, content):
    """Writes `content` as indented JSON to `path`, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=2) + "\n")


def _architecture_digest(config_json):
    """The part of config.json that decides the weights' shapes and meaning, hashed."""
    keys = ("kind", "model", "vae", "image_shape", "n_classes")
    canonical = json.dumps({k: config_json.get(k) for k in keys}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _config_json(run):
    return {
        "kind": run.kind,
        "data": to_dict(run.data),
        "model": to_dict(run.model_config),
        "vae": to_dict(run.vae_config) if run.vae_config else None,
        "train": to_dict(run.train),
        "image_shape": list(run.image_shape),
        "n_classes": run.n_classes,
        "versions": {"mivae": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "resolved": {  # what "auto" settings turned into on the machine that trained the run
            "precision": str(resolve_precision(run.train.precision, run.train.device)).removeprefix("torch."),
            "threads": torch.get_num_threads(),
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def save_run(run, path):
    """Writes `run` to the directory `path` (created if needed); returns the path."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        config = _config_json(run)
        state = {k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}
        with atomic_path(path / "model.safetensors") as tmp:
            save_file(state, str(tmp), metadata={"architecture_sha256": _architecture_digest(config)})
        write_json(path / "config.json", config)
        write_json(path / "history.json", dataclasses.asdict(run.history or History()))
        write_json(path / "metrics.json", run.metrics)
    except OSError as e:
        raise MivaeError(f"cannot write the run directory {path}: {e.strerror or e}.") from None
    return path


def _read_json(path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MivaeError(f"{path.parent} is not a mivae run directory: {path.name} is missing.") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MivaeError(f"{path} is damaged and cannot be read ({e}).") from None


# Settings added after runs were saved, with the value those older runs were trained with: a run directory whose
# config.json lacks one was made before it existed, and is read with the old value, not today's default.
_OLDER_RUNS = {"init": "torch", "min_epochs": 0, "min_delta": 0.0}


def _config(cls, table, section):
    """Returns the `cls` that a config.json table describes, settings added later filled in as the run had them."""
    if isinstance(table, dict):
        names = {f.name for f in dataclasses.fields(cls)}
        table = {**{k: v for k, v in _OLDER_RUNS.items() if k in names}, **table}
    return from_dict(cls, table, section)


def load_run(path, device="cpu"):
    """Returns the `Run` saved in directory `path`, its model rebuilt and its weights loaded."""
    path = Path(path)
    if not path.is_dir():
        raise MivaeError(f"run directory {path} does not exist.")
    config = _read_json(path / "config.json")
    kind = config.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise MivaeError(f"{path / 'config.json'} names model kind {kind!r}; expected one of {', '.join(KINDS)}.")
    model_config = _config(KINDS[kind].config, config.get("model"), "model")
    imputer = KINDS[kind].imputer
    vae_config = _config(KINDS[imputer].config, config.get("vae"), "vae") if imputer else None
    image_shape, n_classes = tuple(config.get("image_shape") or ()), config.get("n_classes")
    if len(image_shape) != 2 or not isinstance(n_classes, int):
        raise MivaeError(f"{path / 'config.json'} is damaged: it lacks a valid image_shape or n_classes.")
    vae = build_model(imputer, vae_config, image_shape) if imputer else None
    model = build_model(kind, model_config, image_shape, n_classes, vae=vae, imputer_config=vae_config)

    weights = path / "model.safetensors"
    with weights_read(weights, f"{path} is not a complete run: model.safetensors is missing."):
        with safe_open(str(weights), framework="pt") as f:
            saved_digest = (f.metadata() or {}).get("architecture_sha256")
        state = load_file(str(weights))
    if saved_digest != _architecture_digest(config):
        raise MivaeError(f"{weights} was saved for a different configuration than {path / 'config.json'}.")
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise MivaeError(f"{weights} does not hold the weights of the model that config.json describes.") from None
    model.to(device).eval()

    history = None
    if (path / "history.json").exists():
        try:
            history = History(**_read_json(path / "history.json"))
        except TypeError:
            raise MivaeError(f"{path / 'history.json'} is damaged: it does not hold a training history.") from None
    metrics = _read_json(path / "metrics.json") if (path / "metrics.json").exists() else {}
    return Run(
        kind=kind,
        data=from_dict(DataConfig, config.get("data"), "data"),
        model_config=model_config,
        train=_config(TrainConfig, config.get("train"), "train"),
        model=model,
        image_shape=image_shape,
        n_classes=n_classes,
        vae_config=vae_config,
        history=history,
        metrics=metrics,
    )
