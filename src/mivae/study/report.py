"""The report of a reproduce run: every table and figure of thesis §4 beside the thesis' own numbers.

Built from RUN_DIR/results/ alone (never trains, never reads the dataset):

    RUN_DIR/report/report.md       tables in the thesis' layout, "ours (thesis)", figures, §5's observations,
                                   and the "Beyond the thesis" section (mivae.study.report_beyond)
    RUN_DIR/report/figures/*.png   Figures 4, 8-16
    RUN_DIR/report/results.csv     every table cell: table, row, column, ours, thesis, failed_model (it rests on a
                                   model that failed its health check, mivae.health)
    RUN_DIR/report/results.json    the same cells, the observations and the run's settings
"""

import csv
import io
import math
from pathlib import Path

import numpy as np

from mivae import readback
from mivae.artifacts import atomic_path
from mivae.errors import MivaeError
from mivae.health import FAILED_MARK
from mivae.health import SHAPE as HEALTH_SHAPE
from mivae.images.figures import image_grid, plt, save_figure
from mivae.images.results import ClassifierEvaluation, Type2Evaluation, VAEEvaluation, check_content
from mivae.images.runs import write_json
from mivae.models import KINDS
from mivae.study import markdown
from mivae.study.report_beyond import RESULTS as BEYOND_RESULTS
from mivae.study.report_beyond import section as beyond_section
from mivae.study.reproduce import (
    LEVELS,
    METHODS,
    PRESET_SHAPE,
    RESULT_SHAPE,
    STUDY_SHAPE,
    current_identity,
    setting_name,
    wall_time,
)
from mivae.study.search import SEARCH_SHAPE, trial_outcome

# The thesis' Tables 1-7 (§4), cell by cell.
THESIS = {
    1: {0.5: (0.8411, 0.8599, 0.859, -1.08), 0.7: (0.7116, 0.7134, 0.7148, 1.32), 0.9: (0.2948, 0.3435, 0.3430, -0.36)},
    2: {0.5: (0.9766, 0.8657, 0.8665, 0.96), 0.7: (0.9336, 0.7257, 0.7273, 1.47), 0.9: (0.7152, 0.3509, 0.3498, -0.83)},
    4: {0.5: (0.8748, 0.9229, 0.9232, 0.52), 0.7: (0.7682, 0.8303, 0.8298, -0.65), 0.9: (0.4706, 0.4903, 0.489, -0.63)},
    5: {0.5: (0.9755, 0.9314, 0.9337, 3.16), 0.7: (0.9382, 0.8415, 0.8437, 2.18), 0.9: (0.6638, 0.502, 0.5037, 1.13)},
    3: ((150.7, 0.7129), (174.3, 0.4629), (205.8, 0.1134)),
    6: {
        0.5: (0.2919, 0.8394, 0.1695, 0.8423),
        0.7: (0.1878, 0.6882, 0.1001, 0.6962),
        0.9: (0.1377, 0.2853, 0.0905, 0.2775),
    },
    7: {
        0.5: (0.2823, 0.9192, 0.2624, 0.9182),
        0.7: (0.1767, 0.8159, 0.1876, 0.8209),
        0.9: (0.1270, 0.4158, 0.1385, 0.4416),
    },
}
# (table, method, classifier) of Tables 1, 2, 4, 5, and the figures of their accuracy curves.
TYPE2_TABLES = (
    (1, "random-pixels", "mlp", 10),
    (2, "random-pixels", "cnn", 11),
    (4, "vertical-lines", "mlp", 14),
    (5, "vertical-lines", "cnn", 15),
)
CLEAN_TABLES = ((6, "random-pixels"), (7, "vertical-lines"))
TITLES = {"random-pixels": "Random Pixels", "vertical-lines": "Vertical Lines"}


THESIS_RESULTS = ("vae", "mlp", "cnn", "vae+mlp", "vae+cnn", "clean-mlp", "clean-cnn")


# A row of table3.json, as reproduce writes it.
TABLE3_ROW = {
    "vae": str,
    "config": readback.Map(readback.ANY),
    "test_negative_elbo": readback.NUMBER,
    "test_accuracy": readback.NUMBER,
    "health": readback.Optional(readback.Either(None, HEALTH_SHAPE)),  # the selected VAE's is Table 1's
}


def _read(path, shape=RESULT_SHAPE):
    return readback.read_json(path, shape)


# What the study adds to an evaluation in its results: the key it is cached under, the seconds it took, and for the
# thesis' results the search that chose the model (checked in `_result`).
STUDY_FIELDS = {"key": str, "seconds": readback.NUMBER, "search": readback.Optional(readback.ANY)}


def _result(path, name, setting):
    """The result `name` of `setting` (method, level) read from `path`, checked: its content (images.results), and
    for the thesis' results their kind and their search."""
    result = check_content(_read(path), path, setting, STUDY_FIELDS)
    if name in THESIS_RESULTS:
        kind = name.removeprefix("clean-")
        if result["kind"] != kind:
            raise MivaeError(
                f"{path} holds the results of a {result['kind']!r:.40}, not of a {kind}: it was moved or damaged."
            )
        readback.check(result.get("search"), {**SEARCH_SHAPE, "seconds": readback.NUMBER}, path, "search")
    return result


