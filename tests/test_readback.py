"""Reading back files from anywhere (mivae.readback): JSON against its shape, weights against the network."""

import json

import pytest
import torch
from safetensors.torch import save_file

from mivae import readback
from mivae.errors import MivaeError
from mivae.readback import ANY, NUMBER, Either, Map, Optional, mismatch, whole

SHAPE = {
    "name": str,
    "layers": [whole(1, 100)],
    "ok": bool,
    "note": Optional(Either(None, str)),
    "scores": Map(NUMBER, fields={"health": {"ok": bool}}),
}
GOOD = {"name": "a", "layers": [3, 4], "ok": True, "scores": {"loss": 0.5, "health": {"ok": False}}}


def test_a_value_of_its_shape_passes_and_optional_keys_may_be_absent():
    assert mismatch(GOOD, SHAPE) is None
    assert mismatch({**GOOD, "note": None}, SHAPE) is None
    assert mismatch({**GOOD, "note": "why"}, SHAPE) is None


@pytest.mark.parametrize(
    "change, message",
    [
        ({"layers": [3, 0]}, "layers[1] must be a whole number from 1 to 100; got 0"),
        ({"layers": [3, 2_000_000_000]}, "layers[1] must be a whole number from 1 to 100; got 2000000000"),
        ({"layers": [3, True]}, "layers[1] must be a whole number from 1 to 100; got true"),
        ({"layers": "3"}, 'layers must be a list; got "3"'),
        ({"ok": 1}, "ok must be true or false; got 1"),
        ({"name": None}, "name must be a string; got null"),
        ({"note": 3}, "note must be null or a string; got 3"),
        ({"extra": 1}, "the file holds the unknown field 'extra'; its fields are name, layers, ok, note, scores"),
        ({"scores": {"loss": "low"}}, 'scores.loss must be a number; got "low"'),
        ({"scores": {"health": {"ok": 1}}}, "scores.health.ok must be true or false; got 1"),
    ],
)
def test_a_value_of_another_shape_is_named_with_where_and_what(change, message):
    assert mismatch({**GOOD, **change}, SHAPE) == message


def test_a_missing_key_is_named_and_an_object_in_an_either_says_what_is_wrong_inside_it():
    assert mismatch({k: v for k, v in GOOD.items() if k != "ok"}, SHAPE) == "ok is missing"
    assert mismatch({"a": {"b": "x"}}, Map(Either(NUMBER, {"b": NUMBER}))) == 'a.b must be a number; got "x"'
    assert mismatch([1], Either(None, {"b": NUMBER})) == "the file must be null or an object; got [1]"


def test_long_values_are_cut_short_in_the_sentence():
    message = mismatch({**GOOD, "name": ["x" * 1000]}, SHAPE)
    assert message.startswith('name must be a string; got ["xxx') and message.endswith("...")
    assert len(message) < 100


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"name": ', "is damaged and cannot be read (Expecting value"),
        (b"\xff\xfe", "is damaged and cannot be read"),
        (b"[" * 100_000 + b"]" * 100_000, "is damaged and cannot be read"),
        (b"[1, 2]", "is damaged: the file must be an object; got [1, 2]"),
    ],
)
def test_a_file_that_is_not_json_of_its_shape_is_one_sentence(tmp_path, content, message):
    path = tmp_path / "f.json"
    path.write_bytes(content)
    with pytest.raises(MivaeError) as caught:
        readback.read_json(path, SHAPE)
    assert str(caught.value).startswith(str(path)) and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_file_larger_than_any_mivae_writes_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    path.write_text(json.dumps(GOOD))
    monkeypatch.setattr(readback, "MAX_JSON_BYTES", 10)
    size = path.stat().st_size
    with pytest.raises(MivaeError, match=f"is damaged: it holds {size} bytes, more than any file mivae writes there"):
        readback.read_json(path, ANY)


def test_a_missing_file_is_the_sentence_given_for_it(tmp_path):
    with pytest.raises(MivaeError, match="^no run here$"):
        readback.read_json(tmp_path / "absent.json", missing="no run here")


def _network(width):
    return torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.ReLU(), torch.nn.Linear(width, 2))


def test_weights_are_checked_against_a_network_built_on_the_meta_device(tmp_path):
    weights = tmp_path / "model.safetensors"
    network = _network(5)
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(weights), {"architecture_sha256": "d"})
    state = readback.checked_state(weights, readback.on_meta(lambda: _network(5)), "d", "absent", "config.json")
    assert all(torch.equal(state[k], v) for k, v in network.state_dict().items())
    huge = readback.on_meta(lambda: _network(2_000_000_000))  # 16 GB of weights, and none allocated
    assert huge[0].weight.device.type == "meta"
    with pytest.raises(MivaeError, match="does not hold the weights of the network that config.json describes"):
        readback.checked_state(weights, huge, "d", "absent", "config.json")
    with pytest.raises(MivaeError, match="was saved for another configuration than config.json describes"):
        readback.checked_state(weights, readback.on_meta(lambda: _network(5)), "e", "absent", "config.json")
    with pytest.raises(MivaeError, match="^absent$"):
        readback.checked_state(tmp_path / "none", huge, "d", "absent", "config.json")
