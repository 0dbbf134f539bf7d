"""Health checks: whether a trained model learned anything, so that a failed training is never read as a finding.

A classifier fails when its predictions collapse: one class makes up more than half of them, or its
accuracy is within 2 points of the largest class share (what always answering that class scores).
A VAE fails when it ignores its latent space: a KL term under 1 nat per image, or a negative ELBO
within 5 nats of the best constant image's (the per-pixel mean of the targets, which needs no latent),
for a 784-pixel MNIST image; the margin scales with the pixels (0.41 nats for an 8x8 digit, on which the
best VAE measured gains only about one nat over a constant image, even with 30 % of the pixels missing).
Both are judged on validation data, which no test result depends on; a model retrained on train +
validation (§3.5) is judged on those same validation images, which then still shows a collapse.
"""

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F

from mivae import readback
from mivae.models.distributions import kl_divergence

COLLAPSED_SHARE = 0.5  # one class above this share of the predictions: collapsed
CHANCE_MARGIN = 0.02  # accuracy at most this above the largest class share: no better than a constant answer
MIN_KL = 1.0  # nats per image: below it the encoder tells the decoder (almost) nothing
CONSTANT_MARGIN = 5.0 / 784  # nats per pixel: a VAE this close to the best constant image has not used its latent
FAILED_MARK = "✗"  # how reports mark a result resting on a model that failed its check
# A verdict as files hold it (`Health.to_dict`, with "held_out" where a run was evaluated); a search whose every
# trial failed keeps no measurements.
SHAPE = {
    "ok": bool,
    "reason": str,
    "measured": readback.Either(None, readback.Map(readback.NUMBER)),
    "held_out": readback.Optional(bool),
}


@dataclass(frozen=True)
class Health:
    """The verdict of a health check, with the measurements it rests on."""

    ok: bool
    reason: str  # one sentence: why it failed, or what it measured when it passed
    measured: dict  # the numbers the verdict rests on

    def to_dict(self):
        return asdict(self)


def classifier_health(predicted, labels, n_classes):
    """Returns the `Health` of a classifier from its predicted classes and the true labels (both (N,))."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    shares = np.bincount(predicted, minlength=n_classes) / len(predicted)
    largest = float((np.bincount(labels, minlength=n_classes) / len(labels)).max())
    top, accuracy = int(shares.argmax()), float((predicted == labels).mean())
    measured = {"accuracy": accuracy, "top_class": top, "top_share": float(shares[top]), "largest_class_share": largest}
    if shares[top] > COLLAPSED_SHARE:
        return Health(
            False,
            f"its predictions collapsed: class {top} makes up {shares[top]:.1%} of them "
            f"(more than {COLLAPSED_SHARE:.0%}).",
            measured,
        )
    if accuracy <= largest + CHANCE_MARGIN:
        return Health(
            False,
            f"its accuracy {accuracy:.4f} is within {CHANCE_MARGIN * 100:.0f} points of the largest "
            f"class share {largest:.4f}: no better than always answering one class.",
            measured,
        )
    return Health(
        True,
        f"accuracy {accuracy:.4f} against a largest class share of {largest:.4f}; "
        f"no class above {COLLAPSED_SHARE:.0%} of the predictions.",
        measured,
    )


def constant_image_nll(target):
    """Returns the binary cross-entropy per image (summed over pixels) of the best constant image: the per-pixel
    mean of `target` (N, H, W), the lowest such loss any image that ignores its input can reach on it."""
    mean = target.mean(0, keepdim=True).clamp(1e-6, 1 - 1e-6).expand_as(target)
    return F.binary_cross_entropy(mean, target, reduction="none").flatten(1).sum(1).mean().item()


@torch.inference_mode()
def vae_health(vae, inputs, target, negative_elbo, batch_size=4096):
    """Returns the `Health` of a trained VAE on inputs (N, ...) and targets (N, H, W), given its negative ELBO per
    image on them."""
    vae.eval()
    kl = torch.cat([kl_divergence(*vae.encode(inputs[i : i + batch_size])) for i in range(0, len(inputs), batch_size)])
    kl, constant = kl.float().mean().item(), constant_image_nll(target)
    margin = CONSTANT_MARGIN * target[0].numel()
    measured = {"kl": kl, "negative_elbo": negative_elbo, "constant_image": constant, "margin": margin}
    if kl < MIN_KL:
        return Health(
            False, f"it ignores its latent space: the KL term is {kl:.2f} nats per image (under {MIN_KL:g}).", measured
        )
    if negative_elbo > constant - margin:
        return Health(
            False,
            f"it ignores its latent space: its negative ELBO {negative_elbo:.1f} nats is within "
            f"{margin:.2g} nats of the best constant image's {constant:.1f}.",
            measured,
        )
    return Health(
        True,
        f"KL {kl:.1f} nats per image; negative ELBO {negative_elbo:.1f} nats against "
        f"{constant:.1f} for the best constant image.",
        measured,
    )
