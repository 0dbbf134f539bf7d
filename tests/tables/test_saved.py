"""Saving and loading fitted imputers without pickle (mivae.tables.saved and the estimators' save / load)."""

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.exceptions import NotFittedError

from mivae.errors import InputError
from mivae.tables import saved
from mivae.tables.estimators import IMPUTERS, MIWAEImputer, NotMIWAEImputer, VAEImputer, load_imputer

FAST = dict(max_epochs=3, hidden=(16,), random_state=0)


def mixed_frame(rows=80, seed=0):
    """A frame of floats, an unordered category, an ordered category of numbers, true/false and strings, with gaps."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "height": rng.normal(size=rows),
            "colour": pd.Categorical(rng.choice(["red", "blue"], rows)),
            "grade": pd.Categorical(rng.choice([1, 2, 3], rows), categories=[1, 2, 3], ordered=True),
            "member": (rng.random(rows) > 0.5).astype(object),
            "city": rng.choice(["Oslo", "Lund"], rows).astype(object),
            "weight": rng.normal(size=rows),
        }
    )
    for name in frame.columns:
        frame.loc[rng.random(rows) < 0.15, name] = np.nan
    return frame


@pytest.fixture(scope="module")
def frame():
    return mixed_frame()


@pytest.fixture(scope="module", params=IMPUTERS, ids=lambda c: c.__name__)
def saved_imputer(request, frame, tmp_path_factory):
    """(imputer fitted on the mixed frame, the folder it was saved into)."""
    imputer = request.param(**FAST).fit(frame)
    folder = tmp_path_factory.mktemp("saved") / request.param.__name__
    imputer.save(folder)
    return imputer, folder


def test_a_loaded_imputer_imputes_and_draws_exactly_as_the_saved_one(saved_imputer, frame):
    imputer, folder = saved_imputer
    assert sorted(p.name for p in folder.iterdir()) == ["imputer.json", "model.safetensors"]
    back = type(imputer).load(folder)
    assert type(back) is type(imputer) and back.get_params() == imputer.get_params()
    pd.testing.assert_frame_equal(back.transform(frame), imputer.transform(frame))
    for a, b in zip(back.sample(frame, 3), imputer.sample(frame, 3)):
        pd.testing.assert_frame_equal(a, b)
    assert list(back.feature_names_in_) == list(frame.columns) and back.history_ == imputer.history_
    assert back.imputation_spread_ == imputer.imputation_spread_ > 0
    assert back.transform(frame)["grade"].dtype == frame["grade"].dtype  # the ordered category of numbers


def test_an_array_with_declared_categorical_codes_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.normal(size=60), rng.integers(0, 3, 60).astype(float), rng.normal(size=60)])
    X[rng.random(X.shape) < 0.2] = np.nan
    imputer = MIWAEImputer(categorical=[1], **FAST).fit(X)
    imputer.save(tmp_path / "imputer")
    back = load_imputer(tmp_path / "imputer")
    assert back.categorical == [1] and not hasattr(back, "feature_names_in_")
    np.testing.assert_array_equal(back.transform(X), imputer.transform(X))


def test_load_of_one_class_refuses_another_and_load_imputer_takes_any(saved_imputer):
    imputer, folder = saved_imputer
    other = VAEImputer if type(imputer) is not VAEImputer else MIWAEImputer
    with pytest.raises(InputError, match=f"holds a {type(imputer).__name__}, not a {other.__name__}"):
        other.load(folder)
    assert type(load_imputer(folder)) is type(imputer)


def test_pickling_still_works_as_scikit_learn_requires(saved_imputer, frame):
    imputer, _ = saved_imputer
    pd.testing.assert_frame_equal(pickle.loads(pickle.dumps(imputer)).transform(frame), imputer.transform(frame))


def test_only_a_fitted_imputer_with_a_writable_seed_is_saved(tmp_path, frame):
    with pytest.raises(NotFittedError):
        VAEImputer().save(tmp_path / "a")
    imputer = VAEImputer(**{**FAST, "random_state": np.random.RandomState(0)}).fit(frame)
    with pytest.raises(InputError, match="random_state is a whole number or None"):
        imputer.save(tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_a_label_of_a_type_a_file_cannot_hold_is_refused_naming_it(tmp_path):
    frame = pd.DataFrame({"a": [1.0, 2.0, np.nan, 4.0] * 5, "b": [np.inf, 1.0, np.inf, None] * 5})
    imputer = VAEImputer(categorical=["b"], **FAST).fit(frame)  # an infinite label: a model takes it, JSON cannot
    with pytest.raises(InputError, match=r"a label of column 'b' cannot be saved: inf is a float"):
        imputer.save(tmp_path / "x")


def test_tagged_values_come_back_as_the_types_they_were():
    for value in ("1", 1, 1.0, True, -2.5):
        back = saved.value_from_json(json.loads(json.dumps(saved.value_to_json(value, "x"))), "here")
        assert back == value and type(back) is type(value)
    for bad in ({"int": True}, {"int": 1.5}, {"str": 3}, {"eval": "1"}, {"int": 1, "str": "1"}, [1]):
        with pytest.raises(InputError, match="is not a saved name or label"):
            saved.value_from_json(bad, "here")


# --- Damaged, edited and crafted files: each is one sentence (an InputError), nothing half-loaded ------------------


def _edit(field, value):
    def edit(content):
        target = content
        *path, last = field
        for key in path:
            target = target[key]
        target[last] = value

    return edit


def _drop(field):
    def edit(content):
        target = content
        *path, last = field
        for key in path:
            target = target[key]
        del target[last]

    return edit


JSON_EDITS = [
    (_edit(("format",), 2), "not a saved imputer of format 1"),
    (_edit(("class",), "os.system"), "holds 'os.system', not one of mivae's imputers"),
    (_drop(("params", "hidden")), "its parameters are not those of"),
    (_edit(("params", "hidden"), [0]), "hidden must be a non-empty sequence of layer widths of at least 1"),
    (_edit(("params", "likelihood"), "cauchy"), "likelihood must be gaussian or student-t"),
    (_edit(("fitted", "latent_"), "8"), "latent_ is '8'"),
    (_edit(("fitted", "precision_"), "fp8"), "precision_ is 'fp8'"),
    (_edit(("fitted", "imputation_spread_"), -0.5), "imputation_spread_ is -0.5"),
    (_edit(("fitted", "imputation_spread_"), "wide"), "imputation_spread_ is 'wide'"),
    (_edit(("fitted", "n_features_in_"), 5), "its network, schema and parameters disagree"),
    (_edit(("schema", 0, "kind"), "pickle"), "column .* of its schema is not a valid column"),
    (_edit(("schema", 0, "std"), -1.0), "column .* of its schema is not a valid column"),
    (_edit(("schema", 1, "categories", 0), {"pickle": "x"}), "is not a saved name or label"),
    (_edit(("schema", 1, "dtype"), "no such dtype"), "is not a saved dtype"),
    (_edit(("feature_names",), ["a"]), "its feature names are not one string per column"),
    (_edit(("history", "train_loss"), "low"), 'history.train_loss must be a list; got "low"'),
    (_edit(("history", "best_epoch"), 10**6), "its history's best epoch is after its last"),
    (_edit(("architecture", "latent"), 3), "its network, schema and parameters disagree"),
]


@pytest.mark.parametrize(("edit", "message"), JSON_EDITS, ids=[m for _, m in JSON_EDITS])
def test_an_edited_imputer_json_is_refused_in_one_sentence(edit, message, frame, tmp_path):
    folder = tmp_path / "imputer"
    MIWAEImputer(**FAST).fit(frame).save(folder)
    content = json.loads((folder / "imputer.json").read_text())
    edit(content)
    (folder / "imputer.json").write_text(json.dumps(content))
    with pytest.raises(InputError, match=message) as error:
        load_imputer(folder)
    assert "\n" not in str(error.value)


def test_damaged_or_swapped_files_are_refused_in_one_sentence(frame, tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    MIWAEImputer(**FAST).fit(frame).save(small)
    MIWAEImputer(**{**FAST, "hidden": (32,)}).fit(frame).save(large)
    cases = []
    (tmp_path / "swapped").mkdir()
    (tmp_path / "swapped" / "imputer.json").write_bytes((small / "imputer.json").read_bytes())
    (tmp_path / "swapped" / "model.safetensors").write_bytes((large / "model.safetensors").read_bytes())
    cases.append((tmp_path / "swapped", "was saved for another configuration"))
    (tmp_path / "truncated").mkdir()
    (tmp_path / "truncated" / "imputer.json").write_bytes((small / "imputer.json").read_bytes())
    (tmp_path / "truncated" / "model.safetensors").write_bytes((small / "model.safetensors").read_bytes()[:200])
    cases.append((tmp_path / "truncated", "is damaged or not a safetensors file"))
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "imputer.json").write_bytes((small / "imputer.json").read_bytes())
    (tmp_path / "pickled" / "model.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    cases.append((tmp_path / "pickled", "is damaged or not a safetensors file"))
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "imputer.json").write_bytes((small / "imputer.json").read_bytes())
    cases.append((tmp_path / "no-weights", "model.safetensors is missing"))
    (tmp_path / "not-json").mkdir()
    (tmp_path / "not-json" / "imputer.json").write_text("{not json")
    cases.append((tmp_path / "not-json", "is damaged and cannot be read"))
    cases.append((tmp_path / "absent", "no such folder"))
    for folder, message in cases:
        with pytest.raises(InputError, match=message):
            load_imputer(folder)


def test_a_crafted_architecture_is_refused_by_the_weights_shapes_before_anything_is_allocated(frame, tmp_path):
    # Layers of two billion nodes in the JSON, with the digest redone to match: the header's shapes give it away,
    # checked against a network built on the meta device (no memory), so nothing of that size is ever allocated.
    folder = tmp_path / "imputer"
    MIWAEImputer(**FAST).fit(frame).save(folder)
    content = json.loads((folder / "imputer.json").read_text())
    content["params"]["hidden"] = content["architecture"]["hidden"] = [2_000_000_000]
    (folder / "imputer.json").write_text(json.dumps(content))
    state = load_file(str(folder / "model.safetensors"))
    save_file(
        state, str(folder / "model.safetensors"), metadata={"architecture_sha256": saved.architecture_digest(content)}
    )
    with pytest.raises(InputError, match="does not hold the weights of the network that .*imputer.json describes"):
        load_imputer(folder)


def test_a_saved_not_miwae_keeps_its_missingness_model(frame, tmp_path):
    imputer = NotMIWAEImputer(missingness="self-masking-low", **FAST).fit(frame)
    imputer.save(tmp_path / "x")
    back = NotMIWAEImputer.load(tmp_path / "x")
    assert back.missingness == "self-masking-low"
    assert (back.model_.self_masking.slopes() == imputer.model_.self_masking.slopes()).all()


def test_a_tanh_imputer_on_the_given_scale_round_trips_and_an_older_file_loads_with_the_defaults(frame, tmp_path):
    imputer = NotMIWAEImputer(activation="tanh", standardize=False, **FAST).fit(frame)
    assert any(isinstance(m, torch.nn.Tanh) for m in imputer.model_.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in imputer.model_.modules())
    imputer.save(tmp_path / "tanh")
    back = load_imputer(tmp_path / "tanh")
    assert back.activation == "tanh" and back.standardize is False
    assert any(isinstance(m, torch.nn.Tanh) for m in back.model_.modules())
    pd.testing.assert_frame_equal(back.transform(frame), imputer.transform(frame))
    # a file written before activation, standardize and decoder were parameters: read with their defaults
    relu = MIWAEImputer(**FAST).fit(frame)
    relu.save(tmp_path / "older")
    path = tmp_path / "older" / "imputer.json"
    content = json.loads(path.read_text())
    del content["params"]["activation"], content["params"]["standardize"], content["params"]["decoder"]
    del content["params"]["min_scale"], content["architecture"]["decoder"], content["architecture"]["min_scale"]
    del content["params"]["n_models"]
    del content["fitted"]["imputation_spread_"]
    path.write_text(json.dumps(content))
    weights = tmp_path / "older" / "model.safetensors"  # its digest was of an architecture without the decoder
    save_file(load_file(weights), weights, metadata={"architecture_sha256": saved.architecture_digest(content)})
    older = load_imputer(tmp_path / "older")
    assert older.decoder == "mlp" and older.min_scale == older.model_.min_scale == 1e-3
    assert older.n_models == len(older.models_) == 1
    assert older.imputation_spread_ is None  # not measured when it was saved
    pd.testing.assert_frame_equal(older.transform(frame), relu.transform(frame))


@pytest.mark.parametrize("likelihood", ["gaussian", "student-t"])
def test_a_linear_decoder_round_trips_and_is_built_as_one_on_load(frame, tmp_path, likelihood):
    imputer = NotMIWAEImputer(decoder="linear", likelihood=likelihood, **FAST).fit(frame)
    imputer.save(tmp_path / "linear")
    back = load_imputer(tmp_path / "linear")
    assert back.decoder == "linear" and type(back.model_.decoder) is type(imputer.model_.decoder)
    pd.testing.assert_frame_equal(back.transform(frame), imputer.transform(frame))
    # the same file read as an MLP's: refused before any weight is read
    content = json.loads((tmp_path / "linear" / "imputer.json").read_text())
    content["params"]["decoder"] = content["architecture"]["decoder"] = "mlp"
    (tmp_path / "linear" / "imputer.json").write_text(json.dumps(content))
    weights = tmp_path / "linear" / "model.safetensors"
    save_file(load_file(weights), weights, metadata={"architecture_sha256": saved.architecture_digest(content)})
    with pytest.raises(InputError, match="model.safetensors"):
        load_imputer(tmp_path / "linear")


def test_min_scale_round_trips_and_a_file_whose_floor_disagrees_with_its_parameters_is_refused(frame, tmp_path):
    imputer = MIWAEImputer(min_scale=0.5, **FAST).fit(frame)
    imputer.save(tmp_path / "floored")
    back = load_imputer(tmp_path / "floored")
    assert back.min_scale == back.model_.min_scale == 0.5
    pd.testing.assert_frame_equal(back.transform(frame), imputer.transform(frame))
    content = json.loads((tmp_path / "floored" / "imputer.json").read_text())
    content["params"]["min_scale"] = 1.0  # the parameters say one floor, the network was trained with another
    (tmp_path / "floored" / "imputer.json").write_text(json.dumps(content))
    with pytest.raises(InputError, match="its network, schema and parameters disagree"):
        load_imputer(tmp_path / "floored")


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
def test_an_ensemble_round_trips_every_member_and_a_file_that_miscounts_them_is_refused(Imputer, frame, tmp_path):
    imputer = Imputer(n_models=3, **FAST).fit(frame)
    imputer.save(tmp_path / "ensemble")
    names = load_file(tmp_path / "ensemble" / "model.safetensors")
    assert {name.split(".")[0] for name in names} == {"0", "1", "2"}  # each member's weights, under its index
    back = load_imputer(tmp_path / "ensemble")
    assert back.n_models == len(back.models_) == 3 and back.model_ is back.models_[0]
    for kept, loaded in zip(imputer.models_, back.models_):
        assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(), loaded.state_dict().values()))
    pd.testing.assert_frame_equal(back.transform(frame), imputer.transform(frame))
    for a, b in zip(back.sample(frame, 4), imputer.sample(frame, 4)):
        pd.testing.assert_frame_equal(a, b)
    path = tmp_path / "ensemble" / "imputer.json"
    for count in (1, 2, 4):  # the parameters say another count than the weights hold
        content = json.loads(path.read_text())
        content["params"]["n_models"] = count
        edited = tmp_path / f"says-{count}"
        edited.mkdir()
        (edited / "imputer.json").write_text(json.dumps(content))
        weights = load_file(tmp_path / "ensemble" / "model.safetensors")
        digest = saved.architecture_digest(content)
        save_file(weights, edited / "model.safetensors", metadata={"architecture_sha256": digest})
        with pytest.raises(InputError, match="model.safetensors") as error:
            load_imputer(edited)
        assert "\n" not in str(error.value)


def test_a_saved_imputer_damaged_at_random_is_loaded_or_refused_in_one_sentence(frame, tmp_path):
    """tests/fuzzing.py: each damaged copy loads and imputes, or is refused with InputError in one sentence; never a
    traceback, never more than a gigabyte more address space."""
    from fuzzing import copy, damage, failures, run_cases, snapshot

    sources = {}
    for name, imputer in (("miwae", MIWAEImputer(**FAST)), ("not-miwae", NotMIWAEImputer(**FAST))):
        sources[name] = tmp_path / "sources" / name
        imputer.fit(frame).save(sources[name])
    table = tmp_path / "table.parquet"
    frame.to_parquet(table)
    rng = np.random.default_rng(2)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    folders, descriptions = [], []
    for i in range(41):
        folder = copy(sources[("miwae", "not-miwae")[i % 2]], tmp_path / "cases" / str(i))
        descriptions.append("undamaged" if i == 0 else damage(folder, rng, ["imputer.json"], ["model.safetensors"]))
        folders.append(folder)
    before = [snapshot(f) for f in folders]
    results = run_cases([["load-imputer", str(f), str(table)] for f in folders], 1 << 30, cwd)
    assert results[0][0] == 0, results[0]
    assert failures(results, descriptions) == []
    assert [snapshot(f) for f in folders] == before and list(cwd.iterdir()) == []
    assert sum(status == 2 for status, _ in results) >= 20
