import dataclasses
import os
import shutil

import pytest
import torch

from mivae.config import CNNConfig, DataConfig, MLPConfig, TrainConfig, VAEConfig
from mivae.images import pipeline
from mivae.images.imputation import negative_elbo_per_image
from mivae.images.problem import make_problem
from mivae.models import build_model
from mivae.training import fit


@pytest.fixture(scope="module")
def digits():
    return make_problem(DataConfig(dataset="digits", level=0.5))


@pytest.fixture(scope="module")
def clean_digits():
    return make_problem(DataConfig(dataset="digits", level=0.0))


def test_a_trained_vae_has_a_far_lower_validation_negative_elbo(digits):
    data = DataConfig(dataset="digits", level=0.5)
    config = VAEConfig(hidden=(128,), latent=8)
    untrained = build_model("vae", config, (8, 8))
    before = negative_elbo_per_image(untrained, digits.val.x, digits.val.clean).mean().item()
    run = pipeline.train_model("vae", data, config, TrainConfig(epochs=40, batch_size=32), problem=digits)
    after = run.metrics["val_negative_elbo"]
    assert after < 0.7 * before  # about 44 nats untrained (64 ln 2 + KL), below 30 trained
    assert run.history.val_score[run.history.best_epoch - 1] == pytest.approx(min(run.history.val_score))


def test_an_mlp_on_clean_digits_exceeds_90_percent(clean_digits):
    data = DataConfig(dataset="digits", level=0.0)
    run = pipeline.train_model("mlp", data, MLPConfig(hidden=(128, 64)), TrainConfig(epochs=30), problem=clean_digits)
    assert run.metrics["test_accuracy"] > 0.9


def test_the_vae_is_trained_to_denoise_and_the_classifier_on_corrupted_inputs(digits, monkeypatch):
    seen = []
    monkeypatch.setattr(
        pipeline,
        "fit",
        lambda model, opt, loss, inputs, targets, config, **kw: (
            seen.append((inputs, targets))
            or fit(model, opt, loss, inputs, targets, dataclasses.replace(config, epochs=1), **kw)
        ),
    )
    data = DataConfig(dataset="digits", level=0.5)
    pipeline.train_model("vae", data, VAEConfig(hidden=(16,), latent=2), TrainConfig(epochs=1), problem=digits)
    pipeline.train_model(
        "vae", data, VAEConfig(hidden=(16,), latent=2, denoising=False), TrainConfig(epochs=1), problem=digits
    )
    pipeline.train_model("mlp", data, MLPConfig(hidden=(16,)), TrainConfig(epochs=1), problem=digits)
    pipeline.train_model(
        "mlp",
        dataclasses.replace(data, clean_train=True),
        MLPConfig(hidden=(16,)),
        TrainConfig(epochs=1),
        problem=digits,
    )
    (dx, dt), (px, pt), (mx, my), (cx, cy) = seen
    assert torch.equal(dx, digits.train.x) and torch.equal(dt, digits.train.clean)  # denoising: clean target
    assert not torch.equal(dx, dt)
    assert torch.equal(px, digits.train.x) and torch.equal(pt, digits.train.x)  # plain: its own input
    assert torch.equal(mx, digits.train.x) and torch.equal(my, digits.train.y)
    assert torch.equal(cx, digits.train.clean)  # clean-trained classifier