def _images(content, path):
    """`content` (examples.json or figure8.json) if every image in it has the size of the first; raises MivaeError
    naming `path` otherwise."""
    images = [
        v for k, v in content.items() if k not in ("imputations", "test_labels", "predicted") and isinstance(v, list)
    ]
    images += content.get("imputations", [])
    sizes = {(len(image), len(image[0])) for image in images}
    if len(sizes) > 1:
        raise MivaeError(f"{path} is damaged: its images are not all of one size.")
    return content


def _is_image(value):
    """Whether `value` is an image as the study writes one: rows of one length of finite numbers."""
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(row, list) and len(row) == len(value[0]) > 0 for row in value)
        and all(readback.FINITE.test(v) for row in value for v in row)
    )


IMAGE = readback.Check("an image (rows of one length of finite numbers)", _is_image)
EXAMPLES_SHAPE = {  # the first test image, clean and in each setting that ran, and the test labels
    "key": str,
    "index": readback.WHOLE,
    "clean": IMAGE,
    **{setting_name(m, lv): readback.Optional(IMAGE) for m in METHODS for lv in LEVELS},
    "test_labels": [readback.WHOLE],
    "seconds": readback.Optional(readback.NUMBER),
}
FIGURE8_SHAPE = {  # Figure 8: one hard test image, clean, corrupted, and its imputations with their predictions
    "key": str,
    "index": readback.WHOLE,
    "label": readback.WHOLE,
    "predicted": [readback.WHOLE],
    "clean": IMAGE,
    "corrupted": IMAGE,
    "imputations": [IMAGE],
    "seconds": readback.Optional(readback.NUMBER),
}


def load_results(run_dir):
    """Returns every result of a reproduce run as {group: {name: dict}}, with the settings that ran in "settings"
    (those whose every thesis result exists) and whether each ran the beyond-the-thesis stage in "beyond";
    raises MivaeError if no setting has finished."""
    run_dir = Path(run_dir)
    results_dir = run_dir / "results"
    if not (run_dir / "study.json").exists():
        raise MivaeError(f"{run_dir} is not a reproduce run directory: study.json is missing.")
    results, present, beyond = {}, [], []
    for method in METHODS:
        for level in LEVELS:
            setting = setting_name(method, level)
            paths = {n: results_dir / setting / f"{n}.json" for n in (*THESIS_RESULTS, *BEYOND_RESULTS)}
            if not all(paths[n].exists() for n in THESIS_RESULTS):
                continue
            results[setting] = {n: _result(path, n, (method, level)) for n, path in paths.items() if path.exists()}
            present.append(setting)
            if all(n in results[setting] for n in BEYOND_RESULTS):
                beyond.append(setting)
    examples = results_dir / "figures" / "examples.json"
    if not present or not examples.exists():
        raise MivaeError(
            f"{run_dir} is not finished: no setting has all its results yet; run 'mivae reproduce' again to "
            f"complete it."
        )
    results["figures"] = {"examples": _images(_read(examples, EXAMPLES_SHAPE), examples)}
    labels = len(results["figures"]["examples"]["test_labels"])
    for setting in present:
        for name, result in results[setting].items():
            if result["test_images"] != labels:
                raise MivaeError(
                    f"{results_dir / setting / name}.json is damaged: it counts {result['test_images']} test images, "
                    f"and the study's test set has {labels}."
                )
    figure8 = results_dir / "figures" / "figure8.json"
    if figure8.exists():
        results["figures"]["figure8"] = _images(_read(figure8, FIGURE8_SHAPE), figure8)
    if (results_dir / "table3.json").exists():
        results["table3"] = _read(results_dir / "table3.json", {"rows": [TABLE3_ROW]})["rows"]
    results["study"] = study = _read(run_dir / "study.json", STUDY_SHAPE)
    readback.check(
        current_identity(study["identity"])["preset"], PRESET_SHAPE, run_dir / "study.json", "identity.preset"
    )
    results["settings"], results["beyond"] = present, beyond
    results["wall"] = wall_time(run_dir)
    return results


# ----------------------------------------------------------------------------------------
# Health: a cell that rests on a model that failed its check (mivae.health) is marked, never read as a finding


def failures(results, setting, names):
    """Returns "what: why" for each model among `names` of `setting` that failed its health check; a Type 2 result
    rests on its VAE too."""
    out = []
    for name in names:
        for part in [name] + (["vae"] if name in KINDS and KINDS[name].imputer == "vae" else []):
            health = _health_of(results[setting][part])
            if health is not None and not health["ok"]:
                who = (
                    "the classifier trained on clean images, " + part.removeprefix("clean-").upper()
                    if part.startswith("clean-")
                    else f"{setting} {part.upper()}"
                )  # one model for every setting
                out.append(f"{who}: {health['reason']}")
    return list(dict.fromkeys(out))


