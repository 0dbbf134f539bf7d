"""Training: one plain loop for every model, with early stopping on a validation score.

The whole training set lives in memory as tensors; a batch is a slice of a shuffled index.
A training given a checkpoint file saves its whole state there between epochs, and a killed
training started again with the same file goes on from there to the result it would have had.
"""

import copy
import dataclasses
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from mivae import readback
from mivae.artifacts import atomic_path
from mivae.errors import MivaeError, check_interrupt
from mivae.hardware import resolve_precision, steady_heap
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
    return FusedAdadelta(_parameter_groups(model, l2), lr=lr, rho=0.95, eps=1e-6, foreach=True)


def _adadelta_update(param, grad, square_avg, acc_delta, lr, rho, eps, weight_decay):
    """One AdaDelta update of one tensor in place, as torch.optim.Adadelta computes it (coupled weight decay)."""
    grad = grad + weight_decay * param
    square_avg.copy_(square_avg * rho + (1 - rho) * grad * grad)
    delta = torch.sqrt(acc_delta + eps) / torch.sqrt(square_avg + eps) * grad
    acc_delta.copy_(acc_delta * rho + (1 - rho) * delta * delta)
    param.copy_(param - lr * delta)


# The compiled update, built at the first step of a process: None until then, False where it cannot be built.
_FUSED: dict[str, Any] = {"update": None}


def _fused_update():
    """`_adadelta_update` compiled into one kernel, or False where it cannot be (no C++ compiler at hand).

    It is given 1-D views with a symbolic length and the hyperparameters as 0-d tensors, so one compilation
    serves every tensor, model and setting of a process (Dynamo would otherwise compile anew for each shape
    and value, and stop compiling after eight)."""
    if _FUSED["update"] is None:
        compiler = shutil.which(os.environ.get("CXX", "g++"))  # Inductor builds its CPU kernels with it
        _FUSED["update"] = compiler is not None and torch.compile(_adadelta_update, dynamic=True, fullgraph=True)
    return _FUSED["update"]


def _unfused(error):
    """Falls back to the plain update for the rest of the process after the compiled one failed to build."""
    _FUSED["update"] = False
    warnings.warn(
        f"AdaDelta's fused step could not be compiled ({type(error).__name__}); the same update runs "
        "unfused, more slowly.",
        RuntimeWarning,
        stacklevel=3,
    )


class FusedAdadelta(torch.optim.Adadelta):
    """`torch.optim.Adadelta` whose step updates each CPU tensor in one compiled pass.

    torch's step makes about a dozen passes over every weight tensor, each bound by memory: 42 % of a
    784-512-512 MLP's bf16 training step on one thread (docs/reproduction.md, "Time"). The state, its
    names and `state_dict` are torch's, so checkpoints load in either; updates agree with torch's to
    rounding (about 1e-8). The step is the same on every device (Inductor compiles C++ for a CPU, Triton
    for a GPU). Without a C++ compiler the step is torch's own; where the compilation fails, the same update
    runs unfused, with a warning.
    """

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None or not _fused_update():
            return super().step(closure)
        for group in self.param_groups:
            if group["maximize"] or group["differentiable"] or group["capturable"]:
                return super().step(closure)
        for number, group in enumerate(self.param_groups):
            for param in group["params"]:
                if param.grad is None:
                    continue
                lr, rho, eps, decay = self._hyperparameters(number, group, param.device)
                state = self.state[param]
                if not state:  # as torch's Adadelta starts it
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["square_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["acc_delta"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                grad = param.grad
                if _dense(param):  # everything in the weight's layout (a checkpoint loads the averages contiguous)
                    grad = grad if grad.stride() == param.stride() else torch.empty_like(param).copy_(grad)
                    for key in ("square_avg", "acc_delta"):
                        if state[key].stride() != param.stride():
                            state[key] = torch.empty_like(param).copy_(state[key])
                tensors = (param, grad, state["square_avg"], state["acc_delta"])
                update = _fused_update()
                if update and all(_dense(t) and t.stride() == param.stride() for t in tensors):
                    try:
                        update(*(_flat(t) for t in tensors), lr, rho, eps, decay)
                        continue
                    except Exception as error:  # a compilation that fails changes nothing; the plain update follows
                        _unfused(error)
                _adadelta_update(*tensors, lr, rho, eps, decay)  # also for a weight that is not dense
        return None

    def _hyperparameters(self, number, group, device):
        """lr, rho, eps and weight decay of group `number` as 0-d tensors on `device`, made anew only when a value
        changes (a scheduler's lr): on a GPU each would otherwise be a copy from the host at every step."""
        values = tuple(float(group[k]) for k in ("lr", "rho", "eps", "weight_decay"))
        cache = self.__dict__.setdefault("_hyper", {})
        if cache.get((number, device), (None,))[0] != values:
            cache[(number, device)] = (values, tuple(torch.tensor(v, device=device) for v in values))
        return cache[(number, device)][1]


def _dense(tensor):
    return tensor.is_contiguous() or (tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last))