def _tiny_fit(score, patience, epochs=10, seed=0, min_epochs=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(64, 3), torch.randint(0, 2, (64,))
    snapshots = []
    history = fit(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        lambda m, xb, yb: torch.nn.functional.cross_entropy(m(xb), yb),
        x,
        y,
        TrainConfig(epochs=epochs, patience=patience, batch_size=16, seed=seed, min_epochs=min_epochs),
        score=score,
        on_epoch=lambda e, h: snapshots.append(model.weight.detach().clone()),
    )
    return model, history, snapshots


def test_early_stopping_restores_the_best_epoch():
    scores = iter([0.5, 0.7, 0.9, 0.8, 0.85, 0.6, 0.95, 0.99])
    model, history, snapshots = _tiny_fit(lambda m: next(scores), patience=3)
    assert history.best_epoch == 3 and history.stopped_early
    assert len(history.train_loss) == 6  # three epochs without improvement after epoch 3
    assert torch.equal(model.weight, snapshots[2])


def test_early_stopping_waits_for_the_minimum_of_epochs():
    """A model stuck on a plateau (AdaDelta on mostly-white images) is not stopped before min_epochs; the best
    epoch is still the one restored."""
    scores = iter([0.11, 0.11, 0.11, 0.11, 0.11, 0.3, 0.5, 0.45, 0.4, 0.42, 0.41, 0.4])
    model, history, snapshots = _tiny_fit(lambda m: next(scores), patience=3, epochs=12, min_epochs=6)
    assert history.best_epoch == 7 and history.stopped_early and len(history.train_loss) == 10
    assert torch.equal(model.weight, snapshots[6])
    scores = iter([0.11, 0.11, 0.11, 0.11, 0.11, 0.3])
    _, history, _ = _tiny_fit(lambda m: next(scores), patience=3, epochs=6)
    assert history.best_epoch == 1 and len(history.train_loss) == 4  # without it, training ends before it learns


def test_without_a_score_exactly_the_given_epochs_run():
    _, history, snapshots = _tiny_fit(None, patience=1, epochs=4)
    assert len(snapshots) == 4 and history.best_epoch == 4 and not history.stopped_early


def test_training_is_reproducible_for_a_seed():
    a, _, _ = _tiny_fit(None, patience=1, epochs=3, seed=5)
    b, _, _ = _tiny_fit(None, patience=1, epochs=3, seed=5)
    c, _, _ = _tiny_fit(None, patience=1, epochs=3, seed=6)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)


def _l2_penalty(module):
    """The thesis' L2 term over l2: the sum of squared weights of every Linear and Conv2d layer, biases excluded."""
    return sum(m.weight.pow(2).sum() for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))


def test_the_l2_term_sums_squared_weights_not_biases():
    from mivae.models.classifiers import MLP

    mlp = MLP((2, 2), 3, (2,))
    for p in mlp.parameters():
        torch.nn.init.constant_(p, 2.0)
    # weights: 4x2 and 2x3 entries of 2.0 -> (8 + 6) * 4; biases excluded
    assert _l2_penalty(mlp).item() == 56.0


def test_weight_decay_is_exactly_the_thesis_l2_term():
    # One AdaDelta step on loss + l2 * sum(w^2) equals one step on the loss with weight decay 2 * l2.
    from mivae.models.classifiers import MLP
    from mivae.training import adadelta, classifier_loss

    torch.manual_seed(0)
    a = MLP((4, 4), 3, (8,))
    b = MLP((4, 4), 3, (8,))
    b.load_state_dict(a.state_dict())
    initial = [p.clone() for p in a.parameters()]
    x, y, l2 = torch.randn(16, 4, 4), torch.randint(0, 3, (16,)), 0.05
    opt_a, opt_b = adadelta(a, 1.0), adadelta(b, 1.0, l2=l2)
    (classifier_loss(a, x, y) + l2 * _l2_penalty(a)).backward()
    classifier_loss(b, x, y).backward()
    opt_a.step()
    opt_b.step()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, msg=name)
    assert not any(torch.equal(p, q) for p, q in zip(a.parameters(), initial))  # the step moved every parameter


