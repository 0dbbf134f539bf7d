"""`mivae reproduce --preset smoke` end to end: every table and figure present and sane, caching, resume, report."""

import csv
import dataclasses
import fcntl
import json
import math
import shutil
import threading
import time

import matplotlib.image
import numpy as np
import pytest
import torch

from mivae.cli import main
from mivae.errors import MivaeError
from mivae.images.runs import load_run, write_json
from mivae.study import report, report_beyond, reproduce
from mivae.study.report import THESIS

SETTINGS = [reproduce.setting_name(m, lv) for m in reproduce.METHODS for lv in reproduce.LEVELS]


class Interrupt(BaseException):
    """Stands for Ctrl-C or a killed process in the middle of a study."""


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """A smoke study interrupted after two finished searches, then resumed to the end; its report."""
    out = tmp_path_factory.mktemp("reproduce") / "smoke"
    real_search = reproduce.search
    calls = []

    def interrupted_search(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise Interrupt
        return real_search(*args, **kwargs)

    reproduce.search = interrupted_search
    try:
        with pytest.raises(Interrupt):
            reproduce.reproduce("smoke", out, progress=False)
        finished_before = sorted(p.name for p in (out / "units").iterdir() if (p / "unit.json").exists())
        calls.clear()
        reproduce.search = lambda *a, **k: (calls.append(a[0]), real_search(*a, **k))[1]
        study = reproduce.reproduce("smoke", out, progress=False)
    finally:
        reproduce.search = real_search
    report.build_report(out)
    return {
        "out": out,
        "study": study,
        "finished_before": finished_before,
        "searches_after_resume": list(calls),
        "wall": reproduce.wall_time(out),
        "report": (out / "report" / "report.md").read_text(),
        "results": json.loads((out / "report" / "results.json").read_text()),
    }


def _cells(smoke, table):
    return [c for c in smoke["results"]["cells"] if c["table"] == table]


def test_an_interrupted_study_resumes_without_redoing_finished_units(smoke):
    assert len(smoke["finished_before"]) == 2  # the VAE and MLP searches of the first setting
    done = smoke["study"].done
    reused = [label for label, _, was_reused in done if was_reused]
    assert reused == ["vae-random-pixels-0.5", "mlp-random-pixels-0.5"]
    assert smoke["searches_after_resume"][:3] == ["vae+mlp", "cnn", "vae+cnn"]  # on from where it stopped
    # 6 settings x 5 searches + 2 clean classifiers (Table 3's four trainings are not searches)
    assert len(smoke["searches_after_resume"]) == 6 * 5 + 2 - 2


def test_tables_1_2_4_5_hold_every_cell_in_range_beside_the_thesis(smoke):
    for table in (1, 2, 4, 5):
        cells = _cells(smoke, table)
        assert len(cells) == 3 * 4
        assert [c["thesis"] for c in cells] == [v for level in reproduce.LEVELS for v in THESIS[table][level]]
        for c in cells:
            if c["column"].startswith("z"):
                assert math.isfinite(c["ours"]) and abs(c["ours"]) <= math.sqrt(359)  # |z| <= sqrt(N differing)
            else:
                assert 0.0 <= c["ours"] <= 1.0
    # The models learned at 50 % missing, from only 1,079 training images: Type 1 at least three times chance
    # (0.1); Type 2 more than 3 standard deviations of a guess on 359 images (0.016) above it.
    for table in (1, 2, 4, 5):
        row = {c["column"]: c["ours"] for c in _cells(smoke, table) if c["row"] == 0.5}
        assert row["MLP" if table in (1, 4) else "CNN"] > 0.3, row
        assert all(v > 0.15 for k, v in row.items() if k.startswith("VAE")), row


def test_every_cell_of_tables_1_2_4_5_6_7_is_the_evaluation_it_stands_for(smoke):
    def result(method, level, name):
        return json.loads((smoke["out"] / "results" / f"{method}-{level}" / f"{name}.json").read_text())

    tables = {1: ("random-pixels", "mlp"), 2: ("random-pixels", "cnn"), 4: ("vertical-lines", "mlp"),
              5: ("vertical-lines", "cnn")}  # fmt: skip
    for table, (method, classifier) in tables.items():
        for level in reproduce.LEVELS:
            cells = [c for c in _cells(smoke, table) if c["row"] == level]
            direct, type2 = result(method, level, classifier), result(method, level, f"vae+{classifier}")
            m = max(type2["multiple"], key=int)
            expected = [direct["accuracy"], type2["single_accuracy"], type2["multiple"][m]["accuracy"],
                        type2["multiple"][m]["z_multi_single"]]  # fmt: skip
            assert [c["ours"] for c in cells] == pytest.approx(expected, abs=5e-5), (table, level)
    for table, method in ((6, "random-pixels"), (7, "vertical-lines")):
        for level in reproduce.LEVELS:
            cells = [c["ours"] for c in _cells(smoke, table) if c["row"] == level]
            clean = [result(method, level, f"clean-{c}") for c in ("mlp", "cnn")]
            expected = [x for r in clean for x in (r["accuracy"], r["accuracy_on_one_vae_imputation"])]
            assert cells == pytest.approx(expected, abs=5e-5), (table, level)


def test_multiple_imputation_results_are_consistent(smoke):
    for setting in SETTINGS:
        for classifier, m in (("mlp", 300), ("cnn", 100)):
            e = json.loads((smoke["out"] / "results" / setting / f"vae+{classifier}.json").read_text())
            curve = e["accuracy_curve"]
            assert len(curve) == m and all(0 <= a <= 1 for a in curve)
            assert curve[-1] == pytest.approx(e["multiple"][str(m)]["accuracy"], abs=1e-6)
            assert sum(e["true_class_distribution"]) == e["test_images"] == 359
            assert sum(e["multiple"][str(m)]["class_distribution"]) == 359
            assert math.isfinite(e["z_multi_max_vs_10"])


def test_table_3_orders_the_vaes_by_quality(smoke):
    rows = {c["row"]: {} for c in _cells(smoke, 3)}
    for c in _cells(smoke, 3):
        rows[c["row"]][c["column"]] = c["ours"]
    assert list(rows) == ["selected", "weaker", "weakest"]
    elbo = [rows[r]["negative ELBO"] for r in rows]
    assert all(e > 0 for e in elbo) and elbo[0] < elbo[1] and elbo[0] < elbo[2]  # one epoch and a tiny latent are worse
    assert all(0 <= rows[r]["accuracy"] <= 1 for r in rows)


def test_tables_6_and_7_test_clean_trained_classifiers_on_every_corruption(smoke):
    for table in (6, 7):
        cells = _cells(smoke, table)
        assert len(cells) == 12 and all(0 <= c["ours"] <= 1 for c in cells)
    first = json.loads((smoke["out"] / "results" / "random-pixels-0.5" / "clean-mlp.json").read_text())
    other = json.loads((smoke["out"] / "results" / "vertical-lines-0.9" / "clean-mlp.json").read_text())
    assert first["data"]["method"] == "random-pixels" and other["data"] == {
        **first["data"],
        "method": "vertical-lines",
        "level": 0.9,
    }
    assert first["search"] == other["search"]  # one classifier, selected on clean validation images, tested everywhere


def test_every_figure_is_a_real_image(smoke):
    figures = smoke["results"]["figures"]
    assert sorted(map(int, figures)) == [4, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    for file in figures.values():
        image = matplotlib.image.imread(smoke["out"] / "report" / "figures" / file)
        assert image.shape[0] > 150 and image.shape[1] > 150
        assert image[..., :3].std() > 0.05  # drawn, not blank
    figure8 = json.loads((smoke["out"] / "results" / "figures" / "figure8.json").read_text())
    assert len(figure8["imputations"]) == 16 and len(figure8["predicted"]) == 16
    assert np.asarray(figure8["imputations"]).min() >= 0 and np.asarray(figure8["imputations"]).max() <= 1


def test_the_markdown_report_has_every_table_figure_and_observation(smoke):
    text = (smoke["out"] / "report" / "report.md").read_text()
    for n in (1, 2, 3, 4, 5, 6, 7):
        assert f"## Table {n}:" in text
    for n in (4, 8, 9, 10, 11, 12, 13, 14, 15, 16):
        assert f"![Figure {n}](figures/figure{n}.png)" in text
    observations = smoke["results"]["observations"]
    assert len(observations) == 6
    assert all(o["not_judged"] for o in observations if o["held"] is None)
    assert text.count("**Held.**") + text.count("**Did not hold.**") + text.count("**Not judged.**") == 6
    with open(smoke["out"] / "report" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(smoke["results"]["cells"]) == 4 * 12 + 3 * 2 + 2 * 12


def test_the_report_states_the_wall_time_of_the_stopped_and_the_finished_invocation(smoke):
    wall = smoke["wall"]  # as the fixture left it: later tests run the study again
    assert wall["invocations"] == 2 and wall["stopped"] == 1 and wall["workers"] == 1 and wall["seconds"] > 0
    assert "in 2 invocations; 1 of them did not run to their end" in smoke["report"]
    assert wall["threads"] == [torch.get_num_threads()]
    assert f"on {torch.get_num_threads()} CPU threads per worker" in smoke["report"]
    assert "the earliest ones are not counted" not in smoke["report"]


def test_the_command_reuses_a_finished_study_without_training(smoke, monkeypatch, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("a finished unit was trained again")

    monkeypatch.setattr(reproduce, "search", no_training)
    monkeypatch.setattr(reproduce, "train_model", no_training)
    monkeypatch.setattr(reproduce, "evaluate_run", no_training)
    assert main(["reproduce", "--preset", "smoke", "--out", str(smoke["out"]), "--threads", "2"]) == 0
    out = capsys.readouterr().out
    # 36 units of the thesis' study (32 searches, Table 3's 4 trainings) and 6 x 6 beyond it
    assert "72 trained units, 72 reused from earlier runs." in out
    assert f"report: {smoke['out'] / 'report' / 'report.md'}" in out
    invocations = json.loads((smoke["out"] / "study.json").read_text())["invocations"]
    assert [i["units_run"] for i in invocations] == [70, 0] and invocations[-1]["units_reused"] == 72


def _results_copy(smoke, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(smoke["out"], copy, ignore=shutil.ignore_patterns("units", "report"))
    return copy


def _healthy(copy):
    """Marks every model of the copy healthy, so that a test controls which model fails."""
    for path in (copy / "results").glob("*/*.json"):
        result = json.loads(path.read_text())
        for verdict in (result, result.get("search") or {}):  # an evaluation's, and its search's
            if "health" in verdict:
                verdict["health"] = {**verdict["health"], "ok": True}
        path.write_text(json.dumps(result))
    table3 = json.loads((copy / "results" / "table3.json").read_text())
    for row in table3["rows"][1:]:  # the selected row rests on Table 1's models
        row["health"] = {**row["health"], "ok": True}
    (copy / "results" / "table3.json").write_text(json.dumps(table3))


def test_a_model_that_failed_its_health_check_marks_its_cells_and_is_never_judged(smoke, tmp_path):
    copy = _results_copy(smoke, tmp_path)
    _healthy(copy)
    path = copy / "results" / "random-pixels-0.7" / "vae+mlp.json"
    result = json.loads(path.read_text())
    result["health"] = {
        "ok": False,
        "reason": "its predictions collapsed: class 1 makes up 100.0% of them.",
        "measured": {},
    }
    path.write_text(json.dumps(result))
    report.build_report(copy)
    results = json.loads((copy / "report" / "results.json").read_text())
    marked = {(c["table"], c["row"], c["column"]) for c in results["cells"] if c["failed_model"]}
    assert marked == {
        (1, 0.7, "VAE+MLP single"),
        (1, 0.7, "VAE+MLP M = 300 (thesis 3000)"),
        (1, 0.7, "z_multi/single"),
        (3, "selected", "accuracy"),
    }  # Table 3's selected row is the same VAE+MLP
    judged = [o["held"] for o in results["observations"]]
    # Observations 1, 2, 4 and 6 rest on the Random Pixels 70 % VAE+MLP; 3 on it too (the best other classifier);
    # 5 only on the 90 % settings.
    assert judged[0] is judged[1] is judged[2] is judged[3] is judged[5] is None and judged[4] is not None
    assert "random-pixels-0.7 VAE+MLP: its predictions collapsed" in results["observations"][0]["not_judged"]
    text = (copy / "report" / "report.md").read_text()
    assert "0.7 | " in text and "✗" in text and text.count("**Not judged.**") == 5
    assert "- random-pixels-0.7 VAE+MLP: its predictions collapsed" in text


def test_a_report_of_some_settings_shows_what_ran(smoke, tmp_path):
    copy = _results_copy(smoke, tmp_path)
    _healthy(copy)
    for setting in SETTINGS:
        if setting != "random-pixels-0.7":
            shutil.rmtree(copy / "results" / setting)
    report.build_report(copy)
    results = json.loads((copy / "report" / "results.json").read_text())
    assert results["settings"] == ["random-pixels-0.7"]
    ran = [c for c in results["cells"] if c["ours"] is not None]
    assert {c["row"] for c in ran if c["table"] in (1, 2, 4, 5, 6, 7)} == {0.7}
    assert {c["table"] for c in ran} == {1, 2, 3, 6}
    assert all(o["held"] is None and "did not run" in o["not_judged"] for o in results["observations"])
    text = (copy / "report" / "report.md").read_text()
    assert "Settings that ran: random-pixels-0.7; the others read *not run*." in text
    assert text.count("not run (") == 6 * 12 - 3 * 4 and "## Beyond the thesis" in text
    assert sorted(map(int, results["figures"])) == [4, 8, 9, 10, 11, 12, 13, 14, 15, 16]  # their data was kept


def test_settings_pick_rows_of_the_matrix_and_reuse_what_ran(smoke, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(smoke["out"], copy)
    ran = []
    monkeypatch.setattr(reproduce, "search", lambda *a, **k: ran.append(a[0]))
    assert (
        main(
            [
                "reproduce",
                "--preset",
                "smoke",
                "--settings",
                "vl90,rp70",
                "--thesis-only",
                "--out",
                str(copy),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    assert ran == []
    invocation = json.loads((copy / "study.json").read_text())["invocations"][-1]
    assert invocation["settings"] == ["random-pixels-0.7", "vertical-lines-0.9"] and invocation["beyond"] is False
    # two settings of 5 searches each, the 2 clean classifiers and Table 3's 4 trainings
    assert "16 trained units, 16 reused from earlier runs." in capsys.readouterr().out
    examples = json.loads((copy / "results" / "figures" / "examples.json").read_text())
    assert set(SETTINGS) <= set(examples)  # the other settings' images stay for Figures 4, 9 and 13


def test_the_settings_of_a_study_are_checked_in_python_too(tmp_path):
    with pytest.raises(
        MivaeError,
        match="the settings to run must be some of the thesis' six, rp50, .*; got \\('random-pixels', 0.6\\).",
    ):
        reproduce.reproduce("smoke", tmp_path, settings=[("random-pixels", 0.6)], progress=False)
    with pytest.raises(MivaeError, match="got none."):
        reproduce.reproduce("smoke", tmp_path, settings=[], progress=False)


def test_mivae_report_rebuilds_the_report_from_results_alone(smoke, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(smoke["out"], copy, ignore=shutil.ignore_patterns("units", "report"))  # no models at all
    assert main(["report", str(copy)]) == 0
    assert str(copy / "report" / "report.md") in capsys.readouterr().out
    rebuilt = json.loads((copy / "report" / "results.json").read_text())
    assert rebuilt["cells"] == smoke["results"]["cells"] and rebuilt["observations"] == smoke["results"]["observations"]
    assert rebuilt["beyond"] == smoke["results"]["beyond"]


def test_a_run_directory_keeps_its_preset_and_seed_but_not_the_wording_of_its_description(smoke, monkeypatch):
    with pytest.raises(MivaeError, match="another preset, seed or limit"):
        reproduce.Study("smoke", smoke["out"], seed=1, progress=False)
    reworded = dataclasses.replace(reproduce.PRESETS["smoke"], about="the same study, described anew")
    monkeypatch.setitem(reproduce.PRESETS, "smoke", reworded)
    reproduce.Study("smoke", smoke["out"], progress=False)  # accepted: no result depends on the description
    more_patient = dataclasses.replace(reworded, patience={**reworded.patience, "mlp": 6})
    monkeypatch.setitem(reproduce.PRESETS, "smoke", more_patient)
    with pytest.raises(MivaeError, match="another preset, seed or limit"):
        reproduce.Study("smoke", smoke["out"], progress=False)


def test_a_study_begun_when_m_was_named_samples_resumes_and_its_report_reads_the_same(smoke, tmp_path):
    # Such a study.json names M `samples` and holds no beyond_epochs (they were the named preset's).
    copy = tmp_path / "earlier"
    shutil.copytree(smoke["out"], copy, ignore=shutil.ignore_patterns("units", "report"))
    study = json.loads((copy / "study.json").read_text())
    preset = study["identity"]["preset"]
    preset["samples"] = preset.pop("imputations")
    del preset["beyond_epochs"]
    (copy / "study.json").write_text(json.dumps(study))
    reproduce.Study("smoke", copy, progress=False)  # accepted as the same study
    assert main(["report", str(copy)]) == 0
    rebuilt = json.loads((copy / "report" / "results.json").read_text())
    assert rebuilt["cells"] == smoke["results"]["cells"]
    assert (copy / "report" / "report.md").read_text() == (smoke["out"] / "report" / "report.md").read_text()
    preset["samples"] = {"mlp": 301, "cnn": 100}  # another M is another study, under either name
    (copy / "study.json").write_text(json.dumps(study))
    with pytest.raises(MivaeError, match="another preset, seed or limit"):
        reproduce.Study("smoke", copy, progress=False)


def test_the_beyond_stage_trains_each_model_for_the_presets_epochs(smoke):
    epochs = reproduce.PRESETS["smoke"].beyond_epochs
    assert set(epochs) == set(reproduce.BEYOND)
    labels = {"mask-mlp": "beyond-mask-mlp-", "mask-cnn": "beyond-mask-cnn-", "imputed-mlp": "beyond-mean+mlp-"}
    for name, prefix in labels.items():
        units = sorted((smoke["out"] / "units").glob(f"{prefix}*/unit.json"))
        assert units, name
        assert {json.loads(u.read_text())["spec"]["train"]["epochs"] for u in units} == {epochs[name]}


# ----------------------------------------------------------------------------------------
# Beyond the thesis


def _result(smoke, setting, name):
    return json.loads((smoke["out"] / "results" / setting / f"{name}.json").read_text())


def test_beyond_trains_mask_aware_models_and_vaes_that_never_see_a_clean_image(smoke):
    for setting in SETTINGS:
        for classifier in ("mlp", "cnn"):
            (unit,) = (smoke["out"] / "units").glob(f"beyond-mask-{classifier}-{setting}-*")
            run = load_run(unit)
            assert run.model_config.mask_input and run.data.fill == "white"
            first = next(m for m in run.model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
            assert (first.in_features == 2 * 64) if classifier == "mlp" else (first.in_channels == 2)
        vae = _result(smoke, setting, "incomplete-vae")
        assert vae["kind"] == ("not-miwae" if setting.startswith("vertical") else "miwae")
        (unit,) = (smoke["out"] / "units").glob(f"beyond-{vae['kind']}-{setting}-*")
        assert not load_run(unit).data.clean_train
        assert 0 < vae["test_rmse_missing"] < 1 and math.isfinite(vae["test_negative_bound"])


def test_importance_weighted_classification_reports_accuracy_and_uncertainty_of_each_variant(smoke):
    labels = _result(smoke, "figures", "examples")["test_labels"]
    for setting in SETTINGS:
        e = _result(smoke, setting, "incomplete-vae+mlp")
        assert e["samples"] == 50
        for variant in ("single", "importance_weighted", "uniform"):
            v = e[variant]
            assert len(v["predicted"]) == len(labels) == 359
            assert v["accuracy"] == pytest.approx(np.mean(np.array(v["predicted"]) == labels))
            assert 0 <= v["val_accuracy"] <= 1 and sum(v["class_distribution"]) == 359
            u = v["uncertainty"]
            assert u["nll"] > 0 and 0 <= u["brier"] <= 2 and 0 <= u["ece"] <= 1
            assert u["accuracy_at_coverage"]["1.0"] == pytest.approx(v["accuracy"])
        assert math.isfinite(e["z_weighted_vs_uniform"]) and math.isfinite(e["z_weighted_vs_single"])


def test_the_beyond_section_chooses_on_validation_and_reports_every_target(smoke, tmp_path):
    copy = _results_copy(smoke, tmp_path)
    _healthy(copy)
    report.build_report(copy)
    beyond = json.loads((copy / "report" / "results.json").read_text())["beyond"]
    assert [t["setting"] for t in beyond["targets"]] == SETTINGS
    for t in beyond["targets"]:
        rows = report_beyond.candidates({n: _result(smoke, t["setting"], n) for n in report_beyond.RESULTS + ("cnn",)})
        assert len(rows) == 7 and t["val_accuracy"] == max(val for _, val, *_ in rows)
        assert (t["method"], t["test_accuracy"]) in [(name, test) for name, _, test, *_ in rows]
        assert t["met"] == (t["test_accuracy"] >= t["target"]) and math.isfinite(t["z_vs_our_thesis_cnn"])
    u = beyond["uncertainty"]
    assert u["comparisons"] == 6 * 4 * 3  # settings x (VAE+MLP, VAE+CNN, two weighted variants) x (NLL, Brier, ECE)
    assert u["held"] == (u["multiple_better"] > u["comparisons"] / 2) and u["left_out"] == []
    clean = beyond["clean_scenario"]
    assert len(clean) == 12 and all(
        r["met"] == (r["chosen_test"] >= r["thesis"] + 0.10 or r["chosen_test"] >= 0.95) for r in clean
    )
    assert all(set(r["test"]) == {"thesis' VAE", "(not-)MIWAE", "mean", "iterative"} for r in clean)
    text = (copy / "report" / "report.md").read_text()
    assert "## Beyond the thesis" in text and text.count("| missed |") + text.count("| **met** |") == 6 + 12


def _fail(copy, setting, name, reason="its predictions collapsed: class 1 makes up 100.0% of them."):
    path = copy / "results" / setting / f"{name}.json"
    result = json.loads(path.read_text())
    result["health"] = {"ok": False, "reason": reason, "measured": {}}
    path.write_text(json.dumps(result))


def test_the_beyond_section_never_reads_a_failed_model_as_a_finding(smoke, tmp_path):
    copy = _results_copy(smoke, tmp_path)
    _healthy(copy)
    _fail(copy, "random-pixels-0.5", "vae", "it ignores its latent space: the KL term is 0.01 nats per image.")
    _fail(copy, "random-pixels-0.7", "cnn")
    for name in ("mask-mlp", "mask-cnn", "mean+mlp", "iterative+mlp", "incomplete-vae+mlp"):  # every candidate
        _fail(copy, "vertical-lines-0.9", name)
    _fail(copy, "vertical-lines-0.5", "clean-mlp")
    report.build_report(copy)
    beyond = json.loads((copy / "report" / "results.json").read_text())["beyond"]
    targets = {t["setting"]: t for t in beyond["targets"]}
    assert targets["vertical-lines-0.9"]["met"] is None and targets["vertical-lines-0.9"]["failed_model"]
    assert targets["random-pixels-0.7"]["our_thesis_cnn_failed"].startswith("random-pixels-0.7 cnn: its predictions")
    assert all(isinstance(targets[s]["met"], bool) for s in SETTINGS if s != "vertical-lines-0.9")
    u = beyond["uncertainty"]
    # rp50's VAE+MLP and VAE+CNN rest on its failed VAE; vl90's weighted variants on its failed classifier
    assert u["left_out"] == [
        "random-pixels-0.5 VAE+CNN",
        "random-pixels-0.5 VAE+MLP",
        "vertical-lines-0.9 not-miwae+mlp",
    ]
    assert u["comparisons"] == (6 * 4 - 4) * 3
    clean = {(r["setting"], r["classifier"]): r for r in beyond["clean_scenario"]}
    assert all(clean[("random-pixels-0.5", c)]["chosen"] != "thesis' VAE" for c in ("mlp", "cnn"))
    assert clean[("vertical-lines-0.5", "mlp")]["met"] is None
    assert clean[("vertical-lines-0.5", "cnn")]["met"] is not None
    text = (copy / "report" / "report.md").read_text()
    beyond_text = text[text.index("## Beyond the thesis") :]
    assert "| not judged |" in beyond_text and "left out: a model they rest on failed" in beyond_text
    for listed in (
        "random-pixels-0.5 vae: it ignores its latent space",
        "vertical-lines-0.5 clean-mlp: its",
        "vertical-lines-0.9 mask-mlp: its predictions",
        "random-pixels-0.7 cnn: its predictions",
    ):
        assert f"- {listed}" in beyond_text


def test_every_observation_is_judged_when_every_model_is_healthy(smoke, tmp_path):
    copy = _results_copy(smoke, tmp_path)
    _healthy(copy)
    report.build_report(copy)
    observations = json.loads((copy / "report" / "results.json").read_text())["observations"]
    assert [type(o["held"]) for o in observations] == [bool] * 6
    assert all(o["statistic"] and "not_judged" not in o for o in observations)
    text = (copy / "report" / "report.md").read_text()
    assert text.count("**Held.**") + text.count("**Did not hold.**") == 6 and "✗" not in text


def test_the_wall_time_counts_every_invocation_and_overlapping_workers_once(tmp_path):
    clock = tmp_path / "clock"
    clock.mkdir()
    spans = [(0, 100, False), (100, 400, True), (200, 300, True), (1000, 1060, False)]  # two workers from 200 to 300
    for i, (start, last, finished) in enumerate(spans):
        write_json(
            clock / f"host-{i}.json", {"started": start, "last": last, "finished": finished, "threads": 2 - i % 2}
        )
    (clock / "host-9.json").write_text("{")  # a damaged record is left out
    assert reproduce.wall_time(tmp_path) == {
        "seconds": 460.0,
        "invocations": 4,
        "stopped": 2,
        "workers": 2,
        "threads": [1, 2],
    }


def test_a_running_invocation_keeps_its_clock_up_to_date(tmp_path):
    clock = reproduce.Clock(tmp_path, ["random-pixels-0.7"], beat=0.05)
    first = json.loads(clock.path.read_text())
    deadline = time.monotonic() + 30
    while json.loads(clock.path.read_text())["last"] == first["last"] and time.monotonic() < deadline:
        time.sleep(0.05)
    beaten = json.loads(clock.path.read_text())  # written by the beat alone: the invocation is still running
    clock.stop(finished=True)
    record = json.loads(clock.path.read_text())
    assert beaten["last"] > first["last"] >= record["started"] and not beaten["finished"]
    assert record["finished"] and record["last"] >= beaten["last"]
    assert record["settings"] == ["random-pixels-0.7"]


def _held_by_another_worker(lock, finish, call):
    """Runs call() in a thread while another worker holds `lock`; that worker does finish() before letting go.
    Returns ([call()'s result] if it returned while the lock was held, else [], [call()'s result])."""
    seen = []
    with open(lock, "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        waiting = threading.Thread(target=lambda: seen.append(call()))
        waiting.start()
        waiting.join(timeout=1.0)
        before = list(seen)
        finish()
    waiting.join(timeout=60)
    return before, seen


def test_two_workers_of_one_directory_run_each_unit_once(tmp_path):
    study = reproduce.Study("smoke", tmp_path, progress=False)
    spec = {"unit": "shared"}
    directory = tmp_path / "units" / f"shared-{reproduce.key_of(spec)}"
    directory.mkdir(parents=True)
    calls = []

    def work(folder, finished):
        calls.append(finished)
        return (folder / "model.txt").read_text() if finished else "trained by this worker"

    def other_worker_finishes():
        (directory / "model.txt").write_text("trained by the other worker")
        write_json(directory / "unit.json", {"label": "shared", "spec": spec, "seconds": 5.0})

    before, after = _held_by_another_worker(
        directory / ".lock", other_worker_finishes, lambda: study._unit("shared", spec, work)[0]
    )
    assert before == [] and calls == [True] and after == ["trained by the other worker"]


def test_two_workers_of_one_directory_compute_each_evaluation_once(tmp_path):
    study = reproduce.Study("smoke", tmp_path, progress=False)
    (tmp_path / "results" / "rp").mkdir(parents=True)
    path = tmp_path / "results" / "rp" / "mlp.json"
    key = reproduce.key_of({"run": "abc", "version": reproduce.EVALUATION_VERSION})

    def other_worker_finishes():
        write_json(path, {"key": key, "test_accuracy": 0.5})

    before, after = _held_by_another_worker(
        tmp_path / "results" / "rp" / ".mlp.lock",
        other_worker_finishes,
        lambda: study.evaluated("rp", "mlp", "abc", lambda: {"test_accuracy": 0.9}),
    )
    assert before == [] and after[0]["test_accuracy"] == 0.5


def _recording_tasks(ran, needs):
    """Tasks named by `needs`' keys, each appending its name to `ran` when run."""
    return [
        reproduce._Task(name, tuple(n), lambda name=name: ran.append(name), name.split("-")[0])
        for name, n in needs.items()
    ]


def test_one_worker_runs_the_tasks_in_their_order(tmp_path):
    study = reproduce.Study("smoke", tmp_path, progress=False)
    ran = []
    reproduce._run_tasks(study, _recording_tasks(ran, {"a": (), "b": ("a",), "c": (), "d": ("b", "c")}))
    assert ran == ["a", "b", "c", "d"]


def test_a_worker_takes_other_ready_tasks_while_another_worker_holds_one_and_reuses_it_after(tmp_path):
    study = reproduce.Study("smoke", tmp_path, progress=False)
    (tmp_path / "tasks").mkdir()
    ran = []
    tasks = _recording_tasks(ran, {"vae": (), "vae+mlp": ("vae",), "mlp": (), "cnn": ()})
    # While the other worker runs "vae", this one runs the two tasks that do not need it, then waits for it.
    before, _ = _held_by_another_worker(
        tmp_path / "tasks" / ".vae.lock", lambda: None, lambda: reproduce._run_tasks(study, tasks)
    )
    assert before == []  # it waited for the held task in the end
    assert ran == ["mlp", "cnn", "vae", "vae+mlp"]


def test_the_study_lists_each_task_once_after_the_tasks_it_needs(tmp_path):
    for beyond_stage in (False, True):
        study = reproduce.Study("quick", tmp_path / str(beyond_stage), progress=False, beyond_stage=beyond_stage)
        names = [t.name for t in reproduce._tasks(study)]
        assert len(names) == len(set(names))
        for i, task in enumerate(reproduce._tasks(study)):
            assert set(task.needs) <= set(names[:i]), task.name
        assert names[:5] == [
            "vae-random-pixels-0.5",
            "mlp-random-pixels-0.5",
            "vae+mlp-random-pixels-0.5",
            "cnn-random-pixels-0.5",
            "vae+cnn-random-pixels-0.5",
        ]
        # the clean classifiers, long and needed only by the last tasks, right after the first setting's
        assert (
            names.index("clean-cnn") < names.index("vae-random-pixels-0.7") < names.index("clean-on-random-pixels-0.5")
        )
        assert ("beyond-vertical-lines-0.9" in names) == beyond_stage


def test_the_time_left_is_the_mean_of_the_timed_tasks_of_each_kind_shared_among_the_workers(tmp_path):
    tasks = _recording_tasks(
        [], {f"{kind}-{i}": () for kind, n in (("vae", 3), ("cnn", 2), ("table3", 1)) for i in range(n)}
    )
    for name, seconds in (("vae-0", 100), ("vae-1", 200), ("cnn-0", 50)):
        write_json(tmp_path / f"{name}.json", {"kind": name.split("-")[0], "seconds": seconds})
    (tmp_path / "cnn-1.json").write_text("{")  # a damaged record: the task counts as left
    assert reproduce.time_left(tmp_path, tasks) == (350, 150 + 50, ["table3"])
    assert reproduce.time_left(tmp_path, tasks, workers=2) == (350, 100, ["table3"])
    assert reproduce._hours_minutes(100) == "2 min" and reproduce._hours_minutes(2 * 3600 + 33 * 60) == "2 h 33 min"


def test_the_progress_bar_shows_the_share_done_and_the_time_left_from_the_measured_tasks(tmp_path, capsys):
    study = reproduce.Study("smoke", tmp_path, progress=True)
    folder = tmp_path / "tasks"
    folder.mkdir()
    tasks = _recording_tasks([], {"vae-0": (), "vae-1": (), "cnn-0": ()})
    reproduce._progress(study, folder, tasks)
    assert study.bar.postfix == "time left: known once a task is done"
    write_json(folder / "vae-0.json", {"kind": "vae", "seconds": 180})
    reproduce._progress(study, folder, tasks)
    assert study.bar.n == 180 and study.bar.total == 360  # no worker's clock beats here: counted as one
    assert study.bar.postfix == "about 3 min left, besides cnn, not timed yet"
    study.bar.close()


def test_a_worker_times_the_tasks_it_ran_and_keeps_the_times_of_those_it_reused(tmp_path):
    study = reproduce.Study("smoke", tmp_path, progress=False)
    (tmp_path / "tasks").mkdir()
    write_json(tmp_path / "tasks" / "vae-0.json", {"kind": "vae", "seconds": 5.0})  # done by a worker before
    ran = []
    reproduce._run_tasks(study, _recording_tasks(ran, {"vae-0": (), "cnn-0": ("vae-0",)}))
    assert ran == ["vae-0", "cnn-0"]  # the reused task runs too (it loads the results), but keeps its time
    assert json.loads((tmp_path / "tasks" / "vae-0.json").read_text()) == {"kind": "vae", "seconds": 5.0}
    record = json.loads((tmp_path / "tasks" / "cnn-0.json").read_text())
    assert record["kind"] == "cnn" and 0 <= record["seconds"] < 5


def test_a_task_that_went_on_from_a_stopped_invocations_part_of_a_unit_is_not_timed(tmp_path):
    """A unit whose folder a stopped invocation left without unit.json goes on from that invocation's checkpoints:
    the task around it took only part of its time here, so it records none."""
    study = reproduce.Study("smoke", tmp_path, progress=False)
    spec = {"unit": "vae"}
    (tmp_path / "units" / f"vae-{reproduce.key_of(spec)}").mkdir(parents=True)  # begun, never finished

    def unit(label, spec):
        return lambda: study._unit(label, spec, lambda directory, finished: None)

    reproduce._run_tasks(
        study,
        [
            reproduce._Task("vae-0", (), unit("vae", spec), "vae"),
            reproduce._Task("mlp-0", (), unit("mlp", {"unit": "mlp"}), "mlp"),
        ],
    )
    assert study.resumed == 1 and not (tmp_path / "tasks" / "vae-0.json").exists()
    assert json.loads((tmp_path / "tasks" / "mlp-0.json").read_text())["kind"] == "mlp"  # begun here: timed


def test_the_workers_running_are_the_unfinished_invocations_whose_clock_still_beats(tmp_path):
    (tmp_path / "clock").mkdir()
    for name, last, finished in (("live", 1000, False), ("ended", 1000, True), ("killed", 500, False)):
        write_json(tmp_path / "clock" / f"{name}.json", {"started": 0, "last": last, "finished": finished})
    (tmp_path / "clock" / "damaged.json").write_text("{")
    assert reproduce._workers_running(tmp_path, now=1030) == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["reproduce", "--preset", "huge"], "unknown preset 'huge'; known presets are smoke, quick, thesis."),
        (["reproduce", "--limit", "0"], "--limit must be a whole number of at least 1; got 0."),
        (["report", "/nonexistent/run"], "/nonexistent/run is not a reproduce run directory: study.json is missing."),
    ],
)
def test_bad_reproduce_and_report_arguments_are_one_sentence(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"mivae: error: {message}\n"


def test_an_unfinished_run_cannot_be_reported(tmp_path, capsys):
    reproduce.Study("smoke", tmp_path / "run", progress=False)
    assert main(["report", str(tmp_path / "run")]) == 2
    assert "is not finished" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# A finished study damaged at random (tests/fuzzing.py): `mivae report` on each copy draws its report or says what is
# wrong in one sentence with exit status 2, writes nothing outside report/, and stays within a memory bound. A damaged
# study that still reads draws its whole report (seconds), so there are fewer cases than for run directories.

FUZZED_STUDIES = 12


def test_a_study_directory_damaged_at_random_is_reported_or_refused_in_one_sentence(smoke, tmp_path):
    from fuzzing import copy, damage, failures, run_cases, snapshot

    source = tmp_path / "source"
    shutil.copytree(smoke["out"], source, ignore=shutil.ignore_patterns("units", "report", "checkpoints"))
    read = sorted(
        str(p.relative_to(source)) for p in source.rglob("*.json") if p.parts[len(source.parts)] in ("results", "clock")
    )
    read.append("study.json")
    rng = np.random.default_rng(1)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    folders, descriptions = [], []
    for i in range(FUZZED_STUDIES + 1):
        folder = copy(source, tmp_path / "cases" / str(i))
        descriptions.append("undamaged" if i == 0 else damage(folder, rng, read))
        folders.append(folder)
    before = [snapshot(f, leave_out=["report"]) for f in folders]
    results = run_cases([["report", str(f)] for f in folders], 1 << 30, cwd)
    assert results[0][0] == 0, results[0]
    assert failures(results, descriptions) == []
    assert [snapshot(f, leave_out=["report"]) for f in folders] == before
    assert list(cwd.iterdir()) == []
    assert sum(status == 2 for status, _ in results) >= FUZZED_STUDIES // 2


def _first_unit(out):
    """The folder of the study's first unit: the search that resuming reads first."""
    (unit,) = (out / "units").glob("vae-random-pixels-0.5-*")
    return unit


def _json_edit(path, change):
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


STUDY_DAMAGE = {
    "a unit's record of another shape": (
        lambda out: _json_edit(_first_unit(out) / "unit.json", lambda c: c.update(seconds="x")),
        'unit.json is damaged: seconds must be a number; got "x"',
    ),
    "a search record cut short": (
        lambda out: (_first_unit(out) / "search.json").write_text('{"kind": "vae", "stu'),
        "search.json is damaged and cannot be read",
    ),
    "a search record whose trials are not trials": (
        lambda out: _json_edit(_first_unit(out) / "search.json", lambda c: c.update(trials=[3])),
        "search.json is damaged: trials[0] must be an object; got 3",
    ),
    "a study record whose seed is a word": (
        lambda out: _json_edit(out / "study.json", lambda c: c["identity"].update(seed="zero")),
        'study.json is damaged: identity.seed must be a whole number of at least 0; got "zero"',
    ),
    "a unit's model of two billion nodes": (
        lambda out: _json_edit(
            _first_unit(out) / "final" / "config.json", lambda c: c["model"].update(hidden=[2_000_000_000])
        ),
        "config.json is damaged: its model settings are wrong: hidden needs 1 to 16 layers",
    ),
}


@pytest.mark.parametrize("case", STUDY_DAMAGE)
def test_resuming_a_damaged_study_is_one_sentence(case, smoke, tmp_path, capsys):
    damage, expected = STUDY_DAMAGE[case]
    out = tmp_path / "study"
    shutil.copytree(smoke["out"], out, ignore=shutil.ignore_patterns("report"))
    damage(out)
    status = main(["reproduce", "--preset", "smoke", "--out", str(out), "--threads", "1"])
    err = capsys.readouterr().err  # the progress bar's lines, and the error's
    assert status == 2 and err.count("mivae: error: ") == 1 and "Traceback" not in err, err
    message = err.split("mivae: error: ")[1].split("\n")[0]
    assert expected in message, err
    assert not (out / "report").exists()
