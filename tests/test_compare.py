"""Comparisons one can trust: cells folded over seeds into mean and sd, each change judged against its noise; the
sweep parent as the comparison page; figures that read."""

import math

import mlflow
import pandas as pd
import pytest
import torch

from geomsweep.core.spectra import PowerLawFit
from geomsweep.results import plots, ui_view
from geomsweep.results.compare import (
    comparison_markdown,
    describe,
    group_metrics,
    group_verdicts,
    headline,
    over_seeds,
    rounded,
    verdict,
)
from tests.conftest import GEOMETRY_ONLY, assert_keys_pinned, own_keys, run_app, runs_of


def test_cells_that_differ_only_in_seed_fold_into_mean_and_sd_with_a_verdict():
    cells = pd.DataFrame(
        {
            "method": ["sft", "sft", "sft", "dpo"],
            "seed": ["0", "1", "2", "0"],
            "rankme_change": [0.10, 0.12, 0.14, -0.01],
            "rankme_change_se": [0.03, 0.03, 0.03, 0.02],
            "pass_at_1": [0.5, 0.6, 0.7, 0.4],
        }
    )
    folded = over_seeds(cells, ["method", "seed"]).set_index("method")
    sft, dpo = folded.loc["sft"], folded.loc["dpo"]
    assert sft["seeds"] == 3 and sft["rankme_change"] == pytest.approx(0.12)
    assert sft["rankme_change_sd"] == pytest.approx(0.02)
    # probe texts drawn per seed (no digest): max(sd^2, mean SE^2) / seeds; the SE 0.03 is above the sd 0.02
    assert sft["rankme_change_uncertainty"] == pytest.approx(0.03 / math.sqrt(3))
    # the 95% interval: Student's t on 2 degrees of freedom
    assert sft["rankme_change_ci95"] == pytest.approx(4.302653 * 0.03 / math.sqrt(3), rel=1e-6)
    assert sft["rankme_change_verdict"] == "up" and sft["pass_at_1"] == pytest.approx(0.6)
    # one seed: its own jackknife SE is the uncertainty, against the normal's quantile; -0.01 is within 1.96 x 0.02
    assert dpo["seeds"] == 1 and dpo["rankme_change_uncertainty"] == 0.02
    assert dpo["rankme_change_verdict"] == "within noise (indicative: 1 seed)" and math.isnan(dpo["rankme_change_sd"])
    assert verdict(-0.5, 0.1) == "down" and verdict(0.5, math.nan) == "unknown"
    (line_sft, line_dpo) = headline(folded.reset_index(), ["method", "seed"])
    assert line_sft.startswith("method=sft (3 seeds): RankMe change +0.120 ± 0.075 (95%, up)")
    assert line_dpo.startswith("method=dpo (1 seed): RankMe change -0.010 ± 0.039 (95%, within noise (indicative")
    assert rounded(pd.DataFrame({"x": [1.234567891, math.nan]}))["x"].tolist()[0] == 1.235
    # the parent's row in the runs table and its Overview carry the same answer
    metrics = group_metrics(folded.reset_index(), ["method", "seed"])
    assert metrics["sft/rankme_change"] == pytest.approx(0.12) and metrics["dpo/rankme_change_uncertainty"] == 0.02
    assert not [key for key in metrics if "sd" in key or "_se" in key]
    table = comparison_markdown(folded.reset_index(), ["method", "seed"]).splitlines()
    assert metrics["sft/rankme_change_ci95"] == pytest.approx(sft["rankme_change_ci95"])
    assert table[2] == "| group | seeds | RankMe change (± 95%) | α-ReQ change (± 95%) |"
    assert table[4] == "| method=sft | 3 | +0.120 ± 0.075: up | - |"
    assert group_verdicts(folded.reset_index(), ["method", "seed"]) == {
        "geomsweep.verdict.sft": "RankMe +0.120 ± 0.075 up",
        "geomsweep.verdict.dpo": "1 seed, indicative: RankMe -0.010 ± 0.039 within noise",
    }


