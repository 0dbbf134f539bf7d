"""Training: one plain loop for every model, with early stopping on a validation score.

The whole training set lives in memory as tensors; a batch is a slice of a shuffled index.
"""

import copy
import math
import time
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from mivae.errors import MivaeError, check_interrupt
from mivae.hardware import resolve_precision
from mivae.models.vae import negative_elbo


def vae_loss(vae, x, target):
    """Returns the batch-mean negative ELBO (eq. 2.8) of `target` given inputs x."""
    logits, mu, logvar = vae(x)
    return negative_elbo(logits, target, mu, logvar).mean()


def classifier_loss(model, x, y):
    """Returns the categorical cross-entropy of the model's softmax against labels y."""
    return F.cross_entropy(model(x), y)


def _parameter_groups(model, l2):
    """The trainable parameters, with the L2 term on weights only.

    Adding l2 * sum(w^2) to the loss adds 2 * l2 * w to each weight's gradient; the
    optimiser's (coupled) weight decay of 2 * l2 adds exactly that, without a pass over the
    weights in every forward and backward.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    weights = [p for p in trainable if p.dim() > 1]  # Linear and Conv2d weights; biases are not penalised
    biases = [p for p in trainable if p.dim() <= 1]
    return [{"params": weights, "weight_decay": 2 * l2}, {"params": biases, "weight_decay": 0.0}]


def adam(model, lr, l2=0.0):
    """Returns Adam (Kingma and Ba 2014) with L2 coefficient `l2`: the VAE's optimiser (§3.4)."""
    # fused: one kernel for all parameters instead of a loop over them (measured faster on CPU)
    return torch.optim.Adam(_parameter_groups(model, l2), lr=lr, fused=True)


def adadelta(model, lr, l2=0.0):
    """Returns AdaDelta (Zeiler 2012, rho 0.95, eps 1e-6) with L2 coefficient `l2`: the classifiers' optimiser."""
    return torch.optim.Adadelta(_parameter_groups(model, l2), lr=lr, rho=0.95, eps=1e-6, foreach=True)


# A loss this many times larger than at the first step (or than 1) has diverged, even where it stays finite:
# bounded log-variances keep an exploding VAE's loss finite, at around 1e14 nats for a learning rate of 100.
DIVERGED = 1e4


class TrainingDiverged(MivaeError):
    """The loss or the validation score became NaN or infinite: one sentence for a user, a pruned trial in a search."""


@dataclass
class History:
    """What happened during training, epoch by epoch."""

    train_loss: list[float] = field(default_factory=list)   # mean loss per image over each epoch
    val_score: list[float] = field(default_factory=list)    # validation score after each epoch
    seconds: list[float] = field(default_factory=list)      # wall time of each epoch, scoring included
    best_epoch: int = 0                                     # 1-based epoch whose weights were kept
    stopped_early: bool = False


def fit(model, optimizer, loss_fn, inputs, targets, config, score=None, higher_is_better=True, on_epoch=None):
    """Trains `model` in place and returns its `History`.

    inputs, targets: tensors whose first dimension indexes the training examples.
    score(model) -> float: the validation score checked after each epoch; training stops
    after `config.patience` epochs without improvement, but never before `config.min_epochs`
    epochs, and the best weights are restored.
    Without `score`, exactly `config.epochs` epochs run (retraining with a known epoch count).
    Forward passes run under bf16 autocast where `config.precision` resolves to bf16.
    on_epoch(epoch, history): called after each epoch, for progress output.
    """
    torch.manual_seed(config.seed)  # latent samples and dropout masks draw from the global stream
    generator = torch.Generator().manual_seed(config.seed)
    history = History()
    best, best_state, waited, first_loss = None, None, 0, None
    n = len(inputs)
    low_precision = resolve_precision(config.precision, inputs.device) == torch.bfloat16
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=generator).to(inputs.device)
        total = 0.0
        for step, i in enumerate(range(0, n, config.batch_size), 1):
            check_interrupt()
            index = order[i : i + config.batch_size]
            with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=low_precision):
                loss = loss_fn(model, inputs[index], targets[index])
            # Checked before the step, so the weights stay those of the last sane loss.
            value = loss.item()
            first_loss = value if first_loss is None else first_loss
            if not math.isfinite(value) or abs(value) > DIVERGED * max(abs(first_loss), 1.0):
                raise TrainingDiverged(f"training diverged: the loss went from {first_loss:.4g} to {value:.4g} at step {step} "
                                       f"of epoch {epoch}; a lower learning rate (now "
                                       f"{optimizer.param_groups[0]['lr']:g}) usually helps.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += value * len(index)
        history.train_loss.append(total / n)
        if score is not None:
            value = float(score(model))
            if not math.isfinite(value):
                raise TrainingDiverged(f"training diverged: the validation score became {value} after epoch {epoch}; "
                                       f"a lower learning rate (now {optimizer.param_groups[0]['lr']:g}) usually helps.")
            history.val_score.append(value)
            if best is None or (value > best if higher_is_better else value < best):
                best, waited, history.best_epoch = value, 0, epoch
                best_state = copy.deepcopy(model.state_dict())
            else:
                waited += 1
        else:
            history.best_epoch = epoch
        history.seconds.append(time.perf_counter() - start)
        if on_epoch is not None:
            on_epoch(epoch, history)
        if score is not None and waited >= config.patience and epoch >= config.min_epochs:
            history.stopped_early = True
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history
