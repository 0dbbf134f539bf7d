import math

import pytest
import torch

from mivae.config import CNNConfig, MLPConfig, VAEConfig
from mivae.models import build_model
from mivae.models.classifiers import CNN, MLP
from mivae.models.distributions import kl_divergence, reparameterize
from mivae.models.type2 import VAEClassifier
from mivae.models.vae import VAE, negative_elbo, reconstruction_loss


def test_vae_shapes_and_output_range():
    vae = VAE((28, 28), hidden=(64, 32), latent=5)
    x = torch.rand(7, 28, 28)
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (7, 5)
    images = vae.decode(torch.randn(3, 4, 5))  # any leading dimensions
    assert images.shape == (3, 4, 28, 28)
    assert images.min() >= 0 and images.max() <= 1
    # The decoder mirrors the encoder: 784-64-32 | 5-32-64-784.
    widths = [m.out_features for m in vae.decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [32, 64, 784]


def test_reparameterize_draws_from_n_mu_sigma():
    mu = torch.tensor([[1.0, -2.0]]).expand(200_000, 2)
    logvar = torch.log(torch.tensor([[4.0, 0.25]])).expand(200_000, 2)
    z = reparameterize(mu, logvar, torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), torch.tensor([1.0, -2.0]), atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([2.0, 0.5]), atol=0.01, rtol=0)


def test_kl_divergence_matches_equation_2_9_by_hand():
    assert kl_divergence(torch.zeros(1, 3), torch.zeros(1, 3)).item() == 0.0
    assert kl_divergence(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)).item() == 2.5  # (1 + 4) / 2
    # sigma^2 = e, mu = 0: -(1 + 1 - e) / 2
    assert math.isclose(kl_divergence(torch.zeros(1, 1), torch.ones(1, 1)).item(), (math.e - 2) / 2, rel_tol=1e-6)


def test_reconstruction_is_bce_summed_over_pixels():
    logits = torch.zeros(2, 8, 8)  # p = 0.5 everywhere: ln 2 nats per pixel whatever the target
    target = torch.rand(2, 8, 8)
    torch.testing.assert_close(reconstruction_loss(logits, target), torch.full((2,), 64 * math.log(2)))
    mu, logvar = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.zeros(2, 2)
    torch.testing.assert_close(
        negative_elbo(logits, target, mu, logvar), torch.tensor([64 * math.log(2) + 2.5, 64 * math.log(2)])
    )


def test_classifiers_take_images_and_return_logits():
    for shape in ((28, 28), (8, 8)):
        x = torch.rand(5, *shape)
        assert MLP(shape, 10, (32, 16, 8)).eval()(x).shape == (5, 10)
        assert CNN(shape, 10, dense=16).eval()(x).shape == (5, 10)
    convs = [m for m in CNN((28, 28)).modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(32, (3, 3)), (64, (3, 3))]


def test_the_cnns_dropout_zeroes_a_share_p_and_scales_the_rest_as_nn_dropout_does():
    from mivae.models.classifiers import Dropout

    torch.manual_seed(0)
    x = torch.rand(400, 500) + 0.5  # no zeros of its own
    for p in (0.25, 0.5):
        out = Dropout(p).train()(x)
        zeroed = (out == 0).float().mean().item()
        assert abs(zeroed - p) < 4 * (p * (1 - p) / x.numel()) ** 0.5 + 1e-9  # within 4 standard errors
        kept = out != 0
        assert torch.allclose(out[kept], x[kept] / (1 - p))
    assert torch.equal(Dropout(0.5).eval()(x), x) and torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    with pytest.raises(ValueError):
        Dropout(1.5)


