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
        self.layers = nn.Sequential(dense_stack([channels * math.prod(image_shape), *hidden]), nn.Linear(hidden[-1], n_classes))

    def forward(self, x):
        return self.layers(x.flatten(1))


class _MaxPool2x2(torch.autograd.Function):
    """2x2 max-pooling, stride 2, as `nn.MaxPool2d(2)` computes it, value for value and gradient for gradient (a
    window's gradient goes to its first maximum in row order), from four strided views. PyTorch's CPU kernel for
    (B, C, H, W) tensors is several times slower (measured in docs/reproduction.md, "Time")."""

    @staticmethod
    def forward(ctx, x):
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        corners = [x[..., i:h:2, j:w:2] for i, j in ((0, 0), (0, 1), (1, 0), (1, 1))]
        y = torch.maximum(torch.maximum(corners[0], corners[1]), torch.maximum(corners[2], corners[3]))
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        h, w = y.shape[-2] * 2, y.shape[-1] * 2
        taken, parts = None, []
        for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):
            hit = x[..., i:h:2, j:w:2] == y
            if taken is None:
                taken = hit
            else:  # a tie goes to the earlier corner
                hit &= ~taken
                taken |= hit
            parts.append(torch.where(hit, grad, 0))
        rows = [torch.stack(parts[:2], -1), torch.stack(parts[2:], -1)]   # (..., H/2, W/2, 2) per row of the window
        out = torch.stack(rows, -3).flatten(-4, -3).flatten(-2, -1)        # (..., H, W) of this window layout
        return nn.functional.pad(out, (0, x.shape[-1] - w, 0, x.shape[-2] - h))  # an odd last row or column: no gradient


class MaxPool2x2(nn.Module):
    """`nn.MaxPool2d(2)`, computed faster (`_MaxPool2x2`)."""

    def forward(self, x):
        return _MaxPool2x2.apply(x)


class CNN(nn.Module):
    """Two 3x3 convolutions (32 and 64 filters, ReLU), 2x2 max-pooling, dropout, dense ReLU, dropout, logits."""

    def __init__(self, image_shape, n_classes=10, dense=128, dropout_conv=0.25, dropout_dense=0.5, channels=1):
        super().__init__()
        height, width = image_shape
        flat = 64 * ((height - 4) // 2) * ((width - 4) // 2)  # two valid 3x3 convolutions, then pooling
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3), nn.ReLU(),
            nn.Conv2d(32, 64, 3), nn.ReLU(),
            MaxPool2x2(),
            nn.Dropout(dropout_conv),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(flat, dense), nn.ReLU(), nn.Dropout(dropout_dense), nn.Linear(dense, n_classes))

    def forward(self, x):
        return self.head(self.features(x if x.dim() == 4 else x.unsqueeze(1)))  # images (B, H, W) get one grey channel


def l2_penalty(module):
    """Returns the sum of squared weights of every Linear and Conv2d layer (biases excluded).

    The thesis' L2 term is l2 times this; training applies it as the optimiser's weight decay
    of 2 * l2, which gives the same gradient (see `mivae.training`).
    """
    return sum(m.weight.pow(2).sum() for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


@torch.no_grad()
def softmax(logits):
    """Returns class probabilities (B, C) in float32 from logits (B, C)."""
    return torch.softmax(logits.float(), dim=-1)