def _health_of(result):
    """The health verdict a result rests on: its search's where no trial passed (so the kept model failed on
    held-out images, whatever a retrained model shows), else its evaluation's."""
    searched = (result.get("search") or {}).get("health")
    if searched is not None and not searched["ok"]:
        return searched
    return result.get("health")


# ----------------------------------------------------------------------------------------
# Tables: rows of (label, [(ours, thesis, failed), ...])


def _type2(results, setting, classifier):
    """The Type 2 evaluation of `classifier` on the VAE in `setting`, as its dataclass."""
    return Type2Evaluation.from_json(results[setting][f"vae+{classifier}"])


def _classifier(results, setting, name):
    """The evaluation of a Type 1 classifier `name` ("mlp", "clean-cnn", ...) in `setting`, as its dataclass."""
    return ClassifierEvaluation.from_json(results[setting][name])


def _vae(results, setting):
    """The evaluation of the VAE of `setting`, as its dataclass."""
    return VAEEvaluation.from_json(results[setting]["vae"])


def type2_table(results, table, method, classifier):
    """Table 1, 2, 4 or 5: Type 1 accuracy, Type 2 single and multiple, z_multi/single, per level that ran.

    Each cell is (ours, thesis, failed): failed is True where the cell rests on a model that failed its health
    check; ours is None for a level that did not run."""
    rows = []
    for level, name in _levels_that_ran(results, table, method, rows):
        direct, type2 = _classifier(results, name, classifier), _type2(results, name, classifier)
        largest = type2.multiple[type2.largest_m]
        ours = (
            direct.accuracy,
            type2.single_accuracy,
            largest.accuracy,
            largest.z_multi_single,
        )
        failed = (bool(failures(results, name, [classifier])),) + (
            bool(failures(results, name, [f"vae+{classifier}"])),
        ) * 3
        rows.append((level, list(zip(ours, THESIS[table][level], failed))))
    return rows


def _levels_that_ran(results, table, method, rows):
    """Yields (level, setting name) for each level of `method` that ran, and appends to `rows` the row of each
    level that did not: the thesis' cells beside none of ours."""
    for level in LEVELS:
        name = setting_name(method, level)
        if name in results["settings"]:
            yield level, name
        else:
            rows.append((level, [(None, t, False) for t in THESIS[table][level]]))


def clean_table(results, table, method):
    """Table 6 or 7: classifiers trained on clean images, directly and on one VAE imputation, per level that ran.

    The direct columns test clean-trained classifiers on corrupted images: a collapse there is the finding, so they
    are marked only if the classifier failed on its own clean validation images; the imputation columns also by
    the health of the setting's VAE."""
    rows = []
    for level, name in _levels_that_ran(results, table, method, rows):
        ours = []
        vae_failed = bool(failures(results, name, ["vae"]))
        for kind in ("clean-mlp", "clean-cnn"):
            own_failed, clean = bool(failures(results, name, [kind])), _classifier(results, name, kind)
            ours += [
                (clean.accuracy, own_failed),
                (clean.accuracy_on_one_vae_imputation, own_failed or vae_failed),
            ]
        rows.append((level, [(o, t, f) for (o, f), t in zip(ours, THESIS[table][level])]))
    return rows


def table3(results):
    """Table 3: negative ELBO and VAE+MLP accuracy of three VAEs at Random Pixels 70 %, cells as in `type2_table`.

    The selected row rests on the selected VAE and its VAE+MLP, those of Table 1; a weaker VAE is weak on purpose,
    so only its VAE+MLP's collapse is marked (which the thesis' weakest row shows too: 0.1134)."""
    selected = {
        "negative ELBO": bool(failures(results, "random-pixels-0.7", ["vae"])),
        "accuracy": bool(failures(results, "random-pixels-0.7", ["vae+mlp"])),
    }  # the same models as Table 1's
    rows = []
    for row, thesis in zip(results["table3"], THESIS[3]):
        if row["vae"] == "selected":
            failed = (selected["negative ELBO"], selected["accuracy"])
        else:
            failed = (False, row.get("health") is not None and not row["health"]["ok"])
        rows.append((row["vae"], list(zip((row["test_negative_elbo"], row["test_accuracy"]), thesis, failed))))
    return rows


def _cell(ours, thesis, failed, digits=4):
    if ours is None:
        return f"not run ({thesis:.{digits}f})"
    return f"{ours:.{digits}f} ({thesis:.{digits}f}){' ' + FAILED_MARK if failed else ''}"


def _markdown_table(header, rows, formats):
    """A table of (label, cells) rows, each cell (ours, thesis, failed) written with its number of digits."""
    return markdown.table(header, [[label, *(_cell(*c, d) for c, d in zip(cells, formats))] for label, cells in rows])


# ----------------------------------------------------------------------------------------
# §5's six observations, each with the statistic of this run


def _type2_cells(results):
    for method in METHODS:
        for level in LEVELS:
            for classifier in ("mlp", "cnn"):
                yield method, level, classifier, _type2(results, setting_name(method, level), classifier)