def test_the_cnns_dropout_keeps_the_layout_and_dtype_and_scales_with_one_rounding():
    from mivae.models.classifiers import Dropout

    torch.manual_seed(0)
    x = (torch.rand(64, 8, 6, 6) + 0.5).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    out = Dropout(0.25).train()(x)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    kept = out != 0
    assert 0.7 < kept.float().mean().item() < 0.8
    # x / (1 - p) computed in float32 and rounded once to bf16, as nn.Dropout does
    assert torch.equal(out[kept], (x.detach()[kept].float() * (1 / 0.75)).to(torch.bfloat16))
    out.backward(torch.ones_like(out))
    expected = torch.where(kept, torch.tensor(1 / 0.75).to(torch.bfloat16), torch.tensor(0.0, dtype=torch.bfloat16))
    assert torch.equal(x.grad, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pooling_before_the_relu_gives_the_values_and_gradients_of_pooling_after_it(dtype):
    torch.manual_seed(0)
    x = torch.randint(-2, 3, (4, 3, 9, 12)).to(dtype)  # few values: many windows hold ties, some only values <= 0
    grad = torch.randn(4, 3, 4, 6).to(dtype)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    pool = torch.nn.MaxPool2d(2)
    after, before = torch.relu(pool(ours)), pool(torch.relu(theirs))
    assert torch.equal(after, before)
    after.backward(grad)
    before.backward(grad)
    assert torch.equal(ours.grad, theirs.grad) and ours.grad.abs().sum() > 0


def test_a_channels_last_cnn_computes_what_a_contiguous_one_does():
    torch.manual_seed(0)
    cnn = CNN((28, 28)).eval()
    plain = CNN((28, 28)).eval().to(memory_format=torch.contiguous_format)
    plain.load_state_dict(cnn.state_dict())
    x = torch.rand(6, 28, 28)
    assert cnn.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(cnn(x), plain.head(plain.features(x.unsqueeze(1).contiguous())), atol=1e-5)


def test_cnn_dropout_acts_in_training_only():
    torch.manual_seed(0)
    cnn, x = CNN((8, 8), dense=32, dropout_conv=0.5, dropout_dense=0.5), torch.rand(4, 8, 8)
    assert not torch.equal(cnn.train()(x), cnn(x))
    assert torch.equal(cnn.eval()(x), cnn(x))


def test_type2_keeps_the_vae_frozen_and_samples_only_in_training():
    torch.manual_seed(0)
    vae = VAE((8, 8), (16,), 3)
    model = VAEClassifier(vae, MLP((8, 8), 10, (16,)))
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    optimizer = torch.optim.Adadelta([p for p in model.parameters() if p.requires_grad], lr=1.0)
    x, y = torch.rand(16, 8, 8), torch.randint(0, 10, (16,))
    model.train()
    assert not vae.training  # frozen VAE never trains
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())
    assert not torch.equal(model(x), model(x))  # z drawn anew each pass
    model.eval()
    expected = model.classifier(vae.decode(vae.encode(x)[0]))
    assert torch.equal(model(x), expected)  # single imputation: z = mu


def test_build_model_follows_the_configs():
    vae = build_model("vae", VAEConfig(hidden=(64, 32), latent=4), (8, 8))
    assert vae.to_mu.out_features == 4
    mlp = build_model("mlp", MLPConfig(hidden=(30, 20, 10)), (8, 8), n_classes=4)
    assert [m.out_features for m in mlp.modules() if isinstance(m, torch.nn.Linear)] == [30, 20, 10, 4]
    type2 = build_model("vae+cnn", CNNConfig(dense=12), (8, 8), vae=vae)
    assert isinstance(type2, VAEClassifier) and type2.classifier.head[0].out_features == 12


def test_glorot_initialisation_is_keras_default_and_torch_keeps_pytorch_own():
    torch.manual_seed(0)
    glorot = build_model("mlp", MLPConfig(hidden=(512, 256), init="glorot"), (28, 28))
    torch.manual_seed(0)
    native = build_model("mlp", MLPConfig(hidden=(512, 256), init="torch"), (28, 28))
    first, first_native = glorot.layers[0][0], native.layers[0][0]
    bound = math.sqrt(6 / (784 + 512))  # Glorot-uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out))
    assert first.weight.abs().max() <= bound and first.weight.abs().max() > 0.99 * bound
    assert first.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert all(m.bias.abs().sum() == 0 for m in glorot.modules() if isinstance(m, torch.nn.Linear))
    assert first_native.bias.abs().sum() > 0 and first_native.weight.abs().max() <= 1 / math.sqrt(784)
    cnn = build_model("cnn", CNNConfig(), (28, 28))
    assert all(m.bias.abs().sum() == 0 for m in cnn.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
    vae = build_model("vae", VAEConfig(), (28, 28))
    assert vae.to_mu.bias.abs().sum() == 0 and vae.decoder[-1].bias.abs().sum() == 0
