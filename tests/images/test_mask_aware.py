"""Mask-aware models: zero-filled values plus the mask, so no value is ever mistaken for an observation."""

import pytest
import torch

from mivae.config import CNNConfig, DataConfig, MLPConfig, TrainConfig, VAEConfig
from mivae.errors import MivaeError
from mivae.images.pipeline import evaluate_run, train_model
from mivae.images.problem import make_problem, mask_aware
from mivae.models import build_model

DATA = DataConfig(dataset="digits", level=0.5)


@pytest.fixture(scope="module")
def problem():
    return make_problem(DATA)


@pytest.mark.parametrize(
    "kind, config",
    [
        ("mlp", MLPConfig(hidden=(16,), mask_input=True)),
        ("cnn", CNNConfig(dense=8, mask_input=True)),
        ("vae", VAEConfig(hidden=(16,), latent=2, mask_input=True)),
    ],
)
def test_a_mask_aware_model_never_sees_the_values_of_missing_pixels(kind, config, problem):
    torch.manual_seed(0)
    model = build_model(kind, config, (8, 8)).eval()
    output = (lambda inputs: model.encode(inputs)[0]) if kind == "vae" else model  # the VAE: its encoder
    part = problem.test
    garbage = torch.where(part.mask, torch.rand(part.x.shape) * 9, part.x)  # other values where missing
    reference = output(mask_aware(part.x, part.mask))
    assert torch.equal(output(mask_aware(garbage, part.mask)), reference)
    assert not torch.allclose(output(mask_aware(part.x, ~part.mask)), reference)  # but it does see the mask


def test_type_2_classifiers_see_complete_imputations_so_a_mask_input_is_refused():
    vae = build_model("vae", VAEConfig(hidden=(16,), latent=2, mask_input=True), (8, 8))
    with pytest.raises(MivaeError, match="mask_input applies to the imputer"):
        build_model("vae+mlp", MLPConfig(mask_input=True), (8, 8), vae=vae)


def test_mask_aware_models_train_and_evaluate_through_the_pipeline(problem):
    train = TrainConfig(epochs=3, batch_size=64)
    mlp = train_model("mlp", DATA, MLPConfig(hidden=(64,), mask_input=True), train, problem=problem)
    assert evaluate_run(mlp, problem=problem).accuracy == mlp.metrics["test_accuracy"] > 0.3
    vae = train_model("vae", DATA, VAEConfig(hidden=(64,), latent=4, mask_input=True), train, problem=problem)
    type2 = train_model("vae+mlp", DATA, MLPConfig(hidden=(64,)), train, problem=problem, vae_run=vae)
    result = evaluate_run(type2, imputations=(1, 5), problem=problem)
    assert result.single_accuracy == type2.metrics["test_accuracy"] and 0 <= result.multiple[5].accuracy <= 1
    for u, acc in (
        (result.single_uncertainty, result.single_accuracy),
        (result.multiple_uncertainty, result.multiple[5].accuracy),
    ):
        assert u["nll"] > 0 and 0 <= u["brier"] <= 2 and 0 <= u["ece"] <= 1
        assert u["accuracy_at_coverage"]["1.0"] == pytest.approx(acc)  # nothing rejected: the plain accuracy


def test_the_second_channel_marks_the_observed_pixels(problem):
    part = problem.test
    inputs = mask_aware(part.x, part.mask)
    assert inputs.shape == (len(part), 2, 8, 8)
    assert torch.equal(inputs[:, 1], (~part.mask).float())  # 1 = observed: mostly zeros when most is missing
    assert torch.equal(inputs[:, 0][part.mask], torch.zeros(int(part.mask.sum())))
    assert torch.equal(inputs[:, 0][~part.mask], part.clean[~part.mask])
