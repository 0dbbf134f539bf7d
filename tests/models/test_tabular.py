"""The tabular VAE's missingness model (mivae.models.tabular.SelfMasking) against its formulas by hand."""

import math

import pytest
import torch
from torch.nn import functional as F

from mivae.models.tabular import MIN_DF, MIN_SCALE, LinearDecoder, TabularVAE


def log_sigmoid(t):
    return -math.log1p(math.exp(-t))


def test_self_masking_scores_each_gap_by_its_own_value_and_sums_out_a_missing_label():
    torch.manual_seed(0)
    model = TabularVAE(
        [("continuous", 1), ("categorical", 3), ("continuous", 1)], hidden=(8,), latent=2, missingness="self-masking"
    )
    masking = model.self_masking
    with torch.no_grad():
        masking.slope.copy_(torch.tensor([1.5, -0.5]))
        masking.shift.copy_(torch.tensor([0.2, -1.0]))
        masking.label_logits.copy_(torch.tensor([2.0, -1.0, 0.5]))
    # one row: the first continuous value 1.0 observed, the label missing, the second continuous value drawn as 0.4
    continuous = torch.tensor([[[1.0, 0.4]]])  # (K = 1, B = 1, 2)
    continuous_observed = torch.tensor([[1.0, 0.0]])
    decoded = torch.tensor([[[0.3, -0.2, 1.1]]])  # p(label | z) = softmax
    log_ps, tilted = masking(continuous, continuous_observed, [decoded], [torch.zeros(1, 3)], [torch.tensor([0.0])])
    p_label = torch.softmax(decoded[0, 0], -1).tolist()
    expected = (
        log_sigmoid(-1.5 * (1.0 - 0.2))  # observed: sigmoid(-a (x - b))
        + log_sigmoid(-0.5 * (0.4 + 1.0))  # missing: sigmoid(a (x - b)) with a = -0.5
        + math.log(sum(p * math.exp(log_sigmoid(-c)) for p, c in zip(p_label, [2.0, -1.0, 0.5])))  # summed out
    )
    assert log_ps.item() == pytest.approx(expected, rel=1e-6)
    # the tilted label distribution is p(label | z) p(missing | label), normalised
    tilted_p = torch.softmax(tilted[0][0, 0], -1).tolist()
    unnormalised = [p * math.exp(log_sigmoid(-c)) for p, c in zip(p_label, [2.0, -1.0, 0.5])]
    assert tilted_p == pytest.approx([u / sum(unnormalised) for u in unnormalised], rel=1e-6)
    # an observed label scores the chance of its own label being observed
    onehot = F.one_hot(torch.tensor([1]), 3).float()
    seen, _ = masking(continuous, continuous_observed, [decoded], [onehot], [torch.tensor([1.0])])
    assert seen.item() == pytest.approx(log_sigmoid(-1.5 * 0.8) + log_sigmoid(-0.5 * 1.4) + log_sigmoid(-1.0), rel=1e-6)


@pytest.mark.parametrize(("kind", "sign"), [("self-masking-high", 1), ("self-masking-low", -1)])
def test_a_known_direction_fixes_the_sign_of_every_slope(kind, sign):
    model = TabularVAE([("continuous", 1)] * 3, hidden=(8,), latent=2, missingness=kind)
    with torch.no_grad():
        model.self_masking.slope.copy_(torch.tensor([-3.0, 0.0, 4.0]))
    assert (torch.sign(model.self_masking.slopes()) == sign).all()


def test_the_bound_gains_the_pattern_term_and_the_proposals_impute_their_own_draws():
    torch.manual_seed(1)
    layout = [("continuous", 1)] * 3
    plain = TabularVAE(layout, hidden=(8,), latent=2)
    masked = TabularVAE(layout, hidden=(8,), latent=2, missingness="self-masking")
    masked.load_state_dict({**plain.state_dict(), **{k: v for k, v in masked.state_dict().items() if "masking" in k}})
    values = torch.tensor([[0.5, 0.0, -1.0], [1.0, 2.0, 0.0]])
    observed = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    eps, noise = torch.randn(4, 2, 2), torch.randn(4, 2, 3)
    with torch.no_grad():
        log_w, _ = plain.log_weights(values, observed, eps)
        log_w_masked, params = masked.log_weights(values, observed, eps, noise)
        drawn = params["mean"] + params["scale"] * noise
        completed = values * observed + drawn * (1 - observed)
        log_ps, _ = masked.self_masking(completed, observed, [], [], [])
    torch.testing.assert_close(log_w_masked, log_w + log_ps)
    torch.testing.assert_close(params["drawn"], drawn)


def test_a_fresh_draw_given_the_latent_favours_the_values_likely_to_go_missing():
    # one continuous column whose high values go missing: p(x | z, missing) leans above p(x | z)
    model = TabularVAE([("continuous", 1)], hidden=(8,), latent=1, missingness="self-masking-high")
    with torch.no_grad():
        model.self_masking.slope.fill_(3.0)  # a = softplus(3) = 3.05
    params = {"mean": torch.zeros(1, 1), "scale": torch.ones(1, 1), "logits": [], "tilted": []}
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack(
        [
            model.draw_missing(
                params,
                torch.randn(64, 1, 1, generator=generator),
                torch.rand(1, 1, generator=generator),
                torch.rand(1, 0),
            )
            for _ in range(2000)
        ]
    ).flatten()
    # the exact tilted mean, by quadrature: E[x sigmoid(a x)] / E[sigmoid(a x)] under N(0, 1)
    x = torch.linspace(-8, 8, 20001)
    density = torch.exp(-(x**2) / 2) * torch.sigmoid(F.softplus(torch.tensor(3.0)) * x)
    exact = (x * density).sum() / density.sum()
    assert draws.mean().item() == pytest.approx(exact.item(), abs=0.05)  # 2,000 draws: standard error about 0.02
    assert exact.item() > 0.5 and draws.std().item() < 1.0  # well above the untilted mean 0, and narrower


