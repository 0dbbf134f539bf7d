"""Prediction: class probabilities, single imputation (z = mu) and multiple imputation (thesis §2.2.4).

Multiple imputation of image x: z_k ~ N(mu(x), sigma(x)) for k = 1..M, each decoded and
classified, and p_multiple = (1/M) sum_k p_k. One pass over M samples gives the accuracy
for every m <= M: the running mean of one set of samples, not a re-run per m.
"""

import copy
from dataclasses import dataclass

import numpy as np
import torch

from mivae.hardware import release_free_memory
from mivae.models.classifiers import softmax
from mivae.models.distributions import iwae_bound, reparameterize
from mivae.models.miwae import classify_importance, impute_importance
from mivae.models.vae import negative_elbo


def in_precision(model, dtype):
    """Returns `model` itself for float32, else an eval-mode copy whose weights are `dtype`.

    Casting the weights once beats autocast, which casts them again in every forward pass.
    """
    if dtype == torch.float32:
        return model
    return copy.deepcopy(model).to(dtype).eval()


# Images per forward pass of a model with convolutions, whatever larger batch is asked for: their activations stay in
# cache, about twice as fast as batches of 4,096 (BENCHMARKS.md, "Measurements behind the defaults").
CONV_BATCH = 256


def _has_conv(model):
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


@torch.inference_mode()
def predict_proba(model, x, batch_size=4096, dtype=torch.float32):
    """Returns class probabilities (N, C) float32 of `model` in eval mode for images x (N, H, W).

    `dtype` is the precision of the matmuls; probabilities are always float32. A model with
    convolutions runs at most `CONV_BATCH` images at a time.
    """
    model.eval()
    low = in_precision(model, dtype)
    batch_size = min(batch_size, CONV_BATCH) if _has_conv(model) else batch_size
    return torch.cat([softmax(low(x[i : i + batch_size].to(dtype))) for i in range(0, len(x), batch_size)])


@torch.inference_mode()
def impute(vae, x, batch_size=4096):
    """Returns the single imputation decode(mu) (N, H, W) of images x (N, H, W)."""
    vae.eval()
    return torch.cat([vae.decode(vae.encode(x[i : i + batch_size])[0]) for i in range(0, len(x), batch_size)])


@torch.inference_mode()
def negative_elbo_per_image(vae, x, target, batch_size=4096, seed=0):
    """Returns the negative ELBO (N,) in nats of `target` given inputs x, one latent sample per image."""
    vae.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    out = []
    for i in range(0, len(x), batch_size):
        mu, logvar = vae.encode(x[i : i + batch_size])
        logits = vae.decode_logits(reparameterize(mu, logvar, generator))
        out.append(negative_elbo(logits, target[i : i + batch_size], mu, logvar))
    return torch.cat(out)


@dataclass(frozen=True)
class MultipleImputation:
    """The result of M-sample multiple imputation on N images."""

    accuracy: np.ndarray  # (M,): accuracy[m - 1] is the accuracy using the first m samples
    proba: torch.Tensor  # (N, C): mean of the M softmax vectors per image
    predictions: dict  # m -> (N,) int64 classes predicted with the first m samples, for requested m


def _batch_rows(model):
    """(image, sample) pairs per forward pass: matmul-bound dense models want many, a CNN few.

    Measured on 2 cores: VAE+MLP runs as fast at 2,048 to 16,384 rows; VAE+CNN is fastest
    near 128 rows, where its convolution activations stay in cache, and 40 % slower at 8,192.
    """
    return 128 if _has_conv(model.classifier) else 8192


