"""The report's tables, health marks and observations, from results alone (synthetic ones here, so each value is
known)."""

from mivae.images.results import ClassifierEvaluation, MultipleRow, Type2Evaluation, VAEEvaluation
from mivae.study.report import THESIS, _markdown_table, failures, observations, type2_table

OK = {"ok": True, "reason": "fine", "measured": {}}
FAILED = {"ok": False, "reason": "its predictions collapsed to one class", "measured": {}}


def _type2(single, multiple, z, health=OK):
    """A Type 2 evaluation as results/<setting>/vae+mlp.json holds it, with M = 10 and 300."""

    def row(accuracy, z):
        return {"accuracy": accuracy, "z_multi_single": z, "mcnemar_p": 1.0, "class_distribution": [1] * 10}

    evaluation = Type2Evaluation(
        kind="vae+mlp", data={}, test_images=10, precision="float32", health=health, single_accuracy=single,
        single_uncertainty={}, multiple_uncertainty={}, single_class_distribution=[1] * 10,
        true_class_distribution=[1] * 10, accuracy_curve=[0.5] * 300,
        multiple={10: MultipleRow(**row(0.0, 0.0)), 300: MultipleRow(**row(multiple, z))},
    )  # fmt: skip
    return evaluation.to_json()


def _results(vae_health=OK, search_health=None):
    common = {"data": {}, "test_images": 10, "precision": "float32"}
    vae = VAEEvaluation(kind="vae", val_negative_elbo=30.0, test_negative_elbo=31.0, health=vae_health, **common)
    mlp = ClassifierEvaluation(kind="mlp", health=OK, accuracy=0.81, val_accuracy=0.8, class_distribution=[1] * 10,
                               uncertainty={}, predicted=list(range(10)), **common)  # fmt: skip
    setting = {
        "vae": vae.to_json(),
        "mlp": {**mlp.to_json(), "search": {"health": search_health}},
        "vae+mlp": _type2(0.84, 0.85, 1.5),
    }
    return {"settings": ["random-pixels-0.5"], "random-pixels-0.5": setting}


def test_a_type2_table_puts_each_evaluation_beside_the_thesis_and_leaves_levels_that_did_not_run_empty():
    rows = type2_table(_results(), 1, "random-pixels", "mlp")
    assert [level for level, _ in rows] == [0.5, 0.7, 0.9]
    assert rows[0][1] == [(0.81, 0.8411, False), (0.84, 0.8599, False), (0.85, 0.859, False), (1.5, -1.08, False)]
    assert rows[1][1] == [(None, t, False) for t in THESIS[1][0.7]] and rows[2][1][0] == (None, 0.2948, False)
    text = _markdown_table(["level", "MLP", "single", "multiple", "z"], rows, [4, 4, 4, 2])
    assert "| 0.5 | 0.8100 (0.8411) | 0.8400 (0.8599) | 0.8500 (0.8590) | 1.50 (-1.08) |" in text
    assert "| 0.7 | not run (0.7116) |" in text


def test_a_cell_resting_on_a_failed_model_is_marked_and_the_failure_named():
    rows = type2_table(_results(vae_health=FAILED), 1, "random-pixels", "mlp")
    assert [failed for *_, failed in rows[0][1]] == [False, True, True, True]  # the Type 2 cells rest on the VAE
    assert failures(_results(vae_health=FAILED), "random-pixels-0.5", ["vae+mlp"]) == [
        "random-pixels-0.5 VAE: its predictions collapsed to one class"
    ]
    # a search whose every trial failed: the kept model failed on held-out images, whatever its evaluation says
    assert failures(_results(search_health=FAILED), "random-pixels-0.5", ["mlp"]) == [
        "random-pixels-0.5 MLP: its predictions collapsed to one class"
    ]
    assert "✗" in _markdown_table(["level", "a", "b", "c", "d"], rows, [4, 4, 4, 2])


def test_observations_are_not_judged_on_a_run_missing_the_settings_they_rest_on():
    judged = observations(_results())
    assert len(judged) == 6 and all(o["held"] is None for o in judged)
    assert all("did not run" in o["not_judged"] for o in judged)
    assert judged[0]["claim"].startswith("Multiple and single imputation differ little")
