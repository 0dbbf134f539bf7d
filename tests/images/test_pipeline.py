"""One model on one problem: training and evaluation of each kind, and the checks that tie a Type 2 run to its VAE."""

import numpy as np
import pytest

from mivae.config import DataConfig, MLPConfig, TrainConfig, VAEConfig
from mivae.errors import MivaeError
from mivae.images.pipeline import check_vae_matches, evaluate_run, sees_mask, train_model
from mivae.images.problem import make_problem
from mivae.images.results import Type2Evaluation, VAEEvaluation
from mivae.stats import paired_test

DATA = DataConfig(dataset="digits", level=0.5)
TRAIN = TrainConfig(epochs=3, min_epochs=0, batch_size=64, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def runs():
    problem = make_problem(DATA)
    vae = train_model("vae", DATA, VAEConfig(hidden=(32,), latent=4), TRAIN, problem=problem)
    type2 = train_model("vae+mlp", DATA, MLPConfig(hidden=(32,)), TRAIN, vae_run=vae, problem=problem)
    return problem, vae, type2


def test_sees_mask_follows_the_kind_and_its_imputer():
    assert sees_mask("miwae", None) and sees_mask("not-miwae+cnn", MLPConfig())
    assert not sees_mask("mlp", MLPConfig()) and sees_mask("mlp", MLPConfig(mask_input=True))
    assert sees_mask("vae+mlp", MLPConfig(), VAEConfig(mask_input=True))  # a Type 2 classifier: its VAE's choice
    assert not sees_mask("vae+mlp", MLPConfig(mask_input=True), VAEConfig())


def test_a_type_2_run_is_refused_a_vae_of_another_corruption_or_of_clean_images(runs):
    _, vae, _ = runs
    check_vae_matches(vae, DATA)  # its own corruption
    with pytest.raises(MivaeError, match="was trained with level = 0.5; this run uses level = 0.7"):
        check_vae_matches(vae, DataConfig(dataset="digits", level=0.7))
    with pytest.raises(MivaeError, match="holds a vae model; a miwae run is needed"):
        check_vae_matches(vae, DATA, kind="miwae")
    with pytest.raises(MivaeError, match="pass --vae with a trained vae run"):
        train_model("vae+mlp", DATA, MLPConfig(hidden=(8,)), TRAIN, problem=runs[0])


def test_evaluating_a_vae_gives_its_negative_elbo_and_health(runs):
    problem, vae, _ = runs
    result = evaluate_run(vae, problem=problem)
    assert isinstance(result, VAEEvaluation) and result.kind == "vae" and result.test_images == len(problem.test) == 359
    assert result.test_negative_elbo == pytest.approx(vae.metrics["test_negative_elbo"], rel=1e-4)
    assert 0 < result.val_negative_elbo and {"ok", "reason"} <= set(result.health)
    # as JSON: the keys evaluation.json files have always had, in their order
    assert list(result.to_json()) == ["kind", "data", "test_images", "precision", "val_negative_elbo",
                                      "test_negative_elbo", "health"]  # fmt: skip
    assert VAEEvaluation.from_json(result.to_json()) == result


def test_a_type_2_evaluation_is_consistent_with_itself(runs):
    problem, _, type2 = runs
    result = evaluate_run(type2, imputations=(1, 10, 20), problem=problem, seed=3)
    assert result.single_accuracy == pytest.approx(type2.metrics["test_accuracy"])  # the same single imputation
    curve = result.accuracy_curve
    assert len(curve) == 20 and set(result.multiple) == {1, 10, 20} and result.largest_m == 20
    for m, row in result.multiple.items():
        assert row.accuracy == pytest.approx(curve[m - 1], abs=1e-6)
        assert sum(row.class_distribution) == 359
    assert result.true_class_distribution == np.bincount(problem.test.y.numpy(), minlength=10).tolist()
    assert result.z_multi_max_vs_10 is not None  # 20 samples against 10
    saved = result.to_json()
    assert list(saved["multiple"]) == ["1", "10", "20"] and list(saved["multiple"]["10"]) == [
        "accuracy", "z_multi_single", "mcnemar_p", "class_distribution"]  # fmt: skip
    assert list(saved)[-2:] == ["z_multi_max_vs_10", "accuracy_curve"]
    assert Type2Evaluation.from_json(saved) == result
    again = evaluate_run(type2, imputations=(1, 10, 20), problem=problem, seed=3)
    assert again.accuracy_curve == curve  # seeded: the same samples


def test_a_clean_trained_classifier_is_tested_directly_and_on_one_imputation_with_their_paired_test(runs):
    problem, vae, _ = runs
    clean = DataConfig(dataset="digits", level=0.5, clean_train=True)
    mlp = train_model("mlp", clean, MLPConfig(hidden=(32,)), TRAIN)
    result = evaluate_run(mlp, vae_run=vae, data=DATA, problem=problem)
    y = problem.test.y.numpy()
    direct, imputed = np.array(result.predicted), np.array(result.predicted_on_one_vae_imputation)
    assert result.accuracy == pytest.approx((direct == y).mean())
    assert result.accuracy_on_one_vae_imputation == pytest.approx((imputed == y).mean())
    assert result.z_imputation_vs_direct == pytest.approx(paired_test(imputed, direct, y).z)
    plain = evaluate_run(mlp, problem=make_problem(clean))  # without a VAE the imputation fields are left out
    assert plain.accuracy_on_one_vae_imputation is None and "z_imputation_vs_direct" not in plain.to_json()


def test_an_evaluation_read_back_without_its_fields_is_one_sentence_naming_them():
    with pytest.raises(MivaeError, match=r"an evaluation of vae lacks test_negative_elbo, health: it was written by "):
        VAEEvaluation.from_json(
            {"kind": "vae", "data": {}, "test_images": 1, "precision": "float32", "val_negative_elbo": 1.0}
        )
    health = {"ok": True, "reason": "fine", "measured": {}}
    type2 = {"kind": "vae+mlp", "data": {}, "test_images": 1, "precision": "float32", "health": health,
             "single_accuracy": 1.0, "single_uncertainty": {}, "multiple_uncertainty": {},
             "single_class_distribution": [], "true_class_distribution": [], "accuracy_curve": []}  # fmt: skip
    with pytest.raises(MivaeError, match="an evaluation of 'vae\\+mlp' is damaged: single_accuracy must be a number"):
        Type2Evaluation.from_json({**type2, "single_accuracy": "high", "multiple": {}})
    with pytest.raises(MivaeError, match="the multiple imputations of an evaluation of vae\\+mlp are damaged"):
        Type2Evaluation.from_json({**type2, "multiple": {"10": {"accuracy": 0.5}}})