def test_a_linear_decoder_is_affine_in_the_latent_with_one_scale_and_df_per_column():
    torch.manual_seed(2)
    layout = [("continuous", 1), ("categorical", 3), ("continuous", 1)]
    model = TabularVAE(layout, hidden=(8,), latent=2, likelihood="student-t", decoder="linear")
    assert isinstance(model.decoder, LinearDecoder)
    assert sorted(n for n, _ in model.decoder.named_parameters()) == ["affine.bias", "affine.weight", "constant"]
    assert model.decoder.affine.weight.shape == (2 + 3, 2) and model.decoder.constant.shape == (2 * 2,)
    with torch.no_grad():
        model.decoder.constant.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))  # two scales, then two df
    z1, z2 = torch.randn(4, 2), torch.randn(4, 2)
    a, b, mix = model.decode(z1), model.decode(z2), model.decode(0.3 * z1 + 0.7 * z2)
    torch.testing.assert_close(mix["mean"], 0.3 * a["mean"] + 0.7 * b["mean"])
    torch.testing.assert_close(mix["logits"][0], 0.3 * a["logits"][0] + 0.7 * b["logits"][0])
    scales = F.softplus(torch.tensor([0.5, -1.0])) + MIN_SCALE
    dfs = F.softplus(torch.tensor([2.0, 0.0])) + MIN_DF
    for params in (a, b, mix):  # the same for every latent
        torch.testing.assert_close(params["scale"], scales.expand(4, 2))
        torch.testing.assert_close(params["df"], dfs.expand(4, 2))
    gaussian = TabularVAE(layout, hidden=(8,), latent=2, decoder="linear")
    assert gaussian.decoder.constant.shape == (2,) and "df" not in gaussian.decode(z1)
    with pytest.raises(ValueError, match="unknown decoder 'pca'; expected one of mlp, linear."):
        TabularVAE(layout, decoder="pca")


def test_a_linear_decoder_with_gaussian_heads_on_continuous_columns_is_a_factor_model():
    torch.manual_seed(4)
    continuous = [("continuous", 1)] * 3
    model = TabularVAE(continuous, hidden=(8,), latent=2, decoder="linear")
    bias, weight, scale = model.factor_model()
    params = model.decode(torch.zeros(1, 2))
    torch.testing.assert_close(bias, params["mean"][0].double())  # the decoder's mean at z = 0, the prior's mean
    torch.testing.assert_close(weight, model.decoder.affine.weight.double())
    torch.testing.assert_close(scale, params["scale"][0].double())
    # z ~ N(0, I), x = W z + b + scale * noise: the sample covariance of many draws is W W^T + diag(scale^2)
    z = torch.randn(200_000, 2)
    drawn = model.draw(model.decode(z), torch.randn(200_000, 3), None).double()
    cov = weight @ weight.T + torch.diag(scale**2)
    torch.testing.assert_close(torch.cov(drawn.T), cov, atol=0.02, rtol=0.02)
    for other in (
        TabularVAE(continuous, hidden=(8,), latent=2),  # an MLP decoder
        TabularVAE(continuous, hidden=(8,), latent=2, likelihood="student-t", decoder="linear"),
        TabularVAE(continuous + [("categorical", 2)], hidden=(8,), latent=2, decoder="linear"),
        TabularVAE(continuous, hidden=(8,), latent=2, decoder="linear", missingness="self-masking"),
    ):
        assert other.factor_model() is None


@pytest.mark.parametrize("decoder", ["mlp", "linear"])
def test_the_scale_of_every_continuous_head_is_floored_at_min_scale(decoder):
    torch.manual_seed(5)
    layout = [("continuous", 1), ("categorical", 2), ("continuous", 1)]
    default = TabularVAE(layout, hidden=(8,), latent=2, decoder=decoder)
    floored = TabularVAE(layout, hidden=(8,), latent=2, decoder=decoder, min_scale=0.7)
    assert default.min_scale == MIN_SCALE == 1e-3 and floored.min_scale == 0.7

    def set_raw_scales(model, value):  # the two continuous heads' scales before softplus, the same for every z
        with torch.no_grad():
            if decoder == "linear":
                model.decoder.constant.fill_(value)
            else:
                model.decoder[-1].weight[2:4].zero_()
                model.decoder[-1].bias[2:4].fill_(value)

    for model in (default, floored):  # far below zero: softplus gives about 1e-22, and the floor is what is left
        set_raw_scales(model, -50.0)
        torch.testing.assert_close(model.decode(torch.randn(5, 2))["scale"], torch.full((5, 2), model.min_scale))
    set_raw_scales(floored, 0.0)  # the floor adds to the softplus: log 2 + 0.7
    torch.testing.assert_close(floored.decode(torch.randn(5, 2))["scale"], torch.full((5, 2), math.log(2) + 0.7))
    if decoder == "linear":  # no categorical column: the factor model's scale is the floored one too
        model = TabularVAE([("continuous", 1)] * 2, hidden=(8,), latent=1, decoder="linear", min_scale=0.7)
        with torch.no_grad():
            model.decoder.constant.fill_(-50.0)
        torch.testing.assert_close(model.factor_model()[2], torch.full((2,), 0.7, dtype=torch.float64))