def _least_classified(evaluation):
    true = np.array(evaluation.true_class_distribution, dtype=float)
    ratio = np.array(evaluation.multiple[evaluation.largest_m].class_distribution) / np.maximum(true, 1)
    order = np.argsort(ratio)
    return [(int(d), float(ratio[d])) for d in order[:2]]


# What each observation of §5 rests on: the settings (all six, or the 90 % ones) and the models of each.
_TYPE2 = ("vae+mlp", "vae+cnn")
_RESTS_ON = (
    (None, _TYPE2),
    (None, ("mlp", "vae+mlp")),
    (None, ("mlp", "cnn", *_TYPE2)),
    (None, ("vae", *_TYPE2)),
    (0.9, _TYPE2),
    (None, _TYPE2),
)


def _not_judged(results, level, names):
    """Why an observation cannot be judged on this run (settings missing, models failed), or None if it can."""
    needed = [setting_name(m, lv) for m in METHODS for lv in LEVELS if level is None or lv == level]
    missing = [n for n in needed if n not in results["settings"]]
    if missing:
        return f"it needs {', '.join(needed)}; {', '.join(missing)} did not run."
    failed = list(dict.fromkeys(f for n in needed for f in failures(results, n, names)))
    if failed:
        return (
            f"it rests on {len(failed)} model{'s' if len(failed) > 1 else ''} that failed the health check: "
            + "; ".join(failed)
        )
    return None


def observations(results):
    """Returns §5's six observations as dicts: claim, statistic (text), held (True, False, or None: not judged, with
    the reason in "not_judged", because a setting did not run or a model it rests on failed its health check)."""
    judges = (_multiple_vs_single, _type2_beats_mlp, _cnn_best, _vertical_easier, _hard_digits, _samples_threshold)
    out = []
    for judge, (level, names) in zip(judges, _RESTS_ON):
        reason = _not_judged(results, level, names)
        if reason is None:
            out.append(judge(results))
        else:
            out.append({"claim": judge.__doc__.strip(), "statistic": "", "held": None, "not_judged": reason})
    return out


def _multiple_vs_single(results):
    """Multiple and single imputation differ little: mostly around ±1σ, once 3.16σ."""
    zs = [e.multiple[e.largest_m].z_multi_single for *_, e in _type2_cells(results)]
    median = float(np.median(np.abs(zs)))
    return {
        "claim": _multiple_vs_single.__doc__,
        "statistic": f"|z_multi/single| over the 12 Type 2 cells: median {median:.2f}, "
        f"largest {max(map(abs, zs)):.2f}, "
        f"{sum(abs(z) > 2 for z in zs)} above 2; held if the median is at most 2.",
        "held": median <= 2.0,
    }


def _type2_beats_mlp(results):
    """VAE+MLP outperforms the MLP at every type and level of corruption."""
    gaps = []
    for method in METHODS:
        for level in LEVELS:
            name = setting_name(method, level)
            mlp, type2 = _classifier(results, name, "mlp").accuracy, _type2(results, name, "mlp")
            gaps += [type2.single_accuracy - mlp, type2.multiple[type2.largest_m].accuracy - mlp]
    return {
        "claim": _type2_beats_mlp.__doc__,
        "statistic": f"VAE+MLP minus MLP accuracy over 6 settings x (single, multiple): from {min(gaps):+.4f} "
        f"to {max(gaps):+.4f}; "
        f"{sum(g > 0 for g in gaps)} of 12 positive.",
        "held": all(g > 0 for g in gaps),
    }


def _cnn_best(results):
    """The CNN on a trivial (white) fill outperforms every other classifier."""
    margins = []
    for method in METHODS:
        for level in LEVELS:
            name = setting_name(method, level)
            others = [_classifier(results, name, "mlp").accuracy]
            for c in ("mlp", "cnn"):
                e = _type2(results, name, c)
                others += [e.single_accuracy, e.multiple[e.largest_m].accuracy]
            margins.append(_classifier(results, name, "cnn").accuracy - max(others))
    return {
        "claim": _cnn_best.__doc__,
        "statistic": f"CNN minus the best other classifier, per setting: {', '.join(f'{g:+.4f}' for g in margins)}.",
        "held": all(g > 0 for g in margins),
    }


def _vertical_easier(results):
    """VAE imputation works better on Vertical Lines (not at random) than on Random Pixels (at random)."""
    diffs, elbo = [], []
    for level in LEVELS:
        rp, vl = (_vae(results, setting_name(m, level)) for m in ("random-pixels", "vertical-lines"))
        elbo.append(rp.test_negative_elbo - vl.test_negative_elbo)
        for c in ("mlp", "cnn"):
            on = {m: _type2(results, setting_name(m, level), c) for m in METHODS}
            diffs += [on["vertical-lines"].single_accuracy - on["random-pixels"].single_accuracy]
    return {
        "claim": _vertical_easier.__doc__,
        "statistic": f"Vertical Lines minus Random Pixels single-imputation accuracy (VAE+MLP, VAE+CNN at 50/70/90 %): "
        f"{', '.join(f'{d:+.4f}' for d in diffs)}; the VAE's test negative ELBO is lower on Vertical Lines by "
        f"{', '.join(f'{e:+.1f}' for e in elbo)} nats.",
        "held": all(d > 0 for d in diffs),
    }