def _adadelta_twins(model, x, steps=3):
    """Runs `steps` AdaDelta steps (with weight decay) on `model` with FusedAdadelta and on a copy with torch's; the
    learning rate halves before the last, as a scheduler would change it."""
    import copy

    from mivae.training import FusedAdadelta, classifier_loss

    twin = copy.deepcopy(model)
    settings = dict(lr=1.0, rho=0.95, eps=1e-6, weight_decay=2e-3)
    ours, theirs = FusedAdadelta(model.parameters(), **settings), torch.optim.Adadelta(twin.parameters(), **settings)
    y = torch.randint(0, 3, (len(x),))
    for step in range(steps):
        for net, optimizer in ((model, ours), (twin, theirs)):
            if step == steps - 1:
                optimizer.param_groups[0]["lr"] = 0.5
            torch.manual_seed(step)  # the same dropout masks on both
            optimizer.zero_grad()
            classifier_loss(net, x, y).backward()
            optimizer.step()
    return twin, ours, theirs


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="the fused step needs a C++ compiler")
def test_the_fused_adadelta_step_is_torchs_adadelta_and_shares_its_state():
    # The same steps on an MLP and on the CNN's channels-last convolutions, through the compiled kernel.
    from mivae import training
    from mivae.models.classifiers import CNN, MLP

    torch.manual_seed(0)
    for model, x in ((MLP((6, 6), 3, (16, 8)), torch.rand(32, 6, 6)), (CNN((8, 8), 3, dense=8), torch.rand(32, 8, 8))):
        twin, ours, theirs = _adadelta_twins(model, x)
        assert training._FUSED["update"]  # compiled, not fallen back
        for a, b in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        state, reference = ours.state_dict(), theirs.state_dict()
        assert state["param_groups"] == reference["param_groups"]
        for index, values in reference["state"].items():
            assert values.keys() == state["state"][index].keys()
            for key, value in values.items():
                torch.testing.assert_close(state["state"][index][key], value, rtol=1e-5, atol=1e-9)
        theirs.load_state_dict(state)  # a checkpoint of either loads into the other


def test_the_fused_adadelta_step_falls_back_to_the_same_update_with_a_warning_where_compiling_fails(monkeypatch):
    from mivae import training
    from mivae.models.classifiers import MLP

    def broken(*args):
        raise RuntimeError("no compiler")

    monkeypatch.setitem(training._FUSED, "update", broken)
    torch.manual_seed(0)
    model = MLP((6, 6), 3, (16, 8))
    with pytest.warns(RuntimeWarning, match="could not be compiled.*runs unfused"):
        twin, _, _ = _adadelta_twins(model, torch.rand(32, 6, 6))
    assert training._FUSED["update"] is False  # given up once for the process, not tried at every step
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_loss_that_becomes_nan_stops_training_at_that_step_before_the_weights_change():
    from mivae.training import TrainingDiverged

    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(32, 3), torch.randint(0, 2, (32,))
    calls = iter(range(100))
    weights = []

    def loss(m, xb, yb):  # finite for four steps (epoch 1), NaN at the fifth (step 1 of epoch 2)
        weights.append(m.weight.detach().clone())
        return torch.nn.functional.cross_entropy(m(xb), yb) * (float("nan") if next(calls) >= 4 else 1.0)

    with pytest.raises(
        TrainingDiverged, match="the loss went from .* to nan at step 1 of epoch 2; a lower learning rate"
    ):
        fit(model, torch.optim.SGD(model.parameters(), lr=0.1), loss, x, y, TrainConfig(epochs=5, batch_size=8))
    assert len(weights) == 5 and torch.equal(model.weight, weights[-1])  # no step was taken on the NaN loss


def test_an_exploding_loss_is_divergence_even_while_finite():
    from mivae.errors import MivaeError
    from mivae.models.vae import VAE
    from mivae.training import TrainingDiverged, adam, vae_loss

    torch.manual_seed(0)
    x = torch.rand(256, 8, 8)
    vae = VAE((8, 8), hidden=(32,), latent=2)
    with pytest.raises(TrainingDiverged, match="at step [0-9]+ of epoch 1") as caught:
        fit(vae, adam(vae, lr=100.0), vae_loss, x, x, TrainConfig(epochs=3, batch_size=32))
    assert isinstance(caught.value, MivaeError)  # one sentence to a user of the CLI
    mu, logvar = vae.encode(torch.full((4, 8, 8), 1e6))
    assert logvar.abs().max() <= 12.0  # bounded: the KL term's exp never overflows


class _Killed(Exception):
    """Stands in for a kill between two epochs."""