def test_the_end_of_job_lines_give_the_geometry_change_and_pass_at_k_with_intervals():
    row = {
        "rankme_first": 9.92,
        "rankme_last": 10.02,
        "rankme_last_se": 0.03,
        "rankme_change": 0.10,
        "rankme_change_se": 0.04,
        "pass_at_1": 0.4,
        "pass_at_1_lo": 0.3,
        "pass_at_1_hi": 0.5,
        "pass_at_8": 0.8,
        "pass_at_8_lo": 0.7,
        "pass_at_8_hi": 0.9,
        "pass_at_8_change": -0.05,
        "pass_at_8_change_lo": -0.1,
        "pass_at_8_change_hi": 0.0,
    }
    lines = describe(row, "warmup until 27, entropy-seeking until 544, compression-seeking")
    assert lines[0] == "phases: warmup until 27, entropy-seeking until 544, compression-seeking"
    assert lines[1] == "RankMe 9.92 -> 10.02 ± 0.03 (SE): change +0.1 ± 0.04, up (indicative: 1 seed)"
    assert lines[2] == "pass@1 0.400 [0.300, 0.500]"
    assert lines[3] == "pass@8 0.800 [0.700, 0.900], change -0.050 [-0.100, +0.000]"


def test_the_eigenspectrum_leaves_out_numerically_zero_eigenvalues_and_names_the_run():
    eigs = torch.tensor([4.0, 2.0, 1.0, 1e-17])
    fit = PowerLawFit(alpha=1.0, intercept=math.log(4.0), r2=1.0, r2_wide=1.0)
    fig = plots.eigenspectra({0: eigs, 1000: eigs * 2}, {0: fit, 1000: fit}, 1, 3, title="probe.norm=post")
    (ax,) = fig.axes
    assert [len(line.get_xdata()) for line in ax.lines[:2]] == [3, 3]
    assert "1 eigenvalues < 1e-10 λ₁ not drawn" in ax.get_xlabel()
    assert ax.get_title().startswith("probe.norm=post\n")
    # colours follow log step: step 10 of 0..1000 lies a third of the way, not 1% of it
    many = {step: eigs for step in (0, 10, 100, 1000, 2, 3, 4, 5, 6)}
    fig = plots.eigenspectra(many, dict.fromkeys(many, fit), 1, 3)
    colors = {int(line.get_label().split()[1]): line.get_color() for line in fig.axes[0].lines[:-1]}
    assert colors[10] != colors[0] and colors[10] != colors[100]


@pytest.mark.slow
def test_a_seed_sweep_parent_is_named_by_its_overrides_and_compares_cells(tmp_path, cache_dir, tiny_checkpoints, store):
    proc = run_app(["-m", *GEOMETRY_ONLY, "seed=0,1", "probe.norm=post,pre"], tmp_path, cache_dir, store)
    (parent,) = runs_of(store, "sweep")
    assert parent.info.run_name == "seed=0,1 probe.norm=post,pre"
    assert parent.data.params["swept.seed"] == "0,1" and parent.data.params["swept.probe.norm"] == "post,pre"
    client = mlflow.MlflowClient(store)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"cells.csv", "comparison.csv", "comparison.json", "summary.json"} <= artifacts
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "plots")} == {"plots/geometry.png"}
    cells = pd.read_csv(client.download_artifacts(parent.info.run_id, "cells.csv", str(tmp_path)))
    folded = pd.read_csv(client.download_artifacts(parent.info.run_id, "comparison.csv", str(tmp_path)))
    assert sorted(folded["probe.norm"]) == ["post", "pre"] and set(folded["seeds"]) == {2}
    for norm, group in cells.groupby("probe.norm"):
        row = folded[folded["probe.norm"] == norm].iloc[0]
        assert row["rankme_change"] == pytest.approx(group["rankme_change"].mean(), rel=1e-3)
        assert row["rankme_change_sd"] == pytest.approx(group["rankme_change"].std(), rel=1e-3)
        assert row["rankme_last_se"] > 0  # the jackknife SE of each cell's last checkpoint, averaged
    # the first view: a line per group, and the link that opens the runs table
    assert "geomsweep: probe.norm=post (2 seeds): RankMe change" in proc.stdout
    assert "(indicative: 2 seeds)" in proc.stdout  # two seeds never claim a direction outright
    parent = client.get_run(parent.info.run_id)
    assert "| probe.norm=post | 2 |" in parent.data.tags["mlflow.note.content"]
    assert {"post/rankme_change", "pre/alpha_req_change_uncertainty", "post/rankme_change_ci95"} <= set(
        parent.data.metrics
    )
    assert parent.data.tags["geomsweep.verdict.post"].startswith("2 seeds, indicative: RankMe ")
    assert_keys_pinned("sweep_parent_keys", own_keys(parent))
    # the printed link opens the sweep's saved view of the runs page, grouped by the swept value
    tags = client.get_experiment(parent.info.experiment_id).tags
    (key,) = [k.removeprefix("mlflow.sharedViewState.") for k in tags if k.startswith("mlflow.sharedViewState.")]
    assert f"#/experiments/{parent.info.experiment_id}/runs?viewStateShareKey={key}&" in proc.stdout
    state = ui_view.read_envelope(tags[f"mlflow.sharedViewState.{key}"])[1]
    assert state["groupBy"]["groupByKeys"] == [{"mode": "param", "groupByData": "cfg.probe.norm"}]
    found = client.search_runs([parent.info.experiment_id], filter_string=state["searchFilter"])
    assert len(found) == 5  # 4 cells and the parent


