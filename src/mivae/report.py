"""The report of a reproduce run: every table and figure of thesis §4 beside the thesis' own numbers.

Built from RUN_DIR/results/ alone (never trains, never reads the dataset):

    RUN_DIR/report/report.md       tables in the thesis' layout, "ours (thesis)", figures, §5's observations,
                                   and the "Beyond the thesis" section (mivae.report_beyond)
    RUN_DIR/report/figures/*.png   Figures 4, 8-16
    RUN_DIR/report/results.csv     every table cell: table, row, column, ours, thesis
    RUN_DIR/report/results.json    the same cells, the observations and the run's settings
"""

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from mivae.artifacts import atomic_path
from mivae.errors import MivaeError
from mivae.experiments import LEVELS, METHODS, setting_name
from mivae.figures import image_grid, plt, save_figure
from mivae.report_beyond import RESULTS as BEYOND_RESULTS
from mivae.report_beyond import section as beyond_section
from mivae.runs import write_json

# The thesis' Tables 1-7 (§4), cell by cell.
THESIS = {
    1: {0.5: (0.8411, 0.8599, 0.859, -1.08), 0.7: (0.7116, 0.7134, 0.7148, 1.32), 0.9: (0.2948, 0.3435, 0.3430, -0.36)},
    2: {0.5: (0.9766, 0.8657, 0.8665, 0.96), 0.7: (0.9336, 0.7257, 0.7273, 1.47), 0.9: (0.7152, 0.3509, 0.3498, -0.83)},
    4: {0.5: (0.8748, 0.9229, 0.9232, 0.52), 0.7: (0.7682, 0.8303, 0.8298, -0.65), 0.9: (0.4706, 0.4903, 0.489, -0.63)},
    5: {0.5: (0.9755, 0.9314, 0.9337, 3.16), 0.7: (0.9382, 0.8415, 0.8437, 2.18), 0.9: (0.6638, 0.502, 0.5037, 1.13)},
    3: ((150.7, 0.7129), (174.3, 0.4629), (205.8, 0.1134)),
    6: {0.5: (0.2919, 0.8394, 0.1695, 0.8423), 0.7: (0.1878, 0.6882, 0.1001, 0.6962), 0.9: (0.1377, 0.2853, 0.0905, 0.2775)},
    7: {0.5: (0.2823, 0.9192, 0.2624, 0.9182), 0.7: (0.1767, 0.8159, 0.1876, 0.8209), 0.9: (0.1270, 0.4158, 0.1385, 0.4416)},
}
# (table, method, classifier) of Tables 1, 2, 4, 5, and the figures of their accuracy curves.
TYPE2_TABLES = ((1, "random-pixels", "mlp", 10), (2, "random-pixels", "cnn", 11),
                (4, "vertical-lines", "mlp", 14), (5, "vertical-lines", "cnn", 15))
CLEAN_TABLES = ((6, "random-pixels"), (7, "vertical-lines"))
TITLES = {"random-pixels": "Random Pixels", "vertical-lines": "Vertical Lines"}


def load_results(run_dir):
    """Returns every result of a reproduce run as {group: {name: dict}}; raises MivaeError if incomplete."""
    results_dir = Path(run_dir) / "results"
    if not (Path(run_dir) / "study.json").exists():
        raise MivaeError(f"{run_dir} is not a reproduce run directory: study.json is missing.")
    results = {}
    needed = [(setting_name(m, lv), n) for m in METHODS for lv in LEVELS
              for n in ("vae", "mlp", "cnn", "vae+mlp", "vae+cnn", "clean-mlp", "clean-cnn", *BEYOND_RESULTS)]
    needed += [("figures", "examples"), ("figures", "figure8")]
    for group, name in needed:
        path = results_dir / group / f"{name}.json"
        try:
            results.setdefault(group, {})[name] = json.loads(path.read_text())
        except FileNotFoundError:
            raise MivaeError(f"{run_dir} is not finished: {path} is missing; run 'mivae reproduce' again to complete it.") from None
        except (OSError, json.JSONDecodeError) as e:
            raise MivaeError(f"{path} is damaged and cannot be read ({e}).") from None
    try:
        results["table3"] = json.loads((results_dir / "table3.json").read_text())["rows"]
    except (OSError, json.JSONDecodeError, KeyError):
        raise MivaeError(f"{run_dir} is not finished: results/table3.json is missing or damaged.") from None
    results["study"] = json.loads((Path(run_dir) / "study.json").read_text())
    return results