def _flat(tensor):
    """A 1-D view of every element of a dense tensor, in memory order: one compiled graph serves every shape."""
    return tensor.as_strided((tensor.numel(),), (1,), tensor.storage_offset())


# A loss this many times larger than at the first step (or than 1) has diverged, even where it stays finite:
# bounded log-variances keep an exploding VAE's loss finite, at around 1e14 nats for a learning rate of 100.
DIVERGED = 1e4


class TrainingDiverged(MivaeError):
    """The loss or the validation score became NaN or infinite: one sentence for a user, a pruned trial in a search.

    It carries what training had reached: `history` up to the last whole epoch, and `best_state`, the weights of its
    best validation score (None where no epoch was scored), for a caller that would rather keep them."""

    def __init__(self, message, history=None, best_state=None):
        super().__init__(message)
        self.history, self.best_state = history, best_state


@dataclass
class History:
    """What happened during training, epoch by epoch."""

    train_loss: list[float] = field(default_factory=list)  # mean loss per image over each epoch
    val_score: list[float] = field(default_factory=list)  # validation score after each epoch
    seconds: list[float] = field(default_factory=list)  # wall time of each epoch, scoring included
    best_epoch: int = 0  # 1-based epoch whose weights were kept
    stopped_early: bool = False


# A History as files hold it (run directories, saved imputers, checkpoints); fields added later may be absent.
_NUMBERS = readback.Optional([readback.NUMBER])
HISTORY_SHAPE = {
    "train_loss": _NUMBERS,
    "val_score": _NUMBERS,
    "seconds": _NUMBERS,
    "best_epoch": readback.Optional(readback.WHOLE),
    "stopped_early": readback.Optional(bool),
}


def history_from_json(content, where, at="the file"):
    """Returns the History that `dataclasses.asdict` wrote as `content`, checked; raises MivaeError naming the file
    `where` (and `at`, the field that holds it)."""
    readback.check(content, HISTORY_SHAPE, where, at)
    history = History(**content)
    if history.best_epoch > len(history.train_loss):
        raise MivaeError(f"{where} is damaged: its history's best epoch is after its last.")
    return history


# A checkpointed training saves its state after an epoch once this many seconds have passed since its last save
# (and after its last epoch): a kill costs at most this much work, and short epochs are not slowed by the writes.
CHECKPOINT_EVERY = 60.0