def _vae_training(digits, tmp_path, checkpoint=None, kill_after=None, seen=None, kind="vae"):
    def on_epoch(epoch, history):
        if seen is not None:
            seen.append((epoch, history.val_score[-1]))
        if epoch == kill_after:
            raise _Killed

    config = VAEConfig(hidden=(32,), latent=4, lr=3e-3) if kind == "vae" else CNNConfig(dense=16)
    return pipeline.train_model(
        kind,
        digits_data(),
        config,
        TrainConfig(epochs=7, patience=100, batch_size=64, seed=3),
        problem=digits,
        on_epoch=on_epoch,
        checkpoint=checkpoint,
    )


def digits_data():
    return DataConfig(dataset="digits", level=0.5)


@pytest.mark.parametrize("kind", ["vae", "cnn"])
def test_a_killed_training_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one(
    digits, tmp_path, monkeypatch, kind
):
    """The VAE draws its latent noise and the CNN its dropout masks from the global stream, and the order of the
    batches from its own generator: both, with the weights and the optimiser's state (the CNN's channels-last),
    must come back exactly."""
    from mivae import training

    reference = _vae_training(digits, tmp_path, kind=kind)
    monkeypatch.setattr(training, "CHECKPOINT_EVERY", 0.0)  # save after every epoch
    checkpoint = tmp_path / "vae.safetensors"
    with pytest.raises(_Killed):
        _vae_training(digits, tmp_path, checkpoint, kill_after=4, kind=kind)
    assert checkpoint.exists()
    torch.manual_seed(1234)  # the process that resumes starts with another global stream
    seen = []
    resumed = _vae_training(digits, tmp_path, checkpoint, seen=seen, kind=kind)
    assert [e for e, _ in seen] == list(range(1, 8))  # the four saved epochs are replayed to on_epoch, then three more
    assert resumed.history.train_loss == reference.history.train_loss
    assert resumed.history.val_score == reference.history.val_score == [v for _, v in seen]
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.metrics == reference.metrics


def test_a_checkpoint_saved_at_an_early_stop_trains_nothing_more(tmp_path, monkeypatch):
    from mivae import training

    monkeypatch.setattr(training, "CHECKPOINT_EVERY", 1e9)  # saved only at the end
    checkpoint = tmp_path / "tiny.safetensors"
    scores = iter([0.5, 0.9, 0.8, 0.7, 0.6])
    x, y = torch.randn(64, 3), torch.randint(0, 2, (64,))
    config = TrainConfig(epochs=10, patience=2, batch_size=16, min_epochs=0)

    def train(score, loss):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        return model, fit(
            model, torch.optim.SGD(model.parameters(), lr=0.1), loss, x, y, config, score=score, checkpoint=checkpoint
        )

    def loss(m, xb, yb):
        return torch.nn.functional.cross_entropy(m(xb), yb)

    first, history = train(lambda m: next(scores), loss)
    assert history.stopped_early and history.best_epoch == 2 and checkpoint.exists()

    def no_training(m, xb, yb):
        raise AssertionError("a finished training ran a step")

    again, restored = train(lambda m: pytest.fail("a finished training was scored"), no_training)
    assert restored == history and torch.equal(again.weight, first.weight)  # the best epoch's weights


def test_a_learning_rate_schedule_sets_every_steps_rate_and_a_resumed_training_takes_the_same(tmp_path, monkeypatch):
    """fit's lr_schedule scales the rates step by step across epochs, the rates as given come back at the end, and a
    training resumed from its checkpoint goes on with the rates (and so the weights) it would have had."""
    from mivae import training

    monkeypatch.setattr(training, "CHECKPOINT_EVERY", 0.0)  # save after every epoch
    x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    config = TrainConfig(epochs=3, batch_size=10)  # 4 steps per epoch, 12 in all

    def train(checkpoint=None, kill_after=None):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        rates = []

        def loss(m, xb, yb):
            rates.append(optimizer.param_groups[0]["lr"])
            return torch.nn.functional.cross_entropy(m(xb), yb)

        def on_epoch(epoch, history):
            if epoch == kill_after:
                raise _Killed

        fit(
            model,
            optimizer,
            loss,
            x,
            y,
            config,
            on_epoch=on_epoch,
            checkpoint=checkpoint,
            lr_schedule=lambda step: 1 - step / 12,
        )
        return model, optimizer, rates

    model, optimizer, rates = train()
    assert rates == pytest.approx([0.1 * (1 - step / 12) for step in range(12)], rel=1e-12)
    assert optimizer.param_groups[0]["lr"] == 0.1
    checkpoint = tmp_path / "scheduled.safetensors"
    with pytest.raises(_Killed):
        train(checkpoint, kill_after=2)
    resumed, _, resumed_rates = train(checkpoint)
    assert resumed_rates == rates[4:]  # killed before epoch 2 was saved: epochs 2 and 3 again, at their own rates
    assert torch.equal(resumed.weight, model.weight) and torch.equal(resumed.bias, model.bias)


