"""Health checks: collapsed classifiers and VAEs, built on purpose on digits, are caught; trained ones pass."""

import dataclasses
import json

import numpy as np
import optuna
import pytest
import torch

from mivae.config import DataConfig, MLPConfig, TrainConfig, VAEConfig
from mivae.health import classifier_health, constant_image_nll
from mivae.images.pipeline import classifier_run_health, train_model, vae_run_health
from mivae.images.problem import make_problem
from mivae.models import build_model
from mivae.study import search

DATA = DataConfig(dataset="digits", method="random-pixels", level=0.3)


@pytest.fixture(scope="module")
def problem():
    return make_problem(DATA)


def test_a_classifier_answering_one_class_is_caught(problem):
    model = build_model("mlp", MLPConfig(hidden=(32, 32)), problem.image_shape)
    last = model.layers[-1]
    with torch.no_grad():  # every image gets the logits of its bias alone, which favour digit 3
        last.weight.zero_()
        last.bias.copy_(torch.nn.functional.one_hot(torch.tensor(3), 10).float() * 10)
    health = classifier_run_health(model, problem.val, DATA, False, 10)
    assert not health.ok and "class 3 makes up 100.0%" in health.reason
    assert health.measured["top_share"] == 1.0


def test_predictions_at_chance_are_caught_even_when_spread_over_classes():
    labels = np.repeat(np.arange(10), 100)
    predicted = np.random.default_rng(0).integers(0, 10, size=len(labels))  # no class above 15 %, accuracy about 0.1
    health = classifier_health(predicted, labels, 10)
    assert not health.ok and "within 2 points of the largest class share 0.1000" in health.reason
    right = labels.copy()
    right[:300] = (right[:300] + 1) % 10  # 70 % right, spread over all classes
    assert classifier_health(right, labels, 10).ok


def test_a_trained_classifier_passes(problem):
    run = train_model("mlp", DATA, MLPConfig(hidden=(64, 64)), TrainConfig(epochs=15, batch_size=64), problem=problem)
    assert run.metrics["health"]["ok"] and run.metrics["health"]["measured"]["accuracy"] > 0.6


def test_a_vae_whose_encoder_says_nothing_is_caught(problem):
    vae = build_model("vae", VAEConfig(hidden=(32,), latent=4), problem.image_shape)
    with torch.no_grad():  # q(z | x) = N(0, I) for every image: KL exactly 0
        for head in (vae.to_mu, vae.to_logvar):
            head.weight.zero_()
            head.bias.zero_()
    health = vae_run_health(vae, problem.val, DATA, VAEConfig())
    assert not health.ok and "the KL term is 0.00 nats per image" in health.reason


def test_a_vae_whose_decoder_ignores_the_latent_is_caught(problem):
    vae = build_model("vae", VAEConfig(hidden=(32,), latent=4), problem.image_shape)
    mean = problem.val.clean.mean(0).clamp(1e-4, 1 - 1e-4)
    with torch.no_grad():  # the encoder says plenty (KL well above 1 nat), the decoder always draws the mean image
        vae.to_mu.bias.fill_(3.0)
        out = vae.decoder[-1]
        out.weight.zero_()
        out.bias.copy_(torch.logit(mean).flatten())
    health = vae_run_health(vae, problem.val, DATA, VAEConfig())
    assert not health.ok and "within 0.41 nats of the best constant image" in health.reason
    assert health.measured["kl"] > 1
    assert health.measured["constant_image"] == pytest.approx(constant_image_nll(problem.val.clean))


def test_the_best_constant_image_is_the_pixel_mean():
    target = torch.rand(50, 4, 4).round()
    best = constant_image_nll(target)
    mean = target.mean(0)
    for shift in (-0.1, 0.1):
        other = (mean + shift).clamp(1e-6, 1 - 1e-6).expand_as(target)
        worse = torch.nn.functional.binary_cross_entropy(other, target, reduction="none").flatten(1).sum(1).mean()
        assert best < worse.item()


def test_a_trained_vae_passes(problem):
    run = train_model(
        "vae", DATA, VAEConfig(hidden=(128,), latent=8), TrainConfig(epochs=40, batch_size=64), problem=problem
    )
    health = run.metrics["health"]
    assert health["ok"], health["reason"]
    assert health["measured"]["negative_elbo"] < health["measured"]["constant_image"] - 5 * 64 / 784
    assert health["measured"]["kl"] > 1