def fit(
    model,
    optimizer,
    loss_fn,
    inputs,
    targets,
    config,
    score=None,
    higher_is_better=True,
    on_epoch=None,
    checkpoint=None,
    lr_schedule=None,
    max_steps=None,
):
    """Trains `model` in place and returns its `History`.

    inputs, targets: tensors whose first dimension indexes the training examples.
    score(model) -> float: the validation score checked after each epoch; training stops
    after `config.patience` epochs without an improvement of more than `config.min_delta` (over
    the score the patience counts from), but never before `config.min_epochs` epochs, and the
    best weights are restored (the best score's, however small its lead).
    Without `score`, exactly `config.epochs` epochs run (retraining with a known epoch count).
    Forward passes run under bf16 autocast where `config.precision` resolves to bf16.
    on_epoch(epoch, history): called after each epoch, for progress output.
    checkpoint: a file for the training's state (`CHECKPOINT_EVERY`). If it exists, training
    goes on from the epoch it holds, after on_epoch is called for each epoch it already ran, and
    ends with the weights and history an uninterrupted training has. The caller keys the file
    to everything the training depends on, and removes it when the result is safe.
    lr_schedule(step) -> float: the factor of each parameter group's learning rate at gradient step
    `step`, counted from 0 across epochs (so a resumed training takes the rates it would have had).
    max_steps: training ends after this many gradient steps, in the middle of an epoch if need be (that
    epoch's loss is the mean over the rows it saw, and it is scored as any other), or after config.epochs.
    """
    steady_heap()  # a step's large temporaries reuse the heap instead of being faulted in anew (hardware.steady_heap)
    torch.manual_seed(config.seed)  # latent samples and dropout masks draw from the global stream
    generator = torch.Generator().manual_seed(config.seed)
    state = _TrainingState(history=History())
    n = len(inputs)
    steps_per_epoch = math.ceil(n / config.batch_size)
    base_lrs = [group["lr"] for group in optimizer.param_groups]  # before a checkpoint's scheduled rates replace them
    low_precision = resolve_precision(config.precision, inputs.device) == torch.bfloat16
    if checkpoint is not None and Path(checkpoint).exists():
        state = _load_checkpoint(checkpoint, model, optimizer, generator)
        if on_epoch is not None:
            for epoch in range(1, len(state.history.train_loss) + 1):
                on_epoch(epoch, _history_until(state.history, epoch))
    history, saved_at = state.history, time.monotonic()
    best, best_state, waited, first_loss = state.best, state.best_state, state.waited, state.first_loss
    anchor = state.anchor  # the score the patience counts from: the last to beat the one before it by min_delta

    def better(value, than, by=0.0):
        return than is None or (value > than + by if higher_is_better else value < than - by)

    first_epoch = config.epochs + 1 if history.stopped_early else len(history.train_loss) + 1
    for epoch in range(first_epoch, config.epochs + 1):
        done = (epoch - 1) * steps_per_epoch  # gradient steps before this epoch
        steps = steps_per_epoch if max_steps is None else min(steps_per_epoch, max_steps - done)
        if steps <= 0:
            break
        start = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=generator).to(inputs.device)
        total, seen = 0.0, 0
        for step, i in enumerate(range(0, min(n, steps * config.batch_size), config.batch_size), 1):
            check_interrupt()
            index = order[i : i + config.batch_size]
            if lr_schedule is not None:
                factor = lr_schedule(done + step - 1)
                for group, lr in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = lr * factor
            with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=low_precision):
                batch = inputs[index]
                loss = loss_fn(model, batch, batch if targets is inputs else targets[index])  # an autoencoder's: once
            # Checked before the step, so the weights stay those of the last sane loss.
            value = loss.item()
            first_loss = value if first_loss is None else first_loss
            if not math.isfinite(value) or abs(value) > DIVERGED * max(abs(first_loss), 1.0):
                raise TrainingDiverged(
                    f"training diverged: the loss went from {first_loss:.4g} to {value:.4g} at step {step} "
                    f"of epoch {epoch}; a lower learning rate (now "
                    f"{base_lrs[0]:g}) usually helps.",
                    history,
                    best_state,
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, seen = total + value * len(index), seen + len(index)
        history.train_loss.append(total / seen)
        if score is not None:
            value = float(score(model))
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"training diverged: the validation score became {value} after epoch {epoch}; "
                    f"a lower learning rate (now {base_lrs[0]:g}) usually helps.",
                    _history_until(history, epoch - 1),
                    best_state,
                )
            history.val_score.append(value)
            if better(value, best):
                best, history.best_epoch = value, epoch
                best_state = copy.deepcopy(model.state_dict())
            if better(value, anchor, config.min_delta):
                anchor, waited = value, 0
            else:
                waited += 1
        else:
            history.best_epoch = epoch
        history.seconds.append(time.perf_counter() - start)
        if on_epoch is not None:
            on_epoch(epoch, history)
        history.stopped_early = score is not None and waited >= config.patience and epoch >= config.min_epochs
        last = epoch == config.epochs or (max_steps is not None and done + steps >= max_steps)  # saved, as every end
        if checkpoint is not None and (
            history.stopped_early or last or time.monotonic() - saved_at >= CHECKPOINT_EVERY
        ):
            _save_checkpoint(
                checkpoint,
                model,
                optimizer,
                generator,
                _TrainingState(history, best, best_state, waited, first_loss, anchor),
            )
            saved_at = time.monotonic()
        if history.stopped_early:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    for group, lr in zip(optimizer.param_groups, base_lrs):  # the rates as given, not the schedule's last
        group["lr"] = lr
    model.eval()
    return history


