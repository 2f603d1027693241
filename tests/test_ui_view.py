"""The saved views of MLflow's runs page (results/ui_view.py), written into real sqlite stores and read back.

What the page then shows in Chromium is `make ui-check`'s (and the browser case of
test_failures_resume_and_rollup.py); here: the tag's format against one the page itself wrote, the runs each view
selects (through MLflow's own search), its columns, grouping and charts, one view per set of cells, and a job that
still prints a link when no view can be written."""

import json
from pathlib import Path

import mlflow
import pytest

from geomsweep.results import ui_view
from geomsweep.results.messages import results_message, saved_views

CAPTURED = Path(__file__).parent / "data" / "mlflow_3.17.2_saved_view.json"


def make_run(client, experiment, name, params, metrics, tags=None):
    run = client.create_run(experiment, run_name=name, tags={"geomsweep.role": "job", **(tags or {})})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    for key, steps in metrics.items():
        for step, value in steps.items():
            client.log_metric(run.info.run_id, key, value, step=step)
    client.set_terminated(run.info.run_id)
    return client.get_run(run.info.run_id)


def post_training_cells(client, experiment, methods=("sft", "rlvr"), seeds=(0, 1)):
    cells = []
    for method in methods:
        for seed in seeds:
            metrics = {
                "geometry/rankme": {0: 20.0, 10: 21.0},
                "geometry/rankme_change": {10: 1.0},
                "geometry/rankme_change_se": {10: 0.1},
                "geometry/alpha_req_change": {10: -0.1},
                "geometry/alpha_req_change_se": {10: 0.01},
                "behavior/pass_at_1": {10: 0.3},
                "behavior/pass_at_1_change": {10: 0.1},
                "behavior/pass_at_8": {10: 0.6},
                "behavior/pass_at_8_change": {10: -0.1},
            }
            params = {"cfg.method.name": method, "cfg.seed": str(seed), "cfg.method.args.learning_rate": "0.001"}
            cells.append(make_run(client, experiment, f"method={method},seed={seed}", params, metrics))
    return cells


def trace_cells(client, experiment, norms=("post", "pre")):
    metrics = {"geometry/rankme": {1: 9.0, 100: 12.0}, "geometry/alpha_req": {1: 1.2, 100: 1.0}}
    params = {"cfg.method.name": "none"}
    return [make_run(client, experiment, f"probe.norm={n}", {**params, "cfg.probe.norm": n}, metrics) for n in norms]


def parent_of(client, experiment, name, swept, metrics=None):
    return make_run(
        client, experiment, name, {}, metrics or {}, {"geomsweep.role": "sweep", "geomsweep.swept_keys": swept}
    )


def views_in(client, experiment):
    tags = client.get_experiment(experiment).tags
    return {
        key.removeprefix(ui_view.VIEW_TAG_PREFIX): ui_view.read_envelope(value)
        for key, value in tags.items()
        if key.startswith(ui_view.VIEW_TAG_PREFIX)
    }


@pytest.fixture
def experiment(store, tmp_path):
    client = mlflow.MlflowClient(store)
    return client, client.create_experiment("views", artifact_location=str(tmp_path / "artifacts"))


def test_the_tag_is_written_in_the_envelope_the_runs_page_itself_writes():
    """tests/data holds a view that MLflow 3.17.2's page saved ("Views > Save as new view" in Chromium)."""
    captured = json.loads(CAPTURED.read_text())
    envelope = json.loads(captured["value"])
    ours = json.loads(ui_view.envelope("a view", {"searchFilter": ""}, now_ms=1))
    assert set(ours) == set(envelope) == {"name", "createdAt", "updatedAt", "state"}
    assert ours["state"].split(";", 1)[0] == envelope["state"].split(";", 1)[0] == "deflate"
    name, state = ui_view.read_envelope(captured["value"])
    assert name == "captured"
    # our page state has every key of the page's own, and nothing it does not restore
    written = ui_view.page_state(["a"], [], [], [], ["cfg.method.name"])
    assert set(written) == set(state)
    page_line = next(chart for chart in state["compareRunCharts"] if chart["type"] == "LINE")
    our_line = ui_view.line_chart("geometry/rankme", "s", log_x=True)
    assert set(our_line) <= set(page_line) | {"selectedMetricKeys"}
    assert {"xAxisScaleType", "metricKey", "metricSectionId"} <= set(our_line)
    assert set(ui_view.section("s")) == set(state["compareRunSections"][0])


