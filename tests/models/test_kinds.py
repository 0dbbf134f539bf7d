"""The model kinds' records: what each is built on and scored by, read by the code instead of parsed names."""

import pytest

from mivae.errors import MivaeError
from mivae.models import KINDS, SEARCHABLE, build_model, kind_of
from mivae.models.classifiers import CNN, MLP
from mivae.models.miwae import MIWAE, MIWAEClassifier
from mivae.models.type2 import VAEClassifier
from mivae.models.vae import VAE


def test_the_kinds_are_the_thesis_models_and_the_incomplete_data_vaes_each_alone_and_under_each_classifier():
    assert list(KINDS) == [
        "vae", "miwae", "not-miwae", "mlp", "cnn", "vae+mlp", "vae+cnn",
        "miwae+mlp", "miwae+cnn", "not-miwae+mlp", "not-miwae+cnn",
    ]  # fmt: skip
    assert SEARCHABLE == ("vae", "mlp", "cnn", "vae+mlp", "vae+cnn")  # §3.5 searches the thesis' kinds only
    assert [k for k in KINDS.values() if k.generative] == [KINDS["vae"], KINDS["miwae"], KINDS["not-miwae"]]
    assert [k.name for k in KINDS.values() if k.incomplete] == ["miwae", "not-miwae"]


@pytest.mark.parametrize("name", list(KINDS))
def test_a_record_says_what_its_model_is_built_on_and_which_way_its_score_is_better(name):
    kind = KINDS[name]
    assert kind.name == name and kind.classifier == (kind.part in ("mlp", "cnn"))
    if kind.imputer:  # a Type 2 classifier: on a frozen generative model, scored by accuracy
        assert KINDS[kind.imputer].generative and kind.part in ("mlp", "cnn")
        assert kind.on_incomplete_imputer == KINDS[kind.imputer].incomplete
    assert kind.higher_is_better == kind.classifier  # accuracy up; a negative ELBO or bound down
    assert (kind.score == "accuracy") == kind.classifier
    assert ("ELBO" in kind.score) == kind.vae and ("bound" in kind.score) == kind.incomplete


@pytest.mark.parametrize("name", list(KINDS))
def test_build_model_makes_the_network_a_record_describes_from_the_record_config(name):
    kind = KINDS[name]
    imputer = build_model(kind.imputer, KINDS[kind.imputer].config(), (8, 8)) if kind.imputer else None
    imputer_config = KINDS[kind.imputer].config() if kind.imputer else None
    model = build_model(name, kind.config(), (8, 8), 10, vae=imputer, imputer_config=imputer_config)
    expected = {"vae": VAE, "miwae": MIWAE, "not-miwae": MIWAE, "mlp": MLP, "cnn": CNN}[kind.part]
    if kind.imputer == "vae":
        assert isinstance(model, VAEClassifier) and isinstance(model.classifier, expected)
    elif kind.imputer:
        assert isinstance(model, MIWAEClassifier) and isinstance(model.classifier, expected)
    else:
        assert type(model) is expected
        if kind.incomplete:
            assert (model.missingness == "self-masking") == (name == "not-miwae")


def test_an_unknown_kind_is_one_sentence_naming_the_kinds():
    with pytest.raises(
        MivaeError, match=r"unknown model kind 'vae\+svm'; the kinds are vae, miwae, .*not-miwae\+cnn\."
    ):
        kind_of("vae+svm")