def test_the_comparison_figure_shows_each_methods_paired_change_apart(store, tmp_path):
    from geomsweep.results.report import LEGEND_FONT, geometry_figure, pass_at_k_curves

    client = mlflow.MlflowClient(store)
    experiment = client.create_experiment("figure", artifact_location=str(tmp_path / "artifacts"))
    runs = []
    for method, slope in (("sft", 0.5), ("rlvr", -0.5)):
        for seed in (0, 1):
            run = client.create_run(experiment, run_name=f"method={method},seed={seed}")
            client.log_param(run.info.run_id, "cfg.method.name", method)
            client.log_param(run.info.run_id, "cfg.seed", str(seed))
            for step in (0, 10, 20):
                level = 20 + seed + slope * step / 10  # the seeds' bases differ by more than the change
                client.log_metric(run.info.run_id, "geometry/rankme", level, step=step)
                client.log_metric(run.info.run_id, "geometry/rankme_change", slope * step / 10, step=step)
                client.log_metric(run.info.run_id, "geometry/rankme_change_se", 0.01, step=step)
            for step, (one, four) in ((0, (0.2, 0.5)), (20, (0.2 + slope / 5, 0.5 - slope / 10))):
                client.log_metric(run.info.run_id, "behavior/pass_at_1", one, step=step)
                client.log_metric(run.info.run_id, "behavior/pass_at_4", four, step=step)
            runs.append(client.get_run(run.info.run_id))
    fig = geometry_figure(client, runs, "method=sft,rlvr seed=0,1", ["method", "seed"])
    levels, changes = fig.axes[0], fig.axes[1]
    lines = {line.get_label(): line for line in changes.lines if not line.get_label().startswith("_")}
    assert set(lines) == {"method=sft (2 seeds)", "method=rlvr (2 seeds)"}
    assert list(lines["method=sft (2 seeds)"].get_ydata()) == [0.0, 0.5, 1.0]
    assert list(lines["method=rlvr (2 seeds)"].get_ydata()) == [0.0, -0.5, -1.0]
    assert len(levels.lines) == 4 and fig.axes[2].get_xlabel() == "post-training step"
    assert all(text.get_fontsize() >= LEGEND_FONT for text in changes.get_legend().get_texts())
    # pass@k: each run after post-training, and the base model's curve before it
    curves = pass_at_k_curves(runs, client)
    assert curves["base, before post-training"] == {1: pytest.approx(0.2), 4: pytest.approx(0.5)}
    assert curves["sft: method=sft,seed=0"] == {1: pytest.approx(0.3), 4: pytest.approx(0.45)}


