import math

import pytest
import torch

from mivae.images.problem import mask_aware
from mivae.models.distributions import importance_weights, iwae_bound
from mivae.models.miwae import MIWAE, classify_importance, impute_importance, impute_multiple, miwae_loss


def _batch(n=256, seed=0, missing=0.5):
    g = torch.Generator().manual_seed(seed)
    values = (torch.rand((n, 8, 8), generator=g) > 0.6).float()
    mask = torch.rand((n, 8, 8), generator=g) < missing
    return values, mask


def _model(seed=0, missingness=None):
    torch.manual_seed(seed)
    return MIWAE((8, 8), hidden=(32,), latent=4, missingness=missingness).eval()


def _log_w(model, inputs, k, seed=1):
    with torch.no_grad():
        return model.log_weights(inputs, k, torch.Generator().manual_seed(seed))[0]


def test_the_bound_is_at_least_the_elbo_and_tightens_as_k_grows():
    model, (values, mask) = _model(), _batch()
    with torch.no_grad():
        model.decoder[0][0].weight.mul_(10)  # make the images depend strongly on z, so K matters
    inputs = mask_aware(values, mask)
    log_w = _log_w(model, inputs, 10)
    assert torch.all(iwae_bound(log_w) >= log_w.mean(0) - 1e-5)  # the same samples: log mean exp >= mean log
    bounds = [iwae_bound(_log_w(model, inputs, k)).mean().item() for k in (1, 10, 100)]
    assert bounds[0] < bounds[1] < bounds[2], bounds
    assert miwae_loss(model, inputs, samples=1).item() == pytest.approx(
        -_log_w(model, inputs, 1, seed=2).mean().item(), rel=0.05
    )


def test_missing_entries_never_reach_the_bound():
    model, (values, mask) = _model(), _batch(64)
    garbage = torch.where(mask, torch.rand(values.shape) * 100, values)  # other values where missing
    nan = torch.where(mask, torch.nan, values)  # or NaN, as mivae's corruption gives
    reference = _log_w(model, mask_aware(values, mask), 5)
    assert torch.equal(_log_w(model, mask_aware(garbage, mask), 5), reference)
    assert torch.equal(_log_w(model, mask_aware(nan, mask), 5), reference)
    flipped = values.clone()
    observed = (~mask[0]).nonzero()[0]
    flipped[0, observed[0], observed[1]] = 1 - flipped[0, observed[0], observed[1]]  # one observed pixel changes
    changed = _log_w(model, mask_aware(flipped, mask), 5)
    assert not torch.equal(changed[:, 0], reference[:, 0]) and torch.equal(changed[:, 1:], reference[:, 1:])


def test_importance_weights_sum_to_one():
    model, (values, mask) = _model(), _batch(32)
    w = importance_weights(_log_w(model, mask_aware(values, mask), 20))
    assert torch.all(w >= 0) and torch.allclose(w.sum(0), torch.ones(32))


def test_imputations_keep_every_observed_pixel():
    model, (values, mask) = _model(), _batch(16)
    inputs = mask_aware(values, mask)
    single = impute_importance(model, inputs, samples=20)
    assert torch.equal(single[~mask], values[~mask]) and single.min() >= 0 and single.max() <= 1
    multiple = impute_multiple(model, inputs, imputations=7, samples=20, generator=torch.Generator().manual_seed(0))
    assert multiple.shape == (7, 16, 8, 8)
    assert torch.equal(multiple[:, ~mask], values[~mask].expand(7, -1))
    assert multiple[:, mask].std(0).max() > 0  # different proposals were resampled
    one_proposal = impute_multiple(model, inputs, imputations=5, samples=1)
    assert torch.allclose(one_proposal, one_proposal[0].expand_as(one_proposal))  # K = 1: nothing to choose from


def test_weighted_classification_is_a_distribution_and_uniform_weights_give_the_plain_mean():
    model, (values, mask) = _model(), _batch(16)
    inputs = mask_aware(values, mask)
    torch.manual_seed(3)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    weighted = classify_importance(model, classifier, inputs, samples=30, generator=torch.Generator().manual_seed(4))
    uniform = classify_importance(
        model, classifier, inputs, samples=30, generator=torch.Generator().manual_seed(4), weighted=False
    )
    assert torch.allclose(weighted.sum(1), torch.ones(16)) and torch.allclose(uniform.sum(1), torch.ones(16))
    assert not torch.allclose(weighted, uniform)  # the weights matter


