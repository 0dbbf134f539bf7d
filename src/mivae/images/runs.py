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
from safetensors.torch import save_file

from mivae import __version__, health, readback
from mivae.artifacts import atomic_path
from mivae.config import CNNConfig, DataConfig, MIWAEConfig, MLPConfig, TrainConfig, VAEConfig, from_dict, to_dict
from mivae.errors import MivaeError
from mivae.hardware import resolve_precision
from mivae.images.data import SHAPES
from mivae.images.problem import check_data
from mivae.models import KINDS, build_model
from mivae.training import History, history_from_json

MAX_SIDE = 4_096  # pixels on a side of a run's images
MAX_CLASSES = 100_000


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


# What each JSON file of a run directory holds; a config's sections are checked field by field by mivae.config.
_SECTION = readback.Either(None, readback.Map(readback.ANY))
CONFIG_SHAPE = {
    "kind": str,
    "data": _SECTION,
    "model": _SECTION,
    "vae": _SECTION,
    "train": _SECTION,
    "image_shape": [readback.whole(1, MAX_SIDE)],
    "n_classes": readback.whole(2, MAX_CLASSES),
    "versions": readback.Optional(readback.Map(str)),
    "resolved": readback.Optional(readback.Map(readback.Either(str, readback.WHOLE))),
    "created": readback.Optional(str),
}
# Every metric is a number, but for the health check's verdict.
METRICS_SHAPE = readback.Map(readback.NUMBER, fields={"health": health.SHAPE})


# Settings added after runs were saved, with the value those older runs were trained with: a run directory whose
# config.json lacks one was made before it existed, and is read with the old value, not today's default.
_OLDER_RUNS = {"init": "torch", "min_epochs": 0, "min_delta": 0.0}


def _config(cls, table, section):
    """Returns the `cls` that a config.json table describes, settings added later filled in as the run had them."""
    if isinstance(table, dict):
        names = {f.name for f in dataclasses.fields(cls)}
        table = {**{k: v for k, v in _OLDER_RUNS.items() if k in names}, **table}
    return from_dict(cls, table, section)


def _checked_config(path):
    """Returns (config.json's content, kind, data, model config, VAE config or None, train config, image shape,
    classes) of the run in `path`, every field of its config.json checked, and the shape and classes checked against
    the dataset's."""
    file = path / "config.json"
    config = readback.read_json(file, CONFIG_SHAPE, f"{path} is not a mivae run directory: config.json is missing.")
    kind = config["kind"]
    if kind not in KINDS:
        raise MivaeError(f"{file} names model kind {kind!r}; expected one of {', '.join(KINDS)}.")

    def section(name, read):
        try:
            return read(config[name])
        except MivaeError as e:
            message = str(e).rstrip(".")
            if not message.startswith(f"{name}.") and f"[{name}]" not in message:
                message = f"its {name} settings are wrong: {message}"
            raise MivaeError(f"{file} is damaged: {message}.") from None

    imputer = KINDS[kind].imputer
    model_config = section("model", lambda t: _config(KINDS[kind].config, t, "model"))
    vae_config = section("vae", lambda t: _config(KINDS[imputer].config, t, "vae")) if imputer else None
    data = section("data", lambda t: check_data(from_dict(DataConfig, t, "data")))
    train = section("train", lambda t: _config(TrainConfig, t, "train"))
    image_shape, n_classes = tuple(config["image_shape"]), config["n_classes"]
    if (image_shape, n_classes) != SHAPES[data.dataset]:
        (height, width), classes = SHAPES[data.dataset]
        raise MivaeError(
            f"{file} is damaged: its image_shape {list(image_shape)} and n_classes {n_classes} are not those of "
            f"{data.dataset} ({height}x{width} images, {classes} classes)."
        )
    return config, kind, data, model_config, vae_config, train, image_shape, n_classes


def load_run(path, device="cpu"):
    """Returns the `Run` saved in directory `path`, its model rebuilt and its weights loaded.

    Every file is checked before anything is built: config.json field by field, and the weights' names and
    shapes, read from the safetensors header, against the network config.json describes (built on the meta
    device), so that no size a file states is allocated before the weights file is found to hold it."""
    path = Path(path)
    if not path.is_dir():
        raise MivaeError(f"run directory {path} does not exist.")
    config, kind, data, model_config, vae_config, train, image_shape, n_classes = _checked_config(path)
    imputer = KINDS[kind].imputer

    def build():
        vae = build_model(imputer, vae_config, image_shape) if imputer else None
        return build_model(kind, model_config, image_shape, n_classes, vae=vae, imputer_config=vae_config)

    state = readback.checked_state(
        path / "model.safetensors",
        readback.on_meta(build),
        _architecture_digest(config),
        f"{path} is not a complete run: model.safetensors is missing.",
        path / "config.json",
    )
    model = build()
    model.load_state_dict(state)
    model.to(device).eval()
    history = None
    if (path / "history.json").exists():
        history = history_from_json(readback.read_json(path / "history.json"), path / "history.json")
    metrics = readback.read_json(path / "metrics.json", METRICS_SHAPE) if (path / "metrics.json").exists() else {}
    return Run(
        kind=kind,
        data=data,
        model_config=model_config,
        train=train,
        model=model,
        image_shape=image_shape,
        n_classes=n_classes,
        vae_config=vae_config,
        history=history,
        metrics=metrics,
    )