def test_a_mixed_sweep_draws_its_traces_apart_shaded_by_their_phases(store, tmp_path):
    from geomsweep.results.report import geometry_figure, log_comparison

    client = mlflow.MlflowClient(store)
    experiment = client.create_experiment("mixed", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment, run_name="method=none,sft", tags={"geomsweep.swept_keys": "method"})
    runs = []
    for method in ("none", "sft"):
        run = client.create_run(experiment, run_name=f"method={method}")
        client.log_param(run.info.run_id, "cfg.method.name", method)
        steps = (0, 10, 100, 1000) if method == "none" else (0, 10)
        for i, step in enumerate(steps):
            client.log_metric(run.info.run_id, "geometry/rankme", 10.0 + i, step=step)
            client.log_metric(run.info.run_id, "geometry/alpha_req", 1.0 + i / 10, step=step)
            if method == "none":
                client.log_metric(run.info.run_id, "geometry/phase", (0, 1, 1, 2)[i], step=step)
        client.set_terminated(run.info.run_id)
        runs.append(client.get_run(run.info.run_id))
    log_comparison(client, parent.info.run_id, runs)
    plotted = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plotted == {"plots/geometry.png", "plots/geometry_traces.png"}
    # the trace's figure is shaded by its phases: warmup, entropy-seeking, compression-seeking
    fig = geometry_figure(client, runs[:1])
    shaded = {text.get_text() for text in fig.axes[0].get_legend().get_texts()}
    assert {"warmup", "entropy-seeking", "compression-seeking"} <= shaded


def test_a_one_checkpoint_trace_claims_no_change():
    row = {"rankme_first": 9.0, "rankme_last": 9.0, "rankme_change": 0.0, "rankme_change_se": 1.9}
    row |= {"rankme_last_se": 1.3, "rankme_points": 1}
    (line,) = describe(row)
    assert line == "RankMe 9 ± 1.3 (SE), at one checkpoint"
    folded = over_seeds(pd.DataFrame([row]), [])
    assert folded["rankme_change_verdict"].tolist() == ["one checkpoint"]


def test_the_post_training_figure_draws_the_paired_change_on_a_linear_step_axis():
    from geomsweep.results.artifacts import post_training_figure

    steps = [0, 10, 20, 30, 40]
    frame = pd.DataFrame(
        {
            "step": steps,
            "geometry/rankme": [20.0, 19.8, 19.7, 19.6, 19.6],
            "geometry/alpha_req": [1.0, 1.01, 1.02, 1.03, 1.03],
            "geometry/rankme_se": [0.5] * 5,
            "geometry/alpha_req_se": [0.05] * 5,
            "geometry/rankme_change": [0.0, -0.2, -0.3, -0.4, -0.4],
            "geometry/rankme_change_se": [0.0, 0.04, 0.045, 0.046, 0.046],
            "geometry/alpha_req_change": [0.0, 0.01, 0.02, 0.03, 0.03],
            "geometry/alpha_req_change_se": [0.0, 0.002, 0.002, 0.003, 0.003],
        }
    )
    fig = post_training_figure(frame, "dpo", title="method=dpo")
    rankme, alpha = fig.axes
    assert rankme.get_ylabel() == "RankMe − base" and alpha.get_ylabel() == "α-ReQ − base"
    assert alpha.get_xscale() == "linear" and alpha.get_xlabel() == "dpo step"
    assert list(rankme.lines[0].get_ydata()) == [0.0, -0.2, -0.3, -0.4, -0.4]  # the band is the paired SE's
    (band,) = rankme.collections
    assert band.get_paths()[0].vertices[:, 1].min() == pytest.approx(-0.446)


def test_the_trace_figure_draws_downstream_accuracy_on_the_shared_step_axis():
    steps = [0, 10, 100, 1000]
    accuracy = {"long_range_acc": [0.1, 0.1, 0.4, 0.8], "short_range_acc": [0.2, 0.5, 0.6, 0.7]}
    fig = plots.trajectory(
        steps, [5, 3, 9, 6], [1.2, 1.5, 0.9, 1.1], loss=[6, 5, 4, 3], phases=[0, 0, 1, 2], accuracy=accuracy
    )
    *_, panel = fig.axes
    assert panel.get_ylabel() == "accuracy" and panel.get_xscale() == "symlog"
    assert [line.get_label() for line in panel.lines] == ["long_range_acc", "short_range_acc"]
    assert list(panel.lines[0].get_ydata()) == accuracy["long_range_acc"]