def _hard_digits(results):
    """At 90 % some digits are much harder to reconstruct or classify, and which ones depends on the corruption."""
    least = {}
    for method in METHODS:
        for c in ("mlp", "cnn"):
            least[(method, c)] = _least_classified(_type2(results, setting_name(method, 0.9), c))
    text = "; ".join(
        f"{TITLES[m]} VAE+{c.upper()}: " + ", ".join(f"digit {d} at {r:.2f}x its true count" for d, r in v)
        for (m, c), v in least.items()
    )
    lowest = min(r for v in least.values() for _, r in v)
    differ = {d for d, _ in least[("random-pixels", "mlp")]} != {d for d, _ in least[("vertical-lines", "mlp")]}
    return {
        "claim": _hard_digits.__doc__,
        "statistic": f"the two least predicted digits at 90 %, predicted count over true count: {text}. "
        f"Held if some digit is predicted under 0.8x its true count and the least predicted pair of VAE+MLP "
        f"differs between the methods.",
        "held": bool(lowest < 0.8 and differ),
    }


def _samples_threshold(results):
    """Beyond about 10 samples, more samples do not improve accuracy; only the fluctuations shrink."""
    gains = [
        (
            e.multiple[e.largest_m].accuracy - e.accuracy_curve[9],
            math.nan if e.z_multi_max_vs_10 is None else e.z_multi_max_vs_10,
        )
        for *_, e in _type2_cells(results)
        if len(e.accuracy_curve) > 10
    ]
    if not gains:
        return {
            "claim": _samples_threshold.__doc__,
            "statistic": "",
            "held": None,
            "not_judged": "it compares M = 10 with larger M; this preset's M is at most 10.",
        }
    return {
        "claim": _samples_threshold.__doc__,
        "statistic": "accuracy at the largest M minus at M = 10, over the 12 Type 2 cells: "
        f"from {min(g for g, _ in gains):+.4f} "
        f"to {max(g for g, _ in gains):+.4f}; paired z (largest M vs 10): largest |z| "
        f"{max(abs(z) for _, z in gains):.2f}. Held if every |z| is at most 2.",
        "held": all(abs(z) <= 2 for _, z in gains),
    }


# ----------------------------------------------------------------------------------------
# Figures