def test_not_miwae_adds_the_log_likelihood_of_the_mask():
    values, mask = _batch(32)
    inputs = mask_aware(values, mask)
    plain, selfmasking = _model(0), _model(0, "self-masking")
    with torch.no_grad():
        selfmasking.mask_scale.zero_()  # a_j = 0: every pixel missing with probability 1/2, whatever its value
    difference = _log_w(selfmasking, inputs, 5) - _log_w(plain, inputs, 5)
    assert torch.allclose(difference, torch.full_like(difference, -64 * math.log(2)), atol=1e-3)
    with torch.no_grad():
        selfmasking.mask_scale.fill_(5.0)  # now the mask's likelihood depends on the (imputed) values
    assert not torch.allclose(_log_w(selfmasking, inputs, 5) - _log_w(plain, inputs, 5), difference)


def test_training_on_incomplete_images_alone_raises_the_bound():
    from mivae.config import TrainConfig
    from mivae.training import adam, fit

    values, mask = _batch(512, seed=5, missing=0.3)
    values = values * torch.linspace(0, 1, 8)  # some structure to learn: brighter to the right
    inputs = mask_aware(values, mask)
    model = _model(1).train()
    before = iwae_bound(_log_w(model.eval(), inputs, 10)).mean().item()
    fit(model, adam(model, 3e-3), miwae_loss, inputs, torch.zeros(len(inputs)), TrainConfig(epochs=15, batch_size=64))
    after = iwae_bound(_log_w(model, inputs, 10)).mean().item()
    assert after > before + 5, (before, after)


@pytest.fixture(scope="module")
def digits():
    from mivae.config import DataConfig
    from mivae.images.problem import make_problem

    data = DataConfig(dataset="digits", level=0.5)
    return data, make_problem(data)


@pytest.mark.parametrize("kind", ["miwae", "not-miwae"])
def test_trained_on_incomplete_digits_alone_it_imputes_better_than_any_constant(kind, digits, tmp_path):
    from mivae.config import MIWAEConfig, TrainConfig
    from mivae.images.pipeline import evaluate_run, train_model
    from mivae.images.runs import load_run, save_run

    data, problem = digits
    run = train_model(
        kind,
        data,
        MIWAEConfig(hidden=(128,), latent=8, samples=5, eval_samples=20),
        TrainConfig(epochs=30, batch_size=64, patience=5),
        problem=problem,
    )
    test = problem.test
    missing = test.clean[test.mask]
    best_constant = missing.std().item()  # the RMSE of the ideal constant fill: the true mean of the missing pixels
    assert run.metrics["test_rmse_missing"] < 0.9 * best_constant, (run.metrics, best_constant)
    assert 0 < run.metrics["test_negative_bound"] < 64 * math.log(2) * 2  # nats for 8x8 images, half of them observed
    again = evaluate_run(load_run(save_run(run, tmp_path / kind)), problem=problem)
    assert again.test_rmse_missing == pytest.approx(run.metrics["test_rmse_missing"])


def test_a_classifier_on_miwae_imputations_weighs_them_by_importance(digits, tmp_path):
    from mivae.config import MIWAEConfig, MLPConfig, TrainConfig
    from mivae.errors import MivaeError
    from mivae.images.pipeline import evaluate_run, train_model
    from mivae.images.runs import load_run, save_run

    data, problem = digits
    train = TrainConfig(epochs=20, batch_size=64, patience=5)
    imputer = train_model(
        "miwae", data, MIWAEConfig(hidden=(128,), latent=8, samples=5, eval_samples=20), train, problem=problem
    )
    run = train_model("miwae+mlp", data, MLPConfig(hidden=(128,)), train, problem=problem, vae_run=imputer)
    result = evaluate_run(load_run(save_run(run, tmp_path / "run")), imputations=(30,), problem=problem)
    assert result.single["accuracy"] == pytest.approx(run.metrics["test_accuracy"])
    for way in (result.single, result.importance_weighted, result.uniform):
        assert 0.3 < way["accuracy"] <= 1, result  # well above chance (0.1)
        assert sum(way["class_distribution"]) == len(problem.test)
    assert math.isfinite(result.z_weighted_vs_single) and math.isfinite(result.z_weighted_vs_uniform)
    with pytest.raises(MivaeError, match="holds a miwae model; a vae run is needed"):
        train_model("vae+mlp", data, MLPConfig(hidden=(8,)), train, problem=problem, vae_run=imputer)