def test_a_post_training_sweeps_view_shows_its_changes_grouped_by_method(experiment):
    client, exp = experiment
    cells = post_training_cells(client, exp)
    parent = parent_of(
        client,
        exp,
        "method=sft,rlvr seed=0,1",
        "method,seed",
        {"sft/rankme_change": {0: 1.0}, "sft/rankme_change_ci95": {0: 2.5}, "sft/rankme_change_uncertainty": {0: 0.2}},
    )
    client.set_tag(parent.info.run_id, "geomsweep.verdict.sft", "2 seeds, indicative: RankMe +1.0 ± 2.5 within noise")
    parent = client.get_run(parent.info.run_id)
    other = make_run(client, exp, "another job", {"cfg.method.name": "sft"}, {"geometry/rankme_change": {1: 5.0}})
    ((name, key),) = ui_view.save_views(client, exp, cells, parent)
    assert name == "method=sft,rlvr seed=0,1" and key.startswith("geomsweep-")
    assert ui_view.runs_page(exp, key) == f"#/experiments/{exp}/runs?viewStateShareKey={key}"
    (saved,) = views_in(client, exp).items()
    assert saved[0] == key
    state = saved[1][1]
    # MLflow's own search, given the view's filter, finds the cells and the parent and nothing else
    found = {r.info.run_id for r in client.search_runs([exp], filter_string=state["searchFilter"])}
    assert found == {r.info.run_id for r in [*cells, parent]} and other.info.run_id not in found
    assert state["groupBy"]["groupByKeys"] == [{"mode": "param", "groupByData": "cfg.method.name"}]
    assert state["groupsExpanded"] == {"param.cfg.method.name": True}  # the parent's row: the remaining group
    columns = state["selectedColumns"]
    for metric in (
        "geometry/rankme_change",
        "behavior/pass_at_1_change",
        "behavior/pass_at_8",
        "behavior/pass_at_8_change",
        "sft/rankme_change",
        "sft/rankme_change_ci95",
    ):
        assert f"metrics.`{metric}`" in columns
    # grouped by method, the page would average each run's own SE over seeds: the uncertainty of nothing. The
    # parent's interval and verdict stand in the table instead.
    assert not [c for c in columns if c.endswith(("_se`", "_uncertainty`"))]
    assert "tags.`geomsweep.verdict.sft`" in columns
    # the first columns answer "is it beyond noise?": each group's verdict, then the changes themselves
    assert state["columnOrder"][:3] == ["run_name", "tags.`geomsweep.verdict.sft`", "metrics.`geometry/rankme_change`"]
    charts = {(c["type"], c.get("metricKey")) for c in state["compareRunCharts"]}
    assert {("BAR", "geometry/rankme_change"), ("BAR", "behavior/pass_at_8_change")} <= charts
    lines = [c for c in state["compareRunCharts"] if c["type"] == "LINE"]
    assert lines and all(c["xAxisScaleType"] == "log" for c in lines)
    sections = {s["uuid"] for s in state["compareRunSections"]}
    assert all(c["metricSectionId"] in sections for c in state["compareRunCharts"])
    assert not any(c["type"] == "PARALLEL" for c in state["compareRunCharts"])  # no swept value beside method/seed


def test_an_ablation_sweep_gets_parallel_coordinates_of_its_swept_values(experiment):
    client, exp = experiment
    cells = post_training_cells(client, exp, methods=("dpo",))
    parent = parent_of(client, exp, "method.args.learning_rate=1e-3,1e-4", "method,method.args.learning_rate")
    ((_, key),) = ui_view.save_views(client, exp, cells, parent)
    state = views_in(client, exp)[key][1]
    (parallel,) = [c for c in state["compareRunCharts"] if c["type"] == "PARALLEL"]
    assert parallel["selectedParams"] == ["cfg.method.args.learning_rate"]
    assert parallel["selectedMetrics"] == ["geometry/rankme_change", "geometry/alpha_req_change"]
    grouped = [k["groupByData"] for k in state["groupBy"]["groupByKeys"]]
    assert grouped == ["cfg.method.name", "cfg.method.args.learning_rate"]


def test_a_trace_view_draws_geometry_on_a_log_step_axis(experiment):
    client, exp = experiment
    (cell,) = trace_cells(client, exp, norms=("post",))
    ((name, key),) = ui_view.save_views(client, exp, [cell])
    assert name == "probe.norm=post"
    state = views_in(client, exp)[key][1]
    assert [r.info.run_id for r in client.search_runs([exp], filter_string=state["searchFilter"])] == [cell.info.run_id]
    charts = {c["metricKey"]: c for c in state["compareRunCharts"]}
    assert set(charts) == {"geometry/rankme", "geometry/alpha_req"}  # eval/probe_loss was not logged
    assert {c["xAxisScaleType"] for c in charts.values()} == {"log"}
    assert state["groupBy"] is None
    assert "metrics.`geometry/rankme_se`" in state["selectedColumns"]  # a lone run's own SE


def test_a_trace_view_shows_the_phases_in_words_and_as_a_line_on_the_log_step_axis(experiment):
    client, exp = experiment
    metrics = {"geometry/rankme": {1: 9.0, 100: 12.0}, "geometry/phase": {1: 0, 100: 1}}
    tags = {"geomsweep.phases": "warmup until 1, entropy-seeking"}
    cell = make_run(client, exp, "trace", {"cfg.method.name": "none"}, metrics, tags)
    ((_, key),) = ui_view.save_views(client, exp, [cell])
    state = views_in(client, exp)[key][1]
    assert "tags.`geomsweep.phases`" in state["selectedColumns"]
    (phase,) = [c for c in state["compareRunCharts"] if c["metricKey"] == "geometry/phase"]
    assert phase["xAxisScaleType"] == "log"


