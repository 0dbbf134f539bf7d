"""Train and evaluate one model on one problem: what `mivae train` and `mivae evaluate` do.

Kinds (thesis §3.3): `vae` (denoising VAE), Type 1 `mlp` and `cnn` on the filled,
corrupted images, Type 2 `vae+mlp` and `vae+cnn` on the imputations of a trained VAE.
Beyond the thesis: `miwae` and `not-miwae`, which learn from the incomplete images alone.
"""

from functools import partial

import numpy as np
import torch

from mivae.errors import MivaeError
from mivae.hardware import resolve_device, resolve_precision, steady_heap
from mivae.health import classifier_health, vae_health
from mivae.images.imputation import (
    classify_incomplete,
    impute,
    impute_incomplete,
    multiple_imputation,
    negative_bound_per_image,
    negative_elbo_per_image,
    predict_proba,
    rmse_on_missing,
)
from mivae.images.problem import make_problem
from mivae.images.results import (
    BoundEvaluation,
    ClassifierEvaluation,
    ImportanceWeightedEvaluation,
    MultipleRow,
    Type2Evaluation,
    VAEEvaluation,
)
from mivae.images.runs import Run
from mivae.models import build_model, kind_of
from mivae.models.miwae import miwae_loss
from mivae.stats import accuracy, class_distribution, paired_test, uncertainty
from mivae.training import adadelta, adam, classifier_loss, fit, vae_loss

# What a VAE's data config must share with a Type 2 run built on it.
_SAME_CORRUPTION = ("dataset", "method", "level", "fill", "exact", "seed")


def sees_mask(kind, model_config, vae_config=None):
    """Whether a model of `kind` takes mask-aware inputs: always for MIWAEs; else its own choice, or its VAE's."""
    k = kind_of(kind)
    if k.incomplete or k.on_incomplete_imputer:
        return True
    return bool((vae_config if k.imputer else model_config).mask_input)


def _inputs(part, data, with_mask=False):
    return part.inputs(clean=data.clean_train, with_mask=with_mask)


def check_vae_matches(vae_run, data, where="the VAE run", kind="vae"):
    """Raises MivaeError unless `vae_run` is a model of `kind` (the imputer) trained on the corruption `data`
    describes."""
    if vae_run.kind != kind:
        raise MivaeError(f"{where} holds a {vae_run.kind} model; a {kind} run is needed.")
    if vae_run.data.clean_train:
        raise MivaeError(f"{where} was trained on clean images; imputation needs a VAE trained on the corrupted data.")
    for key in _SAME_CORRUPTION:
        mine, theirs = getattr(data, key), getattr(vae_run.data, key)
        if mine != theirs:
            raise MivaeError(f"{where} was trained with {key} = {theirs!r}; this run uses {key} = {mine!r}.")


def one_imputation(vae_run, data, part, batch=4096):
    """The single imputation (N, H, W) of `part` by a trained imputer run on the corruption `data`: the
    thesis' VAE decodes z = mu; a MIWAE or not-MIWAE uses self-normalised importance sampling."""
    incomplete = kind_of(vae_run.kind).incomplete
    check_vae_matches(vae_run, data, kind=vae_run.kind if incomplete else "vae")
    model = vae_run.model.to(part.y.device)
    if incomplete:
        return impute_incomplete(model, part.inputs(with_mask=True), vae_run.model_config.eval_samples)
    return impute(model, part.inputs(with_mask=vae_run.model_config.mask_input), batch)