def test_hold_out_hides_observed_pixels_only_singly_or_by_whole_columns():
    from mivae.models.miwae import hold_out

    values, mask = _batch(400, missing=0.4)
    inputs = mask_aware(values, mask)
    torch.manual_seed(0)
    visible, held = hold_out(inputs, 0.3)
    observed = inputs[:, 1] > 0
    assert not held[~observed].any() and not visible[:, 1][held > 0].any()  # only observed pixels are hidden
    assert torch.equal(visible[:, 1] + held, inputs[:, 1])  # every observed pixel is one or the other
    assert torch.equal(visible[:, 0], inputs[:, 0] * visible[:, 1])  # hidden values are zeroed, not kept
    assert abs(held.sum().item() / observed.sum().item() - 0.3) < 0.02
    _, held = hold_out(
        mask_aware(values, torch.zeros_like(mask)), 0.3, "columns"
    )  # nothing missing: columns show whole
    column_sums = held.sum(1)  # (B, W): H where held, else 0
    assert torch.all((column_sums == 0) | (column_sums == 8)) and 0.2 < (column_sums > 0).float().mean() < 0.4


def _refined(seed=0):
    torch.manual_seed(seed)
    return MIWAE((8, 8), hidden=(32,), latent=4, refine=4).eval()


def test_missing_entries_never_reach_the_refined_loss_and_every_part_learns():
    model, (values, mask) = _refined(), _batch(64)
    losses = []
    for filled in (values, torch.where(mask, torch.rand(values.shape) * 100, values)):
        torch.manual_seed(3)  # the same held-out pixels and latent draws
        losses.append(miwae_loss(model, mask_aware(filled, mask), samples=3))
    assert torch.equal(losses[0], losses[1])
    losses[0].backward()
    for part in (model.encoder, model.decoder, model.refine):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_refined_imputations_keep_every_observed_pixel():
    model, (values, mask) = _refined(), _batch(16)
    inputs = mask_aware(values, mask)
    single = impute_importance(model, inputs, samples=10)
    multiple = impute_multiple(model, inputs, imputations=3, samples=10, generator=torch.Generator().manual_seed(0))
    for images in (single, *multiple):
        assert torch.equal(images[~mask], values[~mask]) and images.min() >= 0 and images.max() <= 1
    assert not torch.equal(multiple[0], multiple[1])  # resampled proposals differ


def test_local_refinement_takes_no_missingness_model_and_checks_its_holdout():
    with pytest.raises(ValueError, match="refinement"):
        MIWAE((8, 8), missingness="self-masking", refine=4)
    with pytest.raises(ValueError, match="holdout"):
        MIWAE((8, 8), refine=4, holdout=1.5)
    with pytest.raises(ValueError, match="holdout"):
        MIWAE((8, 8), refine=4, holdout_shape="rows")


def test_on_incomplete_digits_local_refinement_imputes_better_than_miwae_alone(digits):
    from mivae.config import TrainConfig
    from mivae.training import adam, fit

    _, problem = digits
    train, test = problem.train.inputs(with_mask=True), problem.test.inputs(with_mask=True)
    rmse = {}
    for refine in (0, 16):
        torch.manual_seed(0)
        model = MIWAE((8, 8), hidden=(128,), latent=8, refine=refine)
        fit(model, adam(model, 3e-3), miwae_loss, train, train, TrainConfig(epochs=40, batch_size=64, seed=0))
        imputed = impute_importance(model.eval(), test, samples=20, generator=torch.Generator().manual_seed(0))
        rmse[refine] = (imputed - problem.test.clean)[problem.test.mask].pow(2).mean().sqrt().item()
    assert rmse[16] < 0.9 * rmse[0], rmse