def test_a_step_budget_ends_training_in_the_middle_of_an_epoch_whose_loss_is_the_mean_over_its_steps(
    tmp_path, monkeypatch
):
    from mivae import training

    monkeypatch.setattr(training, "CHECKPOINT_EVERY", 1e9)  # saved only at the end, which the budget makes
    checkpoint = tmp_path / "budget.safetensors"
    x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    config = TrainConfig(epochs=5, batch_size=10, patience=10)  # 4 steps of 10 rows per epoch
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    losses, scored = [], []

    def loss(m, xb, yb):
        value = torch.nn.functional.cross_entropy(m(xb), yb)
        losses.append(value.item())
        return value

    history = fit(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        loss,
        x,
        y,
        config,
        score=lambda m: scored.append(1) or -len(scored),
        max_steps=6,
        checkpoint=checkpoint,
    )
    assert len(losses) == 6 and len(history.train_loss) == 2 and len(scored) == 2  # 4 steps, then 2 of the next epoch
    assert history.train_loss[1] == pytest.approx(sum(losses[4:]) / 2, rel=1e-6)
    again = fit(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        loss,
        x,
        y,
        config,
        score=lambda m: pytest.fail("a finished training was scored"),
        max_steps=6,
        checkpoint=checkpoint,
    )
    assert len(losses) == 6 and again.train_loss == history.train_loss  # the budget's end was saved: nothing more


def test_a_damaged_checkpoint_is_one_sentence(tmp_path):
    from mivae.errors import MivaeError

    checkpoint = tmp_path / "damaged.safetensors"
    checkpoint.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    model = torch.nn.Linear(3, 2)
    with pytest.raises(MivaeError, match="checkpoint .* is damaged or from another training .*; delete it to start"):
        fit(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            lambda m, xb, yb: m(xb).sum(),
            torch.randn(8, 3),
            torch.zeros(8),
            TrainConfig(epochs=2),
            checkpoint=checkpoint,
        )


def test_gains_under_min_delta_do_not_reset_the_patience_but_the_best_weights_are_kept():
    x, y = torch.randn(64, 3), torch.randint(0, 2, (64,))

    def run(scores, min_delta):
        scores = iter(scores)
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        config = TrainConfig(epochs=8, patience=2, min_delta=min_delta, batch_size=16, min_epochs=0)
        return fit(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            lambda m, xb, yb: torch.nn.functional.cross_entropy(m(xb), yb),
            x,
            y,
            config,
            score=lambda m: next(scores),
            higher_is_better=False,
        )

    plateau = [10.0, 9.95, 9.92, 9.91, 9.90, 9.89, 9.88, 9.87]  # a plateau's drift: hundredths per epoch
    drifting = run(plateau, 0.1)
    assert drifting.stopped_early and len(drifting.val_score) == 3 and drifting.best_epoch == 3
    assert len(run(plateau, 0.0).val_score) == 8  # every hundredth resets a plain patience
    steady = run([10.0, 9.95, 9.89, 9.84, 9.78, 9.75, 9.74, 9.73], 0.1)  # 0.05 an epoch: a reset every other epoch
    assert [steady.stopped_early, len(steady.val_score), steady.best_epoch] == [True, 7, 7]