def test_a_mixed_sweep_gets_two_views_that_never_share_a_step_axis(experiment):
    client, exp = experiment
    traces, trained = trace_cells(client, exp), post_training_cells(client, exp, seeds=(0,))
    parent = parent_of(client, exp, "method=none,sft,rlvr probe.norm=post,pre", "method,probe.norm")
    saved = ui_view.save_views(client, exp, [*traces, *trained], parent)
    assert [name for name, _ in saved] == [
        "method=none,sft,rlvr probe.norm=post,pre · post-training",
        "method=none,sft,rlvr probe.norm=post,pre · traces",
    ]
    views = views_in(client, exp)
    for (_, key), members in zip(saved, (trained, traces), strict=True):
        state = views[key][1]
        found = {r.info.run_id for r in client.search_runs([exp], filter_string=state["searchFilter"])}
        assert {r.info.run_id for r in members} <= found <= {r.info.run_id for r in [*members, parent]}


def test_rerunning_a_sweep_rewrites_its_view_and_another_sweep_gets_its_own(experiment):
    client, exp = experiment
    cells = post_training_cells(client, exp)
    first = ui_view.save_views(client, exp, cells, parent_of(client, exp, "method=sft,rlvr seed=0,1", "method,seed"))
    # a re-run reuses the FINISHED cells under a new parent: the same view, rewritten
    again = ui_view.save_views(client, exp, cells, parent_of(client, exp, "method=sft,rlvr seed=0,1", "method,seed"))
    assert again == first and len(views_in(client, exp)) == 1
    others = post_training_cells(client, exp, methods=("dpo",))
    later = ui_view.save_views(client, exp, others, parent_of(client, exp, "method=dpo seed=0,1", "method,seed"))
    assert later[0][1] != first[0][1]
    assert {name for name, _ in views_in(client, exp).values()} == {"method=sft,rlvr seed=0,1", "method=dpo seed=0,1"}


def test_a_view_that_cannot_be_written_leaves_the_plain_runs_table_link(experiment, monkeypatch):
    client, exp = experiment
    (cell,) = trace_cells(client, exp, norms=("post",))
    client.delete_experiment(exp)  # MLflow refuses tags on a deleted experiment
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    assert saved_views(client, cell) == []
    message = results_message(cell, [])
    assert f"the runs table: http://127.0.0.1:5000/#/experiments/{exp}/runs?workflowType=machine_learning" in message
    assert "viewStateShareKey" not in message


def test_a_finished_job_prints_its_view_as_a_table_and_as_charts(experiment, monkeypatch):
    client, exp = experiment
    (cell,) = trace_cells(client, exp, norms=("post",))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    message = results_message(cell, saved_views(client, cell))
    ((key, (name, _)),) = views_in(client, exp).items()
    page = f"http://127.0.0.1:5000/#/experiments/{exp}/runs?viewStateShareKey={key}&workflowType=machine_learning"
    assert f"then the view 'probe.norm=post': {page}\n" in message
    assert message.endswith(f"its charts: {page}&compareRunsMode=CHART")


def test_a_trace_view_carries_whichever_suite_measures_the_run_logged(experiment):
    client, exp = experiment
    metrics = {"geometry/rankme": {1: 9.0, 100: 12.0}, "geometry/participation_ratio": {1: 4.0, 100: 6.0}}
    metrics["weights/alpha"] = {1: 5.1, 100: 3.2}  # probe.weights
    cell = make_run(client, exp, "suite", {"cfg.method.name": "none"}, metrics)
    ((_, key),) = ui_view.save_views(client, exp, [cell])
    state = views_in(client, exp)[key][1]
    assert "metrics.`geometry/participation_ratio`" in state["selectedColumns"]
    assert "metrics.`geometry/twonn`" not in state["selectedColumns"]  # not logged, not shown
    charts = {c["metricKey"]: c["xAxisScaleType"] for c in state["compareRunCharts"]}
    assert charts == {"geometry/rankme": "log", "geometry/participation_ratio": "log", "weights/alpha": "log"}


def test_a_trace_view_carries_memorization_with_its_error_where_the_run_logged_it(experiment):
    client, exp = experiment
    metrics = {"geometry/rankme": {1: 9.0, 100: 12.0}}
    plain = make_run(client, exp, "plain", {"cfg.method.name": "none"}, metrics)
    metrics |= {"behavior/memorization": {1: 0.1, 100: 0.5}, "behavior/memorization_se": {1: 0.03, 100: 0.02}}
    memorized = make_run(client, exp, "memorized", {"cfg.method.name": "none"}, metrics)
    ((_, without),) = ui_view.save_views(client, exp, [plain])
    ((_, with_it),) = ui_view.save_views(client, exp, [memorized])
    views = views_in(client, exp)
    assert "metrics.`behavior/memorization`" not in views[without][1]["selectedColumns"]
    state = views[with_it][1]
    assert {"metrics.`behavior/memorization`", "metrics.`behavior/memorization_se`"} <= set(state["selectedColumns"])
    charts = {c["metricKey"]: c["xAxisScaleType"] for c in state["compareRunCharts"]}
    assert charts == {"geometry/rankme": "log", "behavior/memorization": "log"}