def test_a_search_records_an_unhealthy_trial_as_failed_and_goes_on(tmp_path, problem, monkeypatch, capfd):
    """The second trial's MLP is built to collapse (AdaDelta at a learning rate that cannot move it);
    the search records it as failed with the reason, runs the third, and selects among the healthy ones,
    without a traceback: a failed health check is an outcome, not an error."""

    def collapsing_second(kind, trial, layers=2):
        return MLPConfig(hidden=(32, 32), lr=1e-9) if trial.number == 1 else MLPConfig(hidden=(64, 64 + trial.number))

    monkeypatch.setattr(search, "suggest_config", collapsing_second)
    train = TrainConfig(epochs=15, batch_size=32, min_epochs=0)
    result = search.search("mlp", DATA, 3, tmp_path, train, problem=problem, retrain=False, prune=False)
    summary = json.loads((tmp_path / "search.json").read_text())
    states = [t["state"] for t in summary["trials"]]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]
    assert "failed its health check" in summary["trials"][1]["failure"]
    assert summary["best_trial"] != 1 and summary["health"]["ok"] and result.best_value > 0.5
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Trial 1 failed" not in err


def test_a_search_whose_every_trial_is_unhealthy_keeps_the_best_and_says_it_failed(tmp_path, problem, monkeypatch):
    monkeypatch.setattr(search, "suggest_config", lambda kind, trial, layers=2: MLPConfig(hidden=(32, 32), lr=1e-9))
    train = TrainConfig(epochs=2, batch_size=64, min_epochs=0)
    search.search("mlp", DATA, 2, tmp_path, train, problem=problem, retrain=False, prune=False)
    summary = json.loads((tmp_path / "search.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["FAIL", "FAIL"]
    assert not summary["health"]["ok"] and (tmp_path / "final" / "model.safetensors").exists()


def test_a_retrained_winner_of_failed_trials_is_still_reported_as_failed(tmp_path, problem, monkeypatch):
    """Retrained on train + validation, the kept model is judged on images it has seen; the search's verdict
    rests on its trials, judged on held-out images, which all failed."""
    monkeypatch.setattr(search, "suggest_config", lambda kind, trial, layers=2: MLPConfig(hidden=(32, 32), lr=1e-9))
    real = search.train_model

    def healthy_retraining(kind, data, config, train, **kwargs):  # the final model learns, unlike its trials
        if kwargs.get("validate", True):
            return real(kind, data, config, train, **kwargs)
        return real(kind, data, MLPConfig(hidden=(32, 32)), dataclasses.replace(train, epochs=15), **kwargs)

    monkeypatch.setattr(search, "train_model", healthy_retraining)
    result = search.search(
        "mlp",
        DATA,
        2,
        tmp_path,
        TrainConfig(epochs=2, batch_size=64, min_epochs=0),
        problem=problem,
        retrain=True,
        prune=False,
    )
    final = json.loads((tmp_path / "final" / "metrics.json").read_text())["health"]
    assert final["ok"] and final["held_out"] is False  # the retrained model passes on what it was trained on
    summary = json.loads((tmp_path / "search.json").read_text())
    assert not summary["health"]["ok"] and not result.health["ok"]
    assert summary["health"]["reason"].startswith("no trial passed its health check; the best failed one was kept: ")


def test_the_pruner_stops_a_hopeless_trial(tmp_path, problem, monkeypatch):
    """Two sound trials, then one that cannot learn: it is pruned after the warm-up, long before its last epoch."""
    suggest = search.suggest_config

    def hopeless_third(kind, trial, layers=2):
        return MLPConfig(hidden=(32, 32), lr=1e-9) if trial.number == 2 else suggest(kind, trial, layers)

    monkeypatch.setattr(search, "suggest_config", hopeless_third)
    train = TrainConfig(epochs=20, batch_size=64, min_epochs=3, patience=20)
    search.search("mlp", DATA, 3, tmp_path, train, problem=problem, retrain=False)
    trials = json.loads((tmp_path / "search.json").read_text())["trials"]
    assert [t["state"] for t in trials[:2]] == ["COMPLETE", "COMPLETE"]
    assert trials[2]["state"] == "PRUNED" and trials[2]["pruned_at"] == 3  # the first epoch early stopping could act
    study = optuna.load_study(
        study_name=json.loads((tmp_path / "search.json").read_text())["study"], storage=search.default_storage(tmp_path)
    )
    assert len(study.trials[2].intermediate_values) == 3


def test_the_pruner_spares_a_slow_start_inside_the_warm_up():
    pruner = search.median_pruner(TrainConfig(min_epochs=10))
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for _ in range(2):
        study.add_trial(
            optuna.trial.create_trial(
                value=0.9, intermediate_values={e: 0.9 for e in range(1, 21)}, distributions={}, params={}
            )
        )
    trial = study.ask()
    for epoch in range(1, 10):
        trial.report(0.1, epoch)
        assert not trial.should_prune()  # still inside the warm-up of 10 epochs
    trial.report(0.1, 10)
    assert trial.should_prune()