def _not_run(ax, title):
    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _band_scale(curve):
    """s of the 1/sqrt(m) model: accuracy(m) = accuracy(M) + noise of size s / sqrt(m), fitted on m <= M/10."""
    curve = np.asarray(curve)
    m = np.arange(1, max(2, len(curve) // 10) + 1)
    return float(np.sqrt(np.mean((np.sqrt(m) * (curve[m - 1] - curve[-1])) ** 2)))


def accuracy_figure(results, method, classifier, number, path):
    """Figures 10, 11, 14, 15: accuracy against the number of samples M, one panel per level."""
    fig, axes = plt.subplots(3, 1, figsize=(7, 9.5))
    for ax, level in zip(axes, LEVELS):
        if setting_name(method, level) not in results["settings"]:
            _not_run(ax, f"{TITLES[method]} {level:.0%}")
            continue
        e = _type2(results, setting_name(method, level), classifier)
        curve = np.asarray(e.accuracy_curve)
        m = np.arange(1, len(curve) + 1)
        scale = _band_scale(curve)
        ax.fill_between(
            m,
            curve[-1] - scale / np.sqrt(m),
            curve[-1] + scale / np.sqrt(m),
            color="C0",
            alpha=0.15,
            label=f"accuracy(M) ± {scale:.3f}/√m",
        )
        ax.plot(m, curve, color="C0", lw=1.2, label=f"multisample VAE+{classifier.upper()}")
        ax.axhline(e.single_accuracy, color="C1", ls="--", label=f"single (z = μ) VAE+{classifier.upper()}")
        direct = _classifier(results, setting_name(method, level), classifier).accuracy
        if classifier == "mlp":
            ax.axhline(direct, color="C2", ls=":", label="MLP, no VAE")
        ax.set_xscale("log")
        ax.set_xlabel("number of samples m")
        ax.set_ylabel("test accuracy")
        extra = f"; direct CNN {direct:.4f} (omitted, as in the thesis)" if classifier == "cnn" else ""
        ax.set_title(f"{TITLES[method]} {level:.0%}{extra}", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Figure {number}: accuracy against the number of samples", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def distribution_figure(results, method, number, path):
    """Figures 12 and 16: predicted digit counts of VAE+MLP and VAE+CNN against the truth, per level."""
    fig, axes = plt.subplots(3, 2, figsize=(10, 9), sharey=True)
    for r, level in enumerate(LEVELS):
        for c, classifier in enumerate(("mlp", "cnn")):
            ax = axes[r][c]
            if setting_name(method, level) not in results["settings"]:
                _not_run(ax, f"{TITLES[method]} {level:.0%}, VAE+{classifier.upper()}")
                continue
            e = _type2(results, setting_name(method, level), classifier)
            m = e.largest_m
            digits = np.arange(len(e.true_class_distribution))
            ax.bar(digits - 0.2, e.true_class_distribution, width=0.4, color="C0", label="true")
            ax.bar(
                digits + 0.2,
                e.multiple[m].class_distribution,
                width=0.4,
                color="C1",
                label=f"VAE+{classifier.upper()}, M = {m}",
            )
            ax.set_xticks(digits)
            ax.set_xlabel("digit")
            ax.set_ylabel("test images")
            ax.set_title(f"{TITLES[method]} {level:.0%}, VAE+{classifier.upper()}", fontsize=10)
            ax.legend(fontsize=8)
    fig.suptitle(f"Figure {number}: predicted digit distributions against the truth", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def hard_image_figure(figure8, path):
    """Figure 8: a hard image, its Random Pixels 50 % corruption and 16 imputations with the digit each is
    classified as."""
    images = figure8["imputations"]
    fig, axes = plt.subplots(5, 4, figsize=(6.4, 8.4))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, image, title in (
        (axes[0][0], figure8["clean"], f"original ({figure8['label']})"),
        (axes[0][1], figure8["corrupted"], "Random Pixels 50 %"),
    ):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9)
    for ax in axes[0][2:]:
        ax.axis("off")
    for k, (ax, image) in enumerate(zip(axes[1:].flat, images)):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"classified {figure8['predicted'][k]}", fontsize=8)
    fig.suptitle(f"Figure 8: test image {figure8['index']} and 16 imputations", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def draw_figures(results, directory):
    """Writes Figures 4 and 8-16 into `directory`; returns {number: file name}."""
    directory.mkdir(parents=True, exist_ok=True)
    ex = results["figures"]["examples"]
    files = {}
    at_50 = [(f"{TITLES[m]} 50 %", ex[setting_name(m, 0.5)]) for m in METHODS if setting_name(m, 0.5) in ex]
    if at_50:
        files[4] = "figure4.png"
        image_grid(
            [[ex["clean"]] + [image for _, image in at_50]], ["original"] + [t for t, _ in at_50], directory / files[4]
        )
    for number, method in ((9, "random-pixels"), (13, "vertical-lines")):
        levels = [lv for lv in LEVELS if setting_name(method, lv) in ex]
        if levels:
            files[number] = f"figure{number}.png"
            image_grid(
                [[ex["clean"]] + [ex[setting_name(method, lv)] for lv in levels]],
                ["original"] + [f"{lv:.0%}" for lv in levels],
                directory / files[number],
            )
    if "figure8" in results["figures"]:
        files[8] = "figure8.png"
        hard_image_figure(results["figures"]["figure8"], directory / files[8])
    for _, method, classifier, number in TYPE2_TABLES:
        files[number] = f"figure{number}.png"
        accuracy_figure(results, method, classifier, number, directory / files[number])
    for number, method in ((12, "random-pixels"), (16, "vertical-lines")):
        files[number] = f"figure{number}.png"
        distribution_figure(results, method, number, directory / files[number])
    return dict(sorted(files.items()))


# ----------------------------------------------------------------------------------------
# The report


def _selection_rows(results):
    header = ["setting", "model", "trials: complete / pruned / failed / lost", "best validation score", "best epoch",
              "best configuration", "health", "seconds"]  # fmt: skip
    rows = []
    for setting in results["settings"]:
        for name in THESIS_RESULTS:
            if name.startswith("clean") and setting != results["settings"][0]:
                continue
            s = results[setting][name]["search"]
            config = ", ".join(
                f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in s["best_config"].items()
            )
            outcomes = [trial_outcome(t["state"], t.get("failure"), t.get("interrupted")) for t in s["trials"]]
            counts = " / ".join(str(outcomes.count(o)) for o in ("complete", "pruned", "failed", "lost"))
            health = s.get("health")
            verdict = (
                "not checked" if health is None else "passed" if health["ok"] else f"{FAILED_MARK} {health['reason']}"
            )
            where = "clean images" if name.startswith("clean") else setting
            rows.append([where, name.removeprefix("clean-"), counts, f"{s['best_value']:.4f}", s["best_epoch"], config,
                         verdict, f"{s['seconds']:.0f}"])  # fmt: skip
    return markdown.table(header, rows)


def _failed_models(results, setting_names, names):
    """Markdown lines naming the failed models behind a table's marked cells."""
    ran = [n for n in setting_names if n in results["settings"]]
    failed = list(dict.fromkeys(f for n in ran for f in failures(results, n, names)))
    if not failed:
        return []
    return (
        [
            f"{FAILED_MARK} marks a cell resting on a model that failed its health check on validation images, so the "
            f"cell is a failed training, not a finding:\n"
        ]
        + [f"- {f}" for f in failed]
        + [""]
    )


def _figure_failures(results, number):
    """The failed models a figure shows (Figures 4, 9 and 13 show images only)."""
    rests = {
        8: ("random-pixels", (0.5,), ["vae+mlp"]),
        12: ("random-pixels", LEVELS, list(_TYPE2)),
        16: ("vertical-lines", LEVELS, list(_TYPE2)),
    }
    rests.update({n: (method, LEVELS, [c, f"vae+{c}"]) for _, method, c, n in TYPE2_TABLES})
    if number not in rests:
        return []
    method, levels, names = rests[number]
    settings = [setting_name(method, lv) for lv in levels if setting_name(method, lv) in results["settings"]]
    return list(dict.fromkeys(f for n in settings for f in failures(results, n, names)))


def _wall_time_line(wall, invocations):
    """The study's wall time: from its clock records where it has them, else from its finished invocations."""
    if wall["invocations"] == 0:
        runs = "; ".join(
            f"{i['seconds'] / 60:.1f} min running {i['units_run']} units and reusing {i['units_reused']}"
            for i in invocations
        )
        return f"Wall time per invocation: {runs or 'not recorded'}"
    hours, minutes = divmod(round(wall["seconds"] / 60), 60)
    n = wall["invocations"]
    line = f"Wall time: {hours} h {minutes:02d} min, in {n} invocation{'s' if n > 1 else ''}"
    if wall["workers"] > 1:
        line += f" by up to {wall['workers']} workers at once (counted once while they overlap)"
    if wall["stopped"] and n == 1:
        line += "; it has not run to its end (stopped, or still running)"
    elif wall["stopped"]:
        line += (
            f"; {wall['stopped']} of them did not run to their end (stopped, or still running), and what a stopped "
            f"one had in progress ran again (counted)"
        )
    return line


def build_report(run_dir):
    """Writes RUN_DIR/report/ (Markdown, figures, CSV, JSON) from the run's results; returns report.md's path."""
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    out = run_dir / "report"
    study = results["study"]
    preset = current_identity(study["identity"])["preset"]
    figures = draw_figures(results, out / "figures")
    m_mlp, m_cnn = preset["imputations"]["mlp"], preset["imputations"]["cnn"]

    cells, md = [], []
    md.append(f"# mivae reproduce: preset `{preset['name']}`\n")
    md.append(
        f"The study of §4 of Zethraeus (2019), re-run by `mivae reproduce --preset {preset['name']}` "
        f"(seed {study['identity']['seed']}), started {study.get('started', '?')}, "
        f"finished {study.get('finished', '?')}."
    )
    machine = study.get("machine", {})
    retrained = (
        "the winner retrained on train + validation" if preset["retrain"] else "the winning trial kept, not retrained"
    )
    md.append(
        f"Preset: {preset['about']}. Dataset `{preset['dataset']}`; trials per search {preset['trials']}; "
        f"MLP layer counts {preset['mlp_layers']}; most epochs {preset['epochs']}; patience {preset['patience']}; "
        f"batch size {preset['batch_size']}; {retrained}."
    )
    wall = _wall_time_line(results["wall"], study.get("invocations", []))
    if results["wall"]["invocations"] and not study.get("clocked"):
        wall += " (the study began before mivae recorded its invocations' times: the earliest ones are not counted)"
    threads = " or ".join(map(str, results["wall"]["threads"])) or machine.get("threads", "?")
    md.append(
        f"{wall}; on {threads} CPU threads per worker in {machine.get('precision', '?')} "
        f"(torch {machine.get('torch', '?')})."
    )
    ran = results["settings"]
    md.append(
        f"Settings that ran: {', '.join(ran)}"
        + ("" if len(ran) == len(METHODS) * len(LEVELS) else "; the others read *not run*")
        + ".\n"
    )
    md.append(
        "Every cell reads **ours (thesis)**. Accuracies are on the whole test set, identical for every model of a "
        "setting. z_multi/single is the paired test of §3.6 (multiple with the largest M against single imputation).\n"
    )

    for table, method, classifier, _ in TYPE2_TABLES:
        m = m_mlp if classifier == "mlp" else m_cnn
        name = classifier.upper()
        header = ["cl", name, f"VAE+{name} single", f"VAE+{name} M = {m} (thesis 3000)", "z_multi/single"]
        rows = type2_table(results, table, method, classifier)
        md.append(f"## Table {table}: {TITLES[method]}, {name} and VAE+{name}\n")
        md.append(_markdown_table(header, rows, (4, 4, 4, 2)) + "\n")
        md += _failed_models(results, [setting_name(method, lv) for lv in LEVELS], [classifier, f"vae+{classifier}"])
        cells += [(table, level, h, o, t, f) for level, row in rows for h, (o, t, f) in zip(header[1:], row)]

    md.append("## Table 3: negative ELBO against VAE+MLP accuracy, Random Pixels 70 %\n")
    if "table3" in results and "random-pixels-0.7" in results["settings"]:
        rows = table3(results)
        md.append(_markdown_table(["VAE", "negative ELBO (nats)", "VAE+MLP accuracy (single)"], rows, (1, 4)) + "\n")
        md.append(
            "The selected VAE, and two weaker ones trained for one epoch ("
            + "; ".join(
                f"{r['vae']}: hidden {r['config']['hidden']}, latent {r['config']['latent']}"
                for r in results["table3"][1:]
            )
            + "), each with the selected VAE+MLP configuration trained on its imputations.\n"
        )
        unhealthy = [
            f"- the {r['vae']} VAE's VAE+MLP: {r['health']['reason']}"
            for r in results["table3"][1:]
            if r.get("health") and not r["health"]["ok"]
        ]
        unhealthy += [f"- selected row: {f}" for f in failures(results, "random-pixels-0.7", ["vae+mlp"])]
        if unhealthy:
            md += [f"{FAILED_MARK} Models of this table that failed their health check:\n", *unhealthy, ""]
        cells += [
            (3, label, h, o, t, f) for label, row in rows for h, (o, t, f) in zip(("negative ELBO", "accuracy"), row)
        ]
    else:
        md.append("Not run: Table 3 needs the setting rp70 (Random Pixels 70 %).\n")

    for table, method in CLEAN_TABLES:
        header = ["cl", "MLP", "MLP on one VAE imputation", "CNN", "CNN on one VAE imputation"]
        rows = clean_table(results, table, method)
        md.append(f"## Table {table}: classifiers trained on clean images, {TITLES[method]}\n")
        md.append(_markdown_table(header, rows, (4, 4, 4, 4)) + "\n")
        md += _failed_models(results, [setting_name(method, lv) for lv in LEVELS], ["vae", "clean-mlp", "clean-cnn"])
        md.append(
            "The direct columns test classifiers trained on clean images on corrupted ones; there a collapse is "
            "the finding, not a failed training.\n"
        )
        cells += [(table, level, h, o, t, f) for level, row in rows for h, (o, t, f) in zip(header[1:], row)]

    md.append("## Figures\n")
    captions = {
        4: "an image, Random Pixels 50 % and Vertical Lines 50 %",
        8: "a hard image and 16 imputations",
        9: "Random Pixels 50/70/90 %",
        13: "Vertical Lines 50/70/90 %",
        10: "Random Pixels, MLP and VAE+MLP against M",
        11: "Random Pixels, VAE+CNN against M",
        14: "Vertical Lines, MLP and VAE+MLP against M",
        15: "Vertical Lines, VAE+CNN against M",
        12: "Random Pixels, predicted digit distributions",
        16: "Vertical Lines, predicted digit distributions",
    }
    for number, file in figures.items():
        failed = _figure_failures(results, number)
        warning = f" {FAILED_MARK} It shows models that failed their health check: {'; '.join(failed)}." * bool(failed)
        md.append(f"**Figure {number}**: {captions[number]}.{warning}\n\n![Figure {number}](figures/{file})\n")
    md.append(
        "The shaded band of Figures 10, 11, 14 and 15 is accuracy(M) ± s/√m, with s fitted to the curve for m ≤ M/10: "
        "where the curve stays inside it, its fluctuations shrink as 1/√m.\n"
    )

    obs = observations(results)
    md.append("## The six observations of §5, checked\n")
    for i, o in enumerate(obs, 1):
        if o["held"] is None:
            md.append(f"{i}. **Not judged.** {o['claim']} Not judged on this run: {o['not_judged']}")
        else:
            md.append(f"{i}. **{'Held' if o['held'] else 'Did not hold'}.** {o['claim']} {o['statistic']}")
    thesis_cells = {
        (method, level, classifier): THESIS[table][level][column]
        for table, method in CLEAN_TABLES
        for level in LEVELS
        for classifier, column in (("mlp", 1), ("cnn", 3))
    }
    md.append("")
    if len(results["beyond"]) == len(METHODS) * len(LEVELS):
        beyond_md, beyond = beyond_section(results, thesis_cells)
        md += beyond_md
    else:
        beyond = None
        md.append("## Beyond the thesis\n")
        md.append(
            f"Not run for every setting (ran for: {', '.join(results['beyond']) or 'none'}); this section needs "
            "all six "
            f"(`mivae reproduce` without --thesis-only or --settings)."
        )
    md.append("\n## Model selection\n")
    md.append(
        "Validation score: accuracy for classifiers, negative ELBO for VAEs. Selection used validation data only. A "
        "failed trial's model failed its health check; a lost trial was stopped before its end (a kill, Ctrl-C or "
        "the end of a session), and the study ran its slot again, from its checkpoint.\n"
    )
    md.append(_selection_rows(results) + "\n")

    out.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["table", "row", "column", "ours", "thesis", "failed_model"])
    writer.writerows(cells)
    with atomic_path(out / "results.csv") as tmp:
        tmp.write_text(text.getvalue())
    write_json(
        out / "results.json",
        {
            "study": study,
            "figures": figures,
            "observations": obs,
            "beyond": beyond,
            "settings": results["settings"],
            "cells": [dict(zip(("table", "row", "column", "ours", "thesis", "failed_model"), c)) for c in cells],
        },
    )
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(md) + "\n")
    return out / "report.md"
