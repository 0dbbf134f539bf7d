import json
import pickle

import pytest
import torch

from mivae.config import CNNConfig, DataConfig, MLPConfig, TrainConfig, VAEConfig, from_dict, read_config_file
from mivae.errors import MivaeError
from mivae.images.imputation import predict_proba
from mivae.images.runs import Run, load_run, save_run
from mivae.models import build_model
from mivae.training import History

DATA = DataConfig(dataset="digits", level=0.3)


def _run(kind, config, vae=None, vae_config=None):
    torch.manual_seed(1)
    model = build_model(kind, config, (8, 8), 10, vae=vae).eval()
    return Run(
        kind,
        DATA,
        config,
        TrainConfig(epochs=3),
        model,
        (8, 8),
        10,
        vae_config,
        History(train_loss=[1.0], best_epoch=1),
        {"test_accuracy": 0.5},
    )


@pytest.mark.parametrize(
    "kind, config",
    [("mlp", MLPConfig(hidden=(20, 10))), ("cnn", CNNConfig(dense=16)), ("vae+mlp", MLPConfig(hidden=(12,)))],
)
def test_a_saved_run_loads_back_to_identical_predictions(tmp_path, kind, config):
    vae_config = VAEConfig(hidden=(24,), latent=3)
    vae = build_model("vae", vae_config, (8, 8)) if kind.startswith("vae+") else None
    run = _run(kind, config, vae, vae_config if vae else None)
    save_run(run, tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    x = torch.rand(30, 8, 8)
    assert torch.equal(predict_proba(loaded.model, x), predict_proba(run.model, x))
    assert (loaded.kind, loaded.data, loaded.model_config, loaded.train) == (kind, DATA, config, TrainConfig(epochs=3))
    assert loaded.history.best_epoch == 1 and loaded.metrics == {"test_accuracy": 0.5}
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]
    assert resolved["precision"] in ("float32", "bfloat16") and resolved["threads"] >= 1


def test_a_saved_vae_decodes_identically(tmp_path):
    run = _run("vae", VAEConfig(hidden=(16,), latent=2))
    loaded = load_run(save_run(run, tmp_path / "vae"))
    z = torch.randn(5, 2)
    assert torch.equal(loaded.model.decode(z), run.model.decode(z))


@pytest.fixture
def saved(tmp_path):
    return save_run(_run("mlp", MLPConfig(hidden=(20, 10))), tmp_path / "run")


def test_weights_from_another_configuration_are_refused(saved):
    config = json.loads((saved / "config.json").read_text())
    config["model"]["hidden"] = [30, 10]
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(MivaeError, match="was saved for another configuration than"):
        load_run(saved)


def test_a_damaged_weights_file_is_one_clear_error(saved):
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(MivaeError, match="model.safetensors is damaged or not a safetensors file"):
        load_run(saved)


def test_a_pickle_posing_as_weights_is_refused_without_running_it(saved, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (saved / "model.safetensors").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(MivaeError, match="damaged or not a safetensors file"):
        load_run(saved)
    assert not marker.exists()


def test_a_damaged_or_missing_config_is_one_clear_error(saved, tmp_path):
    (saved / "config.json").write_text("{not json")
    with pytest.raises(MivaeError, match="config.json is damaged"):
        load_run(saved)
    with pytest.raises(MivaeError, match="is not a mivae run directory: config.json is missing"):
        load_run(tmp_path)
    with pytest.raises(MivaeError, match="does not exist"):
        load_run(tmp_path / "nowhere")


def test_config_refuses_unknown_keys_and_wrong_types():
    assert from_dict(VAEConfig, {"hidden": [64, 32], "latent": "8"}) == VAEConfig(hidden=(64, 32), latent=8)
    assert from_dict(DataConfig, {"limit": None, "exact": "true"}) == DataConfig(limit=None, exact=True)
    with pytest.raises(
        MivaeError,
        match="unknown setting 'layers' in \\[VAEConfig\\]; known settings are hidden, latent, lr, l2, denoising",
    ):
        from_dict(VAEConfig, {"layers": 3})
    with pytest.raises(MivaeError, match="VAEConfig.latent must be a whole number; got 2.5"):
        from_dict(VAEConfig, {"latent": 2.5})
    with pytest.raises(MivaeError, match="MLPConfig.hidden must be a list of int; got 5"):
        from_dict(MLPConfig, {"hidden": 5})
    with pytest.raises(MivaeError, match="DataConfig.exact must be true or false"):
        from_dict(DataConfig, {"exact": 1})


def test_config_files_in_toml_and_json(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[model]\nhidden = [64, 64]\nlatent = 10\n[train]\nepochs = 3\n")
    assert read_config_file(toml) == {"model": {"hidden": [64, 64], "latent": 10}, "train": {"epochs": 3}}
    bad = tmp_path / "c.json"
    bad.write_text("{")
    with pytest.raises(MivaeError, match="is not valid JSON"):
        read_config_file(bad)


def test_a_run_saved_before_init_and_min_epochs_existed_reads_as_it_was_trained(tmp_path):
    """Older config.json files lack `init` and `min_epochs`; those runs used PyTorch's initialisation and no minimum,
    and load with those values, not with today's defaults; their weights and digest stay valid."""
    vae_config = VAEConfig(hidden=(24,), latent=3)
    run = _run("vae+mlp", MLPConfig(hidden=(12,)), build_model("vae", vae_config, (8, 8)), vae_config)
    path = save_run(run, tmp_path / "run")
    config = json.loads((path / "config.json").read_text())
    for table, key in (("model", "init"), ("vae", "init"), ("train", "min_epochs")):
        del config[table][key]
    (path / "config.json").write_text(json.dumps(config))
    # The digest covers the model tables: an older run's was computed without the key, as here.
    from safetensors.torch import load_file, save_file

    from mivae.images.runs import _architecture_digest

    save_file(
        load_file(str(path / "model.safetensors")),
        str(path / "model.safetensors"),
        metadata={"architecture_sha256": _architecture_digest(config)},
    )
    loaded = load_run(path)
    assert loaded.model_config.init == "torch" and loaded.vae_config.init == "torch" and loaded.train.min_epochs == 0
    assert VAEConfig().init == "glorot" and TrainConfig().min_epochs == 10
