"""The classifiers of thesis §3.3 (appendices A and B): an MLP and a CNN.

Both take images (B, H, W), or mask-aware inputs (B, 2, H, W) when built with `channels=2`, and
return class logits (B, C); the softmax of §3.3 is applied by the loss (cross-entropy) and by
`predict_proba`.
"""

import math

import torch
from torch import nn

from mivae.models.vae import dense_stack


class MLP(nn.Module):
    """Dense ReLU layers of sizes `hidden`, then a linear layer to `n_classes` logits."""

    def __init__(self, image_shape, n_classes=10, hidden=(512, 512), channels=1):
        super().__init__()
        self.layers = nn.Sequential(
            dense_stack([channels * math.prod(image_shape), *hidden]), nn.Linear(hidden[-1], n_classes)
        )

    def forward(self, x):
        return self.layers(x.flatten(1))


class Dropout(nn.Module):
    """`nn.Dropout`: each value zeroed with probability `p` in training, the rest scaled by 1 / (1 - p).

    The mask is drawn as uniform values compared with `p`, which the CPU draws about three times as fast as the
    Bernoulli draws of `nn.Dropout` (docs/reproduction.md, "Time"); the distribution is the same. The mask is
    made in the layout and dtype of x (0 or 1, exact in bf16), so the products run on like tensors: on the CNN's
    channels-last bf16 features, against a float32 boolean mask, they took twice as long as the draws."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"a dropout probability must be between 0 and 1; got {p}.")
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return x * 0
        keep = torch.rand_like(x, dtype=torch.float32).ge_(self.p).to(x.dtype)
        return x * keep * (1 / (1 - self.p))

    def extra_repr(self):
        return f"p={self.p}"


class CNN(nn.Module):
    """Two 3x3 convolutions (32 and 64 filters, ReLU), 2x2 max-pooling, dropout, dense ReLU, dropout, logits."""

    def __init__(self, image_shape, n_classes=10, dense=128, dropout_conv=0.25, dropout_dense=0.5, channels=1):
        super().__init__()
        height, width = image_shape
        flat = 64 * ((height - 4) // 2) * ((width - 4) // 2)  # two valid 3x3 convolutions, then pooling
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3),
            nn.ReLU(),
            # Pooling before the ReLU: the same values and gradients (both keep a window's largest value), with the
            # ReLU on a quarter of the values.
            nn.Conv2d(32, 64, 3),
            nn.MaxPool2d(2),
            nn.ReLU(),
            Dropout(dropout_conv),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(flat, dense), nn.ReLU(), Dropout(dropout_dense), nn.Linear(dense, n_classes)
        )
        # Channels-last weights and inputs: oneDNN's convolutions and PyTorch's pooling are fastest on them. With the
        # pooling before the ReLU and the faster dropout, a bf16 training step is 1.3x and inference 2x as fast as the
        # same network in plain PyTorch layers on contiguous tensors (docs/reproduction.md, "Time").
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit it

    def forward(self, x):
        x = x if x.dim() == 4 else x.unsqueeze(1)  # images (B, H, W) get one grey channel
        return self.head(self.features(x.contiguous(memory_format=torch.channels_last)))


@torch.no_grad()
def softmax(logits):
    """Returns class probabilities (B, C) in float32 from logits (B, C)."""
    return torch.softmax(logits.float(), dim=-1)