# ----------------------------------------------------------------------------------------
# Tables: rows of (label, [(ours, thesis), ...])


def _largest_m(evaluation):
    return str(max(int(m) for m in evaluation["multiple"]))


def type2_table(results, table, method, classifier):
    """Table 1, 2, 4 or 5: Type 1 accuracy, Type 2 single and multiple, z_multi/single, per level."""
    rows = []
    for level in LEVELS:
        setting = results[setting_name(method, level)]
        direct, type2 = setting[classifier], setting[f"vae+{classifier}"]
        m = _largest_m(type2)
        ours = (direct["accuracy"], type2["single_accuracy"], type2["multiple"][m]["accuracy"], type2["multiple"][m]["z_multi_single"])
        rows.append((level, list(zip(ours, THESIS[table][level]))))
    return rows


def clean_table(results, table, method):
    """Table 6 or 7: classifiers trained on clean images, directly and on one VAE imputation."""
    rows = []
    for level in LEVELS:
        setting = results[setting_name(method, level)]
        ours = []
        for kind in ("clean-mlp", "clean-cnn"):
            ours += [setting[kind]["accuracy"], setting[kind]["accuracy_on_one_vae_imputation"]]
        rows.append((level, list(zip(ours, THESIS[table][level]))))
    return rows


def table3(results):
    """Table 3: negative ELBO and VAE+MLP accuracy of three VAEs at Random Pixels 70 %."""
    return [(row["vae"], list(zip((row["test_negative_elbo"], row["test_accuracy"]), thesis)))
            for row, thesis in zip(results["table3"], THESIS[3])]


def _cell(ours, thesis, digits=4):
    return f"{ours:.{digits}f} ({thesis:.{digits}f})"