@torch.inference_mode()
def multiple_imputation(model, x, y, imputations, keep=(), batch_rows=None, seed=0, dtype=torch.float32):
    """Returns the `MultipleImputation` of a Type 2 `model` (VAEClassifier) with `imputations` imputations per image.

    x: (N, H, W) images as the model sees them; y: (N,) labels. `keep` lists the m whose
    predictions are returned. Images are processed in batches of B, imputations in chunks of S,
    with B * S about `batch_rows` (image, sample) pairs per forward pass (by default as
    `_batch_rows` measured best for the classifier). The noise of a
    batch is drawn as one (B, S, L) tensor from a generator seeded with `seed`.
    The network runs in `dtype` (bf16 where the hardware is fast at it), exactly as in
    `predict_proba`, so single and multiple imputation differ only in the sampling; the
    noise and the sums of probabilities stay float32.
    """
    model.eval()
    low = in_precision(model, dtype)
    batch_rows = batch_rows or _batch_rows(model)
    chunk = min(imputations, batch_rows)  # S: imputations per forward pass
    images_per_batch = max(1, batch_rows // chunk)  # B
    generator = torch.Generator(device=x.device).manual_seed(seed)
    keep = sorted({m for m in keep if 1 <= m <= imputations} | {imputations})
    correct = torch.zeros(imputations, dtype=torch.int64)
    predictions = {m: torch.empty(len(x), dtype=torch.int64) for m in keep}
    probas = []
    # Encode every image once, in large batches, as predict_proba does: (N, L) each.
    encoded = [low.vae.encode(x[i : i + 4096].to(dtype)) for i in range(0, len(x), 4096)]
    mu_all = torch.cat([e[0] for e in encoded]).float()
    sigma_all = torch.exp(0.5 * torch.cat([e[1] for e in encoded]).float())
    for batch_number, i in enumerate(range(0, len(x), images_per_batch)):
        if batch_number % 64 == 63:
            release_free_memory()  # the passes' large blocks fragment glibc's heap (hardware.release_free_memory)
        yb = y[i : i + images_per_batch].cpu()
        mu, sigma = mu_all[i : i + images_per_batch], sigma_all[i : i + images_per_batch]  # (B, L)
        running = None  # (B, C) sums of the imputations so far
        for s0 in range(0, imputations, chunk):
            s = min(chunk, imputations - s0)
            eps = torch.randn((len(mu), s, mu.shape[1]), generator=generator, device=x.device)
            z = mu[:, None, :] + sigma[:, None, :] * eps  # (B, S, L)
            images = low.vae.decode(z.flatten(0, 1).to(dtype))  # (B*S, H, W)
            p = softmax(low.classifier(images))  # (B*S, C) float32
            p = p.unflatten(0, (len(mu), s))  # (B, S, C)
            cumulative = p.cumsum(dim=1)  # (B, S, C) sums of the first m imputations
            if running is not None:
                cumulative += running[:, None, :]
            predicted = cumulative.argmax(dim=-1).cpu()  # (B, S)
            correct[s0 : s0 + s] += (predicted == yb[:, None]).sum(dim=0)
            for m in keep:
                if s0 < m <= s0 + s:
                    predictions[m][i : i + len(mu)] = predicted[:, m - s0 - 1]
            running = cumulative[:, -1, :]  # (B, C)
        probas.append((running / imputations).cpu())
    return MultipleImputation((correct.double() / len(x)).numpy(), torch.cat(probas), predictions)


# ----------------------------------------------------------------------------------------
# Models that learn from incomplete images alone (mivae.models.miwae): mask-aware inputs (N, 2, H, W)


def _in_batches(step, model, inputs, samples, seed=0, *args):
    """Runs step(model, batch, samples, generator, *args) over batches of about 8,192 (image, sample) pairs, and
    concatenates the results.

    One generator seeded with `seed` draws the samples of every batch, so a call is reproducible.
    """
    model.eval()
    generator = torch.Generator(device=inputs.device).manual_seed(seed)
    size = max(1, 8192 // samples)
    return torch.cat(
        [step(model, inputs[i : i + size], samples, generator, *args) for i in range(0, len(inputs), size)]
    )


def _negative_bound(model, inputs, samples, generator):
    return -iwae_bound(model.log_weights(inputs, samples, generator)[0])


@torch.inference_mode()
def negative_bound_per_image(model, inputs, samples, seed=0):
    """Returns -log (1/K) sum_k w_k (N,) in nats for mask-aware inputs: the negative importance-weighted bound."""
    return _in_batches(_negative_bound, model, inputs, samples, seed)


@torch.inference_mode()
def impute_incomplete(model, inputs, samples, seed=0):
    """Returns the single imputations (N, H, W) of mask-aware inputs by self-normalised importance sampling."""
    return _in_batches(impute_importance, model, inputs, samples, seed)


def rmse_on_missing(imputed, clean, mask):
    """Returns the root mean squared error over the missing pixels only."""
    return torch.sqrt(((imputed - clean)[mask] ** 2).mean()).item()


def _classify(model, inputs, samples, generator, weighted):
    return classify_importance(model.imputer, model.classifier, inputs, samples, generator, weighted)


@torch.inference_mode()
def classify_incomplete(model, inputs, samples, seed=0, weighted=True):
    """Returns p(y | x_obs) (N, C) of a MIWAE-based Type 2 `model` over K = `samples` imputations per image.

    `weighted`: each imputation's class probabilities weighted by its self-normalised importance
    weight (supMIWAE); else their plain mean. The same seed draws the same imputations for both.
    """
    return _in_batches(_classify, model, inputs, samples, seed, weighted)