def _vae_score(vae, part, data, config, batch, dtype=torch.float32):
    """The mean negative ELBO per image on `part`: against the clean images if the VAE denoises.

    dtype: the matmuls' precision. Training scores every epoch in its own precision (bf16 where fast: half the
    time of float32, within 0.01 nats on the selected VAEs); reported metrics are float32."""
    target = part.clean if config.denoising else _inputs(part, data)
    with torch.autocast(part.y.device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        return negative_elbo_per_image(vae, _inputs(part, data, config.mask_input), target, batch).mean().item()


def vae_run_health(vae, part, data, config, batch=4096):
    """The `Health` of a trained (denoising) VAE on `part`, usually the validation split."""
    target = part.clean if config.denoising else _inputs(part, data)
    inputs = _inputs(part, data, config.mask_input)
    return vae_health(vae, inputs, target, _vae_score(vae, part, data, config, batch), batch)


def classifier_run_health(model, part, data, with_mask, n_classes, batch=4096, dtype=torch.float32):
    """The `Health` of a trained classifier on `part` (usually the validation split), by its single-imputation
    predictions; a classifier trained on clean images is judged on clean images, the data it was selected on."""
    inputs = part.inputs(clean=data.clean_train, with_mask=with_mask)
    predicted = predict_proba(model, inputs, batch, dtype).argmax(1).cpu().numpy()
    return classifier_health(predicted, part.y.cpu().numpy(), n_classes)


def _health(health, held_out):
    """`health` as a dict; held_out is false for a model retrained on train + validation (§3.5), whose validation
    images were among its training images: the check then still catches a collapse, but on data it has seen."""
    return {**health.to_dict(), "held_out": held_out}


def _held_out(run):
    return bool(run.history and run.history.val_score)  # a retrained run stopped at a fixed epoch, unvalidated


def _incomplete_metrics(model, parts, samples):
    """The negative importance-weighted bound and the RMSE of the single imputation on the missing pixels, per part."""
    metrics = {}
    for name, part in parts:
        inputs = part.inputs(with_mask=True)
        metrics[f"{name}_negative_bound"] = negative_bound_per_image(model, inputs, samples).mean().item()
        metrics[f"{name}_rmse_missing"] = rmse_on_missing(
            impute_incomplete(model, inputs, samples), part.clean, part.mask
        )
    return metrics


def _importance_weighted_probas(run, part, samples, seed, batch, dtype):
    x = part.inputs(with_mask=True)
    return {
        "single": predict_proba(run.model, x, batch, dtype),
        "importance_weighted": classify_incomplete(run.model, x, samples, seed, weighted=True),
        "uniform": classify_incomplete(run.model, x, samples, seed, weighted=False),
    }


def _importance_weighted_evaluation(run, val, test, samples, seed, batch, dtype):
    """A MIWAE-based Type 2 run: single imputation, and K = `samples` imputations averaged with importance
    weights (supMIWAE's p(y | x_obs)) and uniformly (the thesis' multiple imputation), with paired tests.
    Validation accuracy of each is reported too, for choosing between them without the test set."""
    y = test.y.cpu().numpy()
    val_probas = _importance_weighted_probas(run, val, samples, seed, batch, dtype)
    probas = _importance_weighted_probas(run, test, samples, seed, batch, dtype)
    predicted = {name: p.argmax(1).cpu().numpy() for name, p in probas.items()}
    result = {"samples": samples, "true_class_distribution": class_distribution(y, run.n_classes).tolist()}
    for name, p in probas.items():
        result[name] = {
            "accuracy": accuracy(predicted[name], y),
            "uncertainty": uncertainty(p.cpu().numpy(), y),
            "val_accuracy": accuracy(val_probas[name].argmax(1).cpu(), val.y.cpu()),
            "class_distribution": class_distribution(predicted[name], run.n_classes).tolist(),
            "predicted": predicted[name].tolist(),
        }
    result["z_weighted_vs_single"] = paired_test(predicted["importance_weighted"], predicted["single"], y).z
    result["z_weighted_vs_uniform"] = paired_test(predicted["importance_weighted"], predicted["uniform"], y).z
    return result


def _run(kind, data, model_config, train, model, problem, history, metrics, vae_run=None):
    """The Run of a model trained on `problem` (a Type 2 one on `vae_run`'s imputations)."""
    return Run(
        kind=kind,
        data=data,
        model_config=model_config,
        train=train,
        model=model,
        image_shape=problem.image_shape,
        n_classes=problem.n_classes,
        vae_config=vae_run.model_config if vae_run else None,
        history=history,
        metrics=metrics,
    )


def train_model(
    kind,
    data,
    model_config,
    train,
    data_dir=None,
    vae_run=None,
    problem=None,
    on_epoch=None,
    validate=True,
    checkpoint=None,
):
    """Returns a trained `Run` of `kind` on the problem `data` describes, with validation and test metrics.

    Type 2 kinds need `vae_run`, a trained VAE `Run` on the same corruption; its weights stay fixed.
    With `validate` false, exactly `train.epochs` epochs run with no early stopping and only
    test metrics are reported (the final retraining on train + validation of §3.5).
    checkpoint: a file where the training keeps its state between epochs and resumes from (`fit`).
    """
    device = resolve_device(train.device)  # first: a GPU that is not there is an error before any data is read
    problem = problem or make_problem(data, data_dir)
    dtype = resolve_precision(train.precision, device)
    tr, val, test = (p.to(device) for p in (problem.train, problem.val, problem.test))
    torch.manual_seed(train.seed)
    batch = train.eval_batch_size

    k = kind_of(kind)
    if k.vae:
        model = build_model("vae", model_config, problem.image_shape).to(device)
        target = tr.clean if model_config.denoising else _inputs(tr, data)
        score = (lambda m: _vae_score(m, val, data, model_config, batch, dtype)) if validate else None
        history = fit(
            model,
            adam(model, model_config.lr, model_config.l2),
            vae_loss,
            _inputs(tr, data, model_config.mask_input),
            target,
            train,
            score=score,
            higher_is_better=False,
            on_epoch=on_epoch,
            checkpoint=checkpoint,
        )
        parts = (
            (("val_negative_elbo", val), ("test_negative_elbo", test)) if validate else (("test_negative_elbo", test),)
        )
        metrics = {name: _vae_score(model, part, data, model_config, batch) for name, part in parts}
        metrics["health"] = _health(vae_run_health(model, val, data, model_config, batch), held_out=validate)
        return _run(kind, data, model_config, train, model, problem, history, metrics)

    if k.incomplete:
        if data.clean_train:
            raise MivaeError(f"a {kind} model learns from incomplete images; it cannot be trained on clean ones.")
        model = build_model(kind, model_config, problem.image_shape).to(device)
        proposals, val_inputs = model_config.eval_samples, val.inputs(with_mask=True)
        score = (lambda m: negative_bound_per_image(m, val_inputs, proposals).mean().item()) if validate else None
        history = fit(
            model,
            adam(model, model_config.lr, model_config.l2),
            partial(miwae_loss, samples=model_config.samples),
            tr.inputs(with_mask=True),
            tr.y,
            train,
            score=score,
            higher_is_better=False,
            on_epoch=on_epoch,
            checkpoint=checkpoint,
        )
        parts = (("val", val), ("test", test)) if validate else (("test", test),)
        metrics = _incomplete_metrics(model, parts, proposals)
        return _run(kind, data, model_config, train, model, problem, history, metrics)

    vae, imputer = None, k.imputer
    if imputer:
        if vae_run is None:
            raise MivaeError(
                f"a {kind} model is trained on a {imputer}'s imputations; pass --vae with a trained {imputer} run."
            )
        check_vae_matches(vae_run, data, kind=imputer)
        vae = vae_run.model.to(device)
    model = build_model(
        kind,
        model_config,
        problem.image_shape,
        problem.n_classes,
        vae=vae,
        imputer_config=vae_run.model_config if vae_run else None,
    ).to(device)
    with_mask = sees_mask(kind, model_config, vae_run.model_config if vae_run else None)

    def val_accuracy(m):
        return accuracy(predict_proba(m, _inputs(val, data, with_mask), batch, dtype).argmax(1).cpu(), val.y.cpu())

    history = fit(
        model,
        adadelta(model, model_config.lr, model_config.l2),
        classifier_loss,
        _inputs(tr, data, with_mask),
        tr.y,
        train,
        score=val_accuracy if validate else None,
        on_epoch=on_epoch,
        checkpoint=checkpoint,
    )
    metrics = {"val_accuracy": val_accuracy(model)} if validate else {}
    test_inputs = _inputs(test, data, with_mask)
    metrics["test_accuracy"] = accuracy(predict_proba(model, test_inputs, batch, dtype).argmax(1).cpu(), test.y.cpu())
    metrics["health"] = _health(
        classifier_run_health(model, val, data, with_mask, problem.n_classes, batch, dtype), held_out=validate
    )
    return _run(kind, data, model_config, train, model, problem, history, metrics, vae_run)


def evaluate_run(
    run, imputations=(1, 10, 100, 1000), data_dir=None, vae_run=None, problem=None, seed=0, precision="auto", data=None
):
    """Returns the test metrics of `run` on its own corrupted test set: an Evaluation of its kind (images.results).

    `data` tests a run trained on clean images on another corruption than its own.
    vae: negative ELBO per image on validation and test. Type 1: accuracy on the corrupted
    test images; trained on clean data (`clean_train`) also on one imputation by `vae_run`, a VAE,
    MIWAE or not-MIWAE (Tables 6 and 7), with the paired test between the two. Type 2: single imputation and
    multiple imputation for every m up to max(imputations), with z_multi/single at each
    requested m (Tables 1, 2, 4, 5 and Figures 10-16). Classification runs in `precision`.
    """
    if data is not None and data != run.data and not run.data.clean_train:
        raise MivaeError("only a run trained on clean images can be tested on another corruption than its own.")
    data = data or run.data
    steady_heap()  # for the Python API too: a long multiple imputation would otherwise fragment the heap
    problem = problem or make_problem(data, data_dir)
    device = next(run.model.parameters()).device
    dtype = resolve_precision(precision, device)
    val, test = problem.val.to(device), problem.test.to(device)
    batch = run.train.eval_batch_size
    y = test.y.cpu().numpy()
    common = {
        "kind": run.kind,
        "data": {k: getattr(data, k) for k in ("dataset", "method", "level", "seed")},
        "test_images": len(test),
        "precision": str(dtype).removeprefix("torch."),
    }

    k = kind_of(run.kind)
    if k.vae:
        elbo = {
            name: _vae_score(run.model, part, run.data, run.model_config, batch)
            for name, part in (("val", val), ("test", test))
        }
        health = _health(vae_run_health(run.model, val, run.data, run.model_config, batch), _held_out(run))
        return VAEEvaluation(**common, val_negative_elbo=elbo["val"], test_negative_elbo=elbo["test"], health=health)
    if k.incomplete:
        proposals = run.model_config.eval_samples
        return BoundEvaluation(**common, **_incomplete_metrics(run.model, (("val", val), ("test", test)), proposals))

    with_mask = sees_mask(run.kind, run.model_config, run.vae_config)
    x = test.inputs(with_mask=with_mask)
    # The model's own health on validation images as it was trained (clean ones for a classifier of Tables 6/7).
    health = _health(
        classifier_run_health(run.model, val, run.data, with_mask, run.n_classes, batch, dtype), _held_out(run)
    )
    if k.on_incomplete_imputer:
        weighted = _importance_weighted_evaluation(run, val, test, max(imputations), seed, batch, dtype)
        return ImportanceWeightedEvaluation(**common, health=health, **weighted)
    if not k.imputer:
        proba = predict_proba(run.model, x, batch, dtype).cpu().numpy()
        direct = proba.argmax(1)
        on_imputation = {}
        if vae_run is not None:
            on_test, on_val = (
                predict_proba(run.model, one_imputation(vae_run, data, part, batch), batch, dtype)
                .argmax(1)
                .cpu()
                .numpy()
                for part in (test, val)
            )
            on_imputation = {
                "accuracy_on_one_vae_imputation": accuracy(on_test, y),
                "val_accuracy_on_one_vae_imputation": accuracy(on_val, val.y.cpu().numpy()),
                "predicted_on_one_vae_imputation": on_test.tolist(),
                "z_imputation_vs_direct": paired_test(on_test, direct, y).z,
            }
        return ClassifierEvaluation(
            **common,
            health=health,
            accuracy=accuracy(direct, y),
            val_accuracy=accuracy(
                predict_proba(run.model, val.inputs(with_mask=with_mask), batch, dtype).argmax(1).cpu(), val.y.cpu()
            ),
            class_distribution=class_distribution(direct, run.n_classes).tolist(),
            uncertainty=uncertainty(proba, y),
            predicted=direct.tolist(),  # for paired tests between any two evaluations of this test set
            **on_imputation,
        )

    single_proba = predict_proba(run.model, x, batch, dtype).cpu().numpy()
    single = single_proba.argmax(1)
    multi = multiple_imputation(run.model, x, test.y, max(imputations), keep=imputations, seed=seed, dtype=dtype)
    rows = {}
    for m in sorted(set(imputations)):
        predicted = multi.predictions[m].numpy()
        test_vs_single = paired_test(predicted, single, y)
        rows[m] = MultipleRow(
            accuracy=float(multi.accuracy[m - 1]),
            z_multi_single=test_vs_single.z,
            mcnemar_p=test_vs_single.mcnemar_p,
            class_distribution=class_distribution(predicted, run.n_classes).tolist(),
        )
    z_max_vs_10 = None
    if 10 in multi.predictions and max(imputations) > 10:  # does more than 10 imputations help (§5, observation 6)?
        z_max_vs_10 = paired_test(multi.predictions[max(imputations)].numpy(), multi.predictions[10].numpy(), y).z
    return Type2Evaluation(
        **common,
        health=health,
        single_accuracy=accuracy(single, y),
        # Does multiple imputation give better uncertainty than single (the thesis' §5 advice)? Measured:
        single_uncertainty=uncertainty(single_proba, y),
        multiple_uncertainty=uncertainty(multi.proba.numpy(), y),  # with all max(imputations) imputations
        single_class_distribution=class_distribution(single, run.n_classes).tolist(),
        true_class_distribution=class_distribution(y, run.n_classes).tolist(),
        multiple=rows,
        z_multi_max_vs_10=z_max_vs_10,
        accuracy_curve=np.round(multi.accuracy, 6).tolist(),
    )