def _markdown_table(header, rows, formats):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, cells in rows:
        lines.append("| " + " | ".join([str(label)] + [_cell(o, t, d) for (o, t), d in zip(cells, formats)]) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# §5's six observations, each with the statistic of this run


def _type2_cells(results):
    for method in METHODS:
        for level in LEVELS:
            for classifier in ("mlp", "cnn"):
                yield method, level, classifier, results[setting_name(method, level)][f"vae+{classifier}"]


def _least_classified(evaluation, m):
    true = np.array(evaluation["true_class_distribution"], dtype=float)
    ratio = np.array(evaluation["multiple"][m]["class_distribution"]) / np.maximum(true, 1)
    order = np.argsort(ratio)
    return [(int(d), float(ratio[d])) for d in order[:2]]


def observations(results):
    """Returns §5's six observations as dicts: claim, statistic (text), held (bool)."""
    out = []
    cells = list(_type2_cells(results))
    zs = [e["multiple"][_largest_m(e)]["z_multi_single"] for *_, e in cells]
    median = float(np.median(np.abs(zs)))
    out.append({"claim": "Multiple and single imputation differ little: mostly around ±1σ, once 3.16σ.",
                "statistic": f"|z_multi/single| over the 12 Type 2 cells: median {median:.2f}, largest {max(map(abs, zs)):.2f}, "
                             f"{sum(abs(z) > 2 for z in zs)} above 2; held if the median is at most 2.",
                "held": median <= 2.0})

    gaps = []
    for method in METHODS:
        for level in LEVELS:
            s = results[setting_name(method, level)]
            m = _largest_m(s["vae+mlp"])
            gaps += [s["vae+mlp"]["single_accuracy"] - s["mlp"]["accuracy"], s["vae+mlp"]["multiple"][m]["accuracy"] - s["mlp"]["accuracy"]]
    out.append({"claim": "VAE+MLP outperforms the MLP at every type and level of corruption.",
                "statistic": f"VAE+MLP minus MLP accuracy over 6 settings x (single, multiple): from {min(gaps):+.4f} to {max(gaps):+.4f}; "
                             f"{sum(g > 0 for g in gaps)} of 12 positive.",
                "held": all(g > 0 for g in gaps)})

    margins = []
    for method in METHODS:
        for level in LEVELS:
            s = results[setting_name(method, level)]
            others = [s["mlp"]["accuracy"]]
            for c in ("mlp", "cnn"):
                e = s[f"vae+{c}"]
                others += [e["single_accuracy"], e["multiple"][_largest_m(e)]["accuracy"]]
            margins.append(s["cnn"]["accuracy"] - max(others))
    out.append({"claim": "The CNN on a trivial (white) fill outperforms every other classifier.",
                "statistic": f"CNN minus the best other classifier, per setting: {', '.join(f'{g:+.4f}' for g in margins)}.",
                "held": all(g > 0 for g in margins)})

    diffs, elbo = [], []
    for level in LEVELS:
        rp, vl = results[setting_name("random-pixels", level)], results[setting_name("vertical-lines", level)]
        elbo.append(rp["vae"]["test_negative_elbo"] - vl["vae"]["test_negative_elbo"])
        for c in ("mlp", "cnn"):
            diffs += [vl[f"vae+{c}"]["single_accuracy"] - rp[f"vae+{c}"]["single_accuracy"]]
    out.append({"claim": "VAE imputation works better on Vertical Lines (not at random) than on Random Pixels (at random).",
                "statistic": f"Vertical Lines minus Random Pixels single-imputation accuracy (VAE+MLP, VAE+CNN at 50/70/90 %): "
                             f"{', '.join(f'{d:+.4f}' for d in diffs)}; the VAE's test negative ELBO is lower on Vertical Lines by "
                             f"{', '.join(f'{e:+.1f}' for e in elbo)} nats.",
                "held": all(d > 0 for d in diffs)})

    least = {}
    for method in METHODS:
        for c in ("mlp", "cnn"):
            e = results[setting_name(method, 0.9)][f"vae+{c}"]
            least[(method, c)] = _least_classified(e, _largest_m(e))
    text = "; ".join(f"{TITLES[m]} VAE+{c.upper()}: " + ", ".join(f"digit {d} at {r:.2f}x its true count" for d, r in v)
                     for (m, c), v in least.items())
    lowest = min(r for v in least.values() for _, r in v)
    differ = {d for d, _ in least[("random-pixels", "mlp")]} != {d for d, _ in least[("vertical-lines", "mlp")]}
    out.append({"claim": "At 90 % some digits are much harder to reconstruct or classify, and which ones depends on the corruption.",
                "statistic": f"the two least predicted digits at 90 %, predicted count over true count: {text}. "
                             f"Held if some digit is predicted under 0.8x its true count and the least predicted pair of VAE+MLP "
                             f"differs between the methods.",
                "held": bool(lowest < 0.8 and differ)})

    gains = [(e["multiple"][_largest_m(e)]["accuracy"] - e["accuracy_curve"][9], e.get("z_multi_max_vs_10", math.nan))
             for *_, e in cells if len(e["accuracy_curve"]) > 10]
    out.append({"claim": "Beyond about 10 samples, more samples do not improve accuracy; only the fluctuations shrink.",
                "statistic": f"accuracy at the largest M minus at M = 10, over the 12 Type 2 cells: from {min(g for g, _ in gains):+.4f} "
                             f"to {max(g for g, _ in gains):+.4f}; paired z (largest M vs 10): largest |z| "
                             f"{max(abs(z) for _, z in gains):.2f}. Held if every |z| is at most 2.",
                "held": all(abs(z) <= 2 for _, z in gains)})
    return out


# ----------------------------------------------------------------------------------------
# Figures


def _band_scale(curve):
    """s of the 1/sqrt(m) model: accuracy(m) = accuracy(M) + noise of size s / sqrt(m), fitted on m <= M/10."""
    curve = np.asarray(curve)
    m = np.arange(1, max(2, len(curve) // 10) + 1)
    return float(np.sqrt(np.mean((np.sqrt(m) * (curve[m - 1] - curve[-1])) ** 2)))


def accuracy_figure(results, method, classifier, number, path):
    """Figures 10, 11, 14, 15: accuracy against the number of samples M, one panel per level."""
    fig, axes = plt.subplots(3, 1, figsize=(7, 9.5))
    for ax, level in zip(axes, LEVELS):
        s = results[setting_name(method, level)]
        e = s[f"vae+{classifier}"]
        curve = np.asarray(e["accuracy_curve"])
        m = np.arange(1, len(curve) + 1)
        scale = _band_scale(curve)
        ax.fill_between(m, curve[-1] - scale / np.sqrt(m), curve[-1] + scale / np.sqrt(m), color="C0", alpha=0.15,
                        label=f"accuracy(M) ± {scale:.3f}/√m")
        ax.plot(m, curve, color="C0", lw=1.2, label=f"multisample VAE+{classifier.upper()}")
        ax.axhline(e["single_accuracy"], color="C1", ls="--", label=f"single (z = μ) VAE+{classifier.upper()}")
        direct = s[classifier]["accuracy"]
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
            e = results[setting_name(method, level)][f"vae+{classifier}"]
            m = _largest_m(e)
            digits = np.arange(len(e["true_class_distribution"]))
            ax = axes[r][c]
            ax.bar(digits - 0.2, e["true_class_distribution"], width=0.4, color="C0", label="true")
            ax.bar(digits + 0.2, e["multiple"][m]["class_distribution"], width=0.4, color="C1", label=f"VAE+{classifier.upper()}, M = {m}")
            ax.set_xticks(digits)
            ax.set_xlabel("digit")
            ax.set_ylabel("test images")
            ax.set_title(f"{TITLES[method]} {level:.0%}, VAE+{classifier.upper()}", fontsize=10)
            ax.legend(fontsize=8)
    fig.suptitle(f"Figure {number}: predicted digit distributions against the truth", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def hard_image_figure(figure8, path):
    """Figure 8: a hard image, its Random Pixels 50 % corruption and 16 imputations with the digit each is classified as."""
    images = figure8["imputations"]
    fig, axes = plt.subplots(5, 4, figsize=(6.4, 8.4))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, image, title in ((axes[0][0], figure8["clean"], f"original ({figure8['label']})"),
                             (axes[0][1], figure8["corrupted"], "Random Pixels 50 %")):
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
    files = {4: "figure4.png", 8: "figure8.png", 9: "figure9.png", 13: "figure13.png"}
    image_grid([[ex["clean"], ex["random-pixels-0.5"], ex["vertical-lines-0.5"]]],
               ["original", "Random Pixels 50 %", "Vertical Lines 50 %"], directory / files[4])
    for number, method in ((9, "random-pixels"), (13, "vertical-lines")):
        image_grid([[ex["clean"]] + [ex[setting_name(method, lv)] for lv in LEVELS]],
                   ["original"] + [f"{lv:.0%}" for lv in LEVELS], directory / files[number])
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
    lines = ["| setting | model | trials | best validation score | best epoch | best configuration | seconds |", "|---|---|---|---|---|---|---|"]
    for method in METHODS:
        for level in LEVELS:
            setting = setting_name(method, level)
            for name in ("vae", "mlp", "cnn", "vae+mlp", "vae+cnn", "clean-mlp", "clean-cnn"):
                if name.startswith("clean") and setting != setting_name(METHODS[0], LEVELS[0]):
                    continue
                s = results[setting][name]["search"]
                config = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in s["best_config"].items())
                lines.append(f"| {'clean images' if name.startswith('clean') else setting} | {name.removeprefix('clean-')} | "
                             f"{len(s['trials'])} | {s['best_value']:.4f} | {s['best_epoch']} | {config} | "
                             f"{s['seconds']:.0f} |")
    return "\n".join(lines)


def build_report(run_dir):
    """Writes RUN_DIR/report/ (Markdown, figures, CSV, JSON) from the run's results; returns report.md's path."""
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    out = run_dir / "report"
    study = results["study"]
    preset = study["identity"]["preset"]
    figures = draw_figures(results, out / "figures")
    m_mlp, m_cnn = preset["samples"]["mlp"], preset["samples"]["cnn"]

    cells, md = [], []
    md.append(f"# mivae reproduce: preset `{preset['name']}`\n")
    md.append(f"The study of §4 of Zethraeus (2019), re-run by `mivae reproduce --preset {preset['name']}` "
              f"(seed {study['identity']['seed']}), started {study.get('started', '?')}, finished {study.get('finished', '?')}.")
    machine = study.get("machine", {})
    md.append(f"Preset: {preset['about']}. Dataset `{preset['dataset']}`; trials per search {preset['trials']}; MLP layer counts "
              f"{preset['mlp_layers']}; most epochs {preset['epochs']}; patience {preset['patience']}; batch size "
              f"{preset['batch_size']}; {'the winner retrained on train + validation' if preset['retrain'] else 'the winning trial kept, not retrained'}.")
    runs = "; ".join(f"{i['seconds'] / 60:.1f} min running {i['units_run']} units and reusing {i['units_reused']}"
                     for i in study.get("invocations", []))
    md.append(f"Wall time per invocation: {runs or 'not recorded'}; on {machine.get('threads', '?')} CPU threads in "
              f"{machine.get('precision', '?')} (torch {machine.get('torch', '?')}).\n")
    md.append("Every cell reads **ours (thesis)**. Accuracies are on the whole test set, identical for every model of a "
              "setting. z_multi/single is the paired test of §3.6 (multiple with the largest M against single imputation).\n")

    for table, method, classifier, _ in TYPE2_TABLES:
        m = m_mlp if classifier == "mlp" else m_cnn
        name = classifier.upper()
        header = ["cl", name, f"VAE+{name} single", f"VAE+{name} M = {m} (thesis 3000)", "z_multi/single"]
        rows = type2_table(results, table, method, classifier)
        md.append(f"## Table {table}: {TITLES[method]}, {name} and VAE+{name}\n")
        md.append(_markdown_table(header, rows, (4, 4, 4, 2)) + "\n")
        cells += [(table, level, h, o, t) for level, row in rows for h, (o, t) in zip(header[1:], row)]

    md.append("## Table 3: negative ELBO against VAE+MLP accuracy, Random Pixels 70 %\n")
    rows = table3(results)
    md.append(_markdown_table(["VAE", "negative ELBO (nats)", "VAE+MLP accuracy (single)"], rows, (1, 4)) + "\n")
    md.append("The selected VAE, and two weaker ones trained for one epoch (" + "; ".join(
        f"{r['vae']}: hidden {r['config']['hidden']}, latent {r['config']['latent']}" for r in results["table3"][1:])
        + "), each with the selected VAE+MLP configuration trained on its imputations.\n")
    cells += [(3, label, h, o, t) for label, row in rows for h, (o, t) in zip(("negative ELBO", "accuracy"), row)]

    for table, method in CLEAN_TABLES:
        header = ["cl", "MLP", "MLP on one VAE imputation", "CNN", "CNN on one VAE imputation"]
        rows = clean_table(results, table, method)
        md.append(f"## Table {table}: classifiers trained on clean images, {TITLES[method]}\n")
        md.append(_markdown_table(header, rows, (4, 4, 4, 4)) + "\n")
        cells += [(table, level, h, o, t) for level, row in rows for h, (o, t) in zip(header[1:], row)]

    md.append("## Figures\n")
    captions = {4: "an image, Random Pixels 50 % and Vertical Lines 50 %", 8: "a hard image and 16 imputations",
                9: "Random Pixels 50/70/90 %", 13: "Vertical Lines 50/70/90 %",
                10: "Random Pixels, MLP and VAE+MLP against M", 11: "Random Pixels, VAE+CNN against M",
                14: "Vertical Lines, MLP and VAE+MLP against M", 15: "Vertical Lines, VAE+CNN against M",
                12: "Random Pixels, predicted digit distributions", 16: "Vertical Lines, predicted digit distributions"}
    for number, file in figures.items():
        md.append(f"**Figure {number}**: {captions[number]}.\n\n![Figure {number}](figures/{file})\n")
    md.append("The shaded band of Figures 10, 11, 14 and 15 is accuracy(M) ± s/√m, with s fitted to the curve for m ≤ M/10: "
              "where the curve stays inside it, its fluctuations shrink as 1/√m.\n")

    obs = observations(results)
    md.append("## The six observations of §5, checked\n")
    for i, o in enumerate(obs, 1):
        md.append(f"{i}. **{'Held' if o['held'] else 'Did not hold'}.** {o['claim']} {o['statistic']}")
    thesis_cells = {(method, level, classifier): THESIS[table][level][column] for table, method in CLEAN_TABLES
                    for level in LEVELS for classifier, column in (("mlp", 1), ("cnn", 3))}
    beyond_md, beyond = beyond_section(results, thesis_cells)
    md.append("")
    md += beyond_md
    md.append("\n## Model selection\n")
    md.append("Validation score: accuracy for classifiers, negative ELBO for VAEs. Selection used validation data only.\n")
    md.append(_selection_rows(results) + "\n")

    out.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["table", "row", "column", "ours", "thesis"])
    writer.writerows(cells)
    with atomic_path(out / "results.csv") as tmp:
        tmp.write_text(text.getvalue())
    write_json(out / "results.json", {"study": study, "figures": figures, "observations": obs, "beyond": beyond,
                                      "cells": [dict(zip(("table", "row", "column", "ours", "thesis"), c)) for c in cells]})
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(md) + "\n")
    return out / "report.md"
