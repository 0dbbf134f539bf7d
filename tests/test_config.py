"""Configs: strict from files and flags, checked on construction, and written without the fields added later."""

import json

import pytest

from mivae.config import (
    DataConfig,
    MIWAEConfig,
    MLPConfig,
    TrainConfig,
    VAEConfig,
    from_dict,
    read_config_file,
    replace,
    to_dict,
)
from mivae.errors import MivaeError


def test_from_dict_builds_the_config_with_each_value_in_its_field_type():
    config = from_dict(VAEConfig, {"hidden": [256, 128], "latent": 8, "lr": 2e-3, "denoising": False}, "model")
    assert config == VAEConfig(hidden=(256, 128), latent=8, lr=2e-3, denoising=False)
    assert from_dict(VAEConfig, {"hidden": "64,32"}).hidden == (64, 32)  # a flag's comma-separated list
    assert from_dict(DataConfig, {"limit": None}).limit is None


@pytest.mark.parametrize(
    "cls, mapping, message",
    [
        (VAEConfig, {"latnet": 8}, "unknown setting 'latnet' in [model]; known settings are hidden, latent"),
        (VAEConfig, {"latent": 8.5}, "model.latent must be a whole number; got 8.5."),
        (VAEConfig, {"latent": True}, "model.latent must be a whole number; got True."),
        (VAEConfig, {"denoising": "yes"}, "model.denoising must be true or false; got 'yes'."),
        (VAEConfig, {"hidden": 512}, "model.hidden must be a list of int; got 512."),
        (VAEConfig, {"latent": 0}, "latent must be a whole number from 1 to 4,096; got 0."),
        (VAEConfig, {"hidden": []}, "hidden needs 1 to 16 layers of 1 to 65,536 nodes; got []."),
        (MIWAEConfig, {"holdout_shape": "rows"}, "holdout_shape must be pixels or columns; got 'rows'."),
        (MLPConfig, {"init": "he"}, "init must be glorot or torch; got 'he'."),
    ],
)
def test_from_dict_refuses_what_is_not_a_setting_of_the_config_in_one_sentence(cls, mapping, message):
    with pytest.raises(MivaeError) as caught:
        from_dict(cls, mapping, "model")
    assert str(caught.value).startswith(message)


def test_a_train_config_settles_auto_to_the_device_it_will_run_on_and_checks_its_numbers():
    assert TrainConfig().device in ("cpu", "cuda:0")  # never "auto" in a saved run
    assert TrainConfig(device="cpu").device == "cpu"
    with pytest.raises(MivaeError, match="precision must be auto, bf16 or fp32; got 'fp8'."):
        TrainConfig(device="cpu", precision="fp8")
    with pytest.raises(MivaeError, match="min_delta must be a number of at least 0; got -0.1."):
        TrainConfig(device="cpu", min_delta=-0.1)
    with pytest.raises(MivaeError, match="batch_size must be a whole number from 1 to 1,048,576; got 0."):
        TrainConfig(device="cpu", batch_size=0)


def test_replace_applies_set_flags_strictly_and_ignores_unset_ones():
    config = DataConfig(method="vertical-lines", level=0.7)
    assert replace(config, level=None, seed=3) == DataConfig(method="vertical-lines", level=0.7, seed=3)
    with pytest.raises(MivaeError, match="seed must be a whole number of at least 0; got -2."):
        replace(config, seed=-2)


def test_to_dict_leaves_out_fields_added_later_while_they_hold_their_default():
    plain = to_dict(MIWAEConfig())
    assert "refine" not in plain and "holdout" not in plain and "holdout_shape" not in plain
    assert to_dict(MIWAEConfig(refine=16))["refine"] == 16
    assert to_dict(VAEConfig())["hidden"] == [512, 512]  # JSON-ready: tuples become lists
    assert from_dict(MIWAEConfig, plain) == MIWAEConfig()  # and read back to the same config


def test_read_config_file_takes_toml_and_json_tables_and_names_a_broken_file(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[model]\nhidden = [64, 64]\n[train]\nepochs = 3\n")
    assert read_config_file(toml) == {"model": {"hidden": [64, 64]}, "train": {"epochs": 3}}
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"data": {"level": 0.7}}))
    assert read_config_file(js) == {"data": {"level": 0.7}}
    (tmp_path / "bad.toml").write_text("[model\n")
    with pytest.raises(MivaeError, match=r"bad.toml is not valid TOML"):
        read_config_file(tmp_path / "bad.toml")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(MivaeError, match=r"must hold tables of settings"):
        read_config_file(tmp_path / "list.json")
    with pytest.raises(MivaeError, match=r"cannot read the config file"):
        read_config_file(tmp_path / "absent.toml")