@dataclass
class _TrainingState:
    """Everything `fit` carries from one epoch to the next, besides the weights, the optimiser and the generators."""

    history: History
    best: float | None = None
    best_state: dict | None = None
    waited: int = 0
    first_loss: float | None = None
    anchor: float | None = None


def _history_until(history, epoch):
    """The history as it stood after `epoch`."""
    return dataclasses.replace(
        history,
        train_loss=history.train_loss[:epoch],
        val_score=history.val_score[:epoch],
        seconds=history.seconds[:epoch],
        stopped_early=history.stopped_early and epoch == len(history.train_loss),
    )


def _save_checkpoint(path, model, optimizer, generator, state):
    """Writes the training's whole state to `path` atomically: tensors in safetensors, the rest as JSON in its
    metadata."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"best.{k}": v for k, v in (state.best_state or {}).items()}
    optimizer_state = optimizer.state_dict()
    plain: dict[str, dict[str, Any]] = {}  # optimiser values that are not tensors, by parameter index
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                plain.setdefault(str(index), {})[key] = value
    tensors["rng.global"] = torch.get_rng_state()
    tensors["rng.generator"] = generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {
        "history": dataclasses.asdict(state.history),
        "best": state.best,
        "anchor": state.anchor,
        "waited": state.waited,
        "first_loss": state.first_loss,
        "has_best": state.best_state is not None,
        "optimizer_groups": optimizer_state["param_groups"],
        "optimizer_plain": plain,
    }
    with atomic_path(path) as tmp:
        # contiguous copies: safetensors refuses tensors that share memory (views of one buffer) or are channels-last
        contiguous = torch.contiguous_format
        save_file(
            {k: v.detach().cpu().clone(memory_format=contiguous) for k, v in tensors.items()},
            str(tmp),
            metadata={"mivae_checkpoint": json.dumps(meta)},
        )


def _load_checkpoint(path, model, optimizer, generator):
    """Restores the model, the optimiser and the generators from `path` in place; returns the rest of the state."""
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["mivae_checkpoint"])

        def part(prefix):
            return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}

        model.load_state_dict(part("model."))
        optimizer_state: dict[int, dict[str, Any]] = {}
        for key, value in part("optimizer.").items():
            index, name = key.split(".", 1)
            optimizer_state.setdefault(int(index), {})[name] = value
        for index, values in meta["optimizer_plain"].items():
            optimizer_state.setdefault(int(index), {}).update(values)
        optimizer.load_state_dict({"state": optimizer_state, "param_groups": meta["optimizer_groups"]})
        torch.set_rng_state(tensors["rng.global"])
        generator.set_state(tensors["rng.generator"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        device = next(iter(model.state_dict().values())).device
        best_state = {k: v.to(device) for k, v in part("best.").items()} if meta["has_best"] else None
        history = history_from_json(meta["history"], path, "history")
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
        raise MivaeError(
            f"the training checkpoint {path} is damaged or from another training ({e}); "
            f"delete it to start that training again."
        ) from None
    return _TrainingState(
        history, meta["best"], best_state, meta["waited"], meta["first_loss"], meta.get("anchor", meta["best"])
    )  # saved before min_delta existed: the anchor was the best
