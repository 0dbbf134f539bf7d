"""Training: one plain loop for every model, with early stopping on a validation score.

The whole training set lives in memory as tensors; a batch is a slice of a shuffled index.
"""

import copy
import time
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from mivae.hardware import resolve_precision
from mivae.models.classifiers import l2_penalty
from mivae.models.vae import negative_elbo


def vae_loss(l2):
    """Returns loss(vae, x, target): the batch-mean negative ELBO (eq. 2.8) plus `l2` times the squared weights."""

    def loss(vae, x, target):
        logits, mu, logvar = vae(x)
        value = negative_elbo(logits, target, mu, logvar).mean()
        return value + l2 * l2_penalty(vae) if l2 else value

    return loss


def classifier_loss(l2):
    """Returns loss(model, x, y): categorical cross-entropy plus `l2` times the squared trainable weights."""

    def loss(model, x, y):
        value = F.cross_entropy(model(x), y)
        if not l2:
            return value
        trainable = getattr(model, "classifier", model)  # Type 2: the frozen VAE is not regularised
        return value + l2 * l2_penalty(trainable)

    return loss


def adam(model, lr):
    """Returns Adam (Kingma and Ba 2014) over the trainable parameters: the VAE's optimiser (§3.4)."""
    # fused: one kernel for all parameters instead of a loop over them (measured faster on CPU)
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, fused=True)


def adadelta(model, lr):
    """Returns AdaDelta (Zeiler 2012, rho 0.95, eps 1e-6) over the trainable parameters: the classifiers' optimiser."""
    return torch.optim.Adadelta([p for p in model.parameters() if p.requires_grad], lr=lr, rho=0.95, eps=1e-6, foreach=True)


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
    after `config.patience` epochs without improvement and the best weights are restored.
    Without `score`, exactly `config.epochs` epochs run (retraining with a known epoch count).
    Forward passes run under bf16 autocast where `config.precision` resolves to bf16.
    on_epoch(epoch, history): called after each epoch, for progress output.
    """
    torch.manual_seed(config.seed)  # latent samples and dropout masks draw from the global stream
    generator = torch.Generator().manual_seed(config.seed)
    history = History()
    best, best_state, waited = None, None, 0
    n = len(inputs)
    low_precision = resolve_precision(config.precision, inputs.device) == torch.bfloat16
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=generator).to(inputs.device)
        total = torch.zeros((), device=inputs.device)
        for i in range(0, n, config.batch_size):
            index = order[i : i + config.batch_size]
            with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=low_precision):
                loss = loss_fn(model, inputs[index], targets[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(index)
        history.train_loss.append(total.item() / n)
        if score is not None:
            value = float(score(model))
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
        if score is not None and waited >= config.patience:
            history.stopped_early = True
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history
