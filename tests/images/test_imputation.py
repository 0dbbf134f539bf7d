import numpy as np
import pytest
import torch

from mivae.images.imputation import impute, multiple_imputation, negative_elbo_per_image, predict_proba
from mivae.models.classifiers import MLP
from mivae.models.type2 import VAEClassifier
from mivae.models.vae import VAE


@pytest.fixture
def model():
    torch.manual_seed(0)
    model = VAEClassifier(VAE((8, 8), (32,), 4), MLP((8, 8), 10, (32,))).eval()
    for p in model.parameters():  # large weights, so that predictions vary from image to image
        torch.nn.init.normal_(p, std=1.0)
    return model


def test_multiple_imputation_is_the_mean_of_per_sample_softmax_vectors(model):
    x, y = torch.rand(6, 8, 8), torch.randint(0, 10, (6,))
    m = 50
    result = multiple_imputation(model, x, y, m, keep=(1, 7, 50), seed=3)
    # The documented draw: one (B, M, L) noise tensor for the batch, here all six images.
    eps = torch.randn((6, m, 4), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        mu, logvar = model.vae.encode(x)
        z = mu[:, None] + torch.exp(0.5 * logvar)[:, None] * eps
        p = torch.softmax(model.classifier(model.vae.decode(z.flatten(0, 1))), -1).unflatten(0, (6, m))  # (6, M, 10)
    torch.testing.assert_close(result.proba, p.mean(1))
    for k in (1, 7, 50):
        expected = p[:, :k].mean(1).argmax(-1)
        assert torch.equal(result.predictions[k], expected)
        assert result.accuracy[k - 1] == pytest.approx((expected == y).float().mean().item())


def test_small_batches_end_the_curve_at_the_final_probabilities(model):
    x, y = torch.rand(9, 8, 8), torch.randint(0, 10, (9,))
    # 16 (image, sample) pairs per pass: 40 samples take three chunks per image.
    result = multiple_imputation(model, x, y, 40, batch_rows=16, seed=1)
    assert result.accuracy.shape == (40,)
    assert result.accuracy[-1] == pytest.approx((result.proba.argmax(1) == y).float().mean().item())
    assert torch.equal(result.predictions[40], result.proba.argmax(1))


def test_with_zero_variance_multiple_equals_single_imputation(model):
    torch.nn.init.constant_(model.vae.to_logvar.bias, -60.0)  # sigma ~ 1e-13: every sample is mu
    torch.nn.init.zeros_(model.vae.to_logvar.weight)
    x, y = torch.rand(20, 8, 8), torch.randint(0, 10, (20,))
    single = predict_proba(model, x).argmax(1)
    result = multiple_imputation(model, x, y, 30, keep=(1, 30))
    assert torch.equal(result.predictions[1], single) and torch.equal(result.predictions[30], single)
    assert len(set(single.tolist())) > 2
    np.testing.assert_allclose(result.accuracy, (single == y).double().mean().item())


def test_impute_is_the_decoded_mean(model):
    x = torch.rand(5, 8, 8)
    with torch.no_grad():
        expected = model.vae.decode(model.vae.encode(x)[0])
    torch.testing.assert_close(impute(model.vae, x, batch_size=2), expected)


def test_negative_elbo_is_seeded_and_positive(model):
    x = torch.rand(10, 8, 8)
    a = negative_elbo_per_image(model.vae, x, x, seed=4)
    assert torch.equal(a, negative_elbo_per_image(model.vae, x, x, seed=4))
    assert not torch.equal(a, negative_elbo_per_image(model.vae, x, x, seed=5))
    assert a.shape == (10,) and bool((a > 0).all())  # cross-entropy and KL are never negative
    # by hand, eq. 2.8: the summed cross-entropy at z = mu + sigma * eps, eps from the seed, plus the KL of eq. 2.9
    with torch.no_grad():
        mu, logvar = model.vae.encode(x)
        eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(4))
        logits = model.vae.decode_logits(mu + torch.exp(0.5 * logvar) * eps)
        cross_entropy = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2))
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    torch.testing.assert_close(a, cross_entropy + kl)


def test_a_cnns_probabilities_do_not_depend_on_the_batch_it_is_asked_to_run_in():
    from mivae.images.imputation import CONV_BATCH
    from mivae.models.classifiers import CNN

    torch.manual_seed(0)
    cnn, x = CNN((12, 12), dense=16), torch.rand(CONV_BATCH + 37, 12, 12)
    whole = predict_proba(cnn, x, batch_size=4096)
    assert whole.shape == (len(x), 10) and torch.allclose(whole.sum(1), torch.ones(len(x)))
    assert torch.allclose(whole, predict_proba(cnn, x, batch_size=5), atol=1e-6)
