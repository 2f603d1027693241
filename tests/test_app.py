"""The app end to end, as a user runs it, into real temporary sqlite stores read back with MlflowClient."""

import math

import mlflow
import pytest

from tests.conftest import TINY, TINY_PROBE, assert_keys_pinned, own_keys, run_app

pytestmark = pytest.mark.slow


def client_for(uri):
    return mlflow.MlflowClient(tracking_uri=uri)


def only_run(client, **filters):
    exp = client.get_experiment_by_name("geomsweep")
    return client.search_runs([exp.experiment_id], **filters)


def test_single_run_logs_the_trace(tmp_path, cache_dir, tiny_checkpoints, store):
    proc = run_app(TINY, tmp_path, cache_dir, store)
    assert "mlflow ui --backend-store-uri" in proc.stdout
    client = client_for(store)
    (run,) = only_run(client)
    assert run.info.status == "FINISHED"
    # MLflow 3's UI opens a model-development experiment on its runs, not on the GenAI overview
    tags = client.get_experiment(run.info.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    # the printed link opens the run's saved view of the runs page (results/ui_view.py; test_ui_view.py)
    (view,) = [key.removeprefix("mlflow.sharedViewState.") for key in tags if key.startswith("mlflow.sharedViewState.")]
    assert f"runs?viewStateShareKey={view}&workflowType=machine_learning&compareRunsMode=CHART" in proc.stdout
    steps = sorted(int(p.name[4:]) for p in tiny_checkpoints.iterdir() if p.name.startswith("step"))
    history = client.get_metric_history(run.info.run_id, "geometry/rankme")
    assert sorted(m.step for m in history) == steps
    assert all(1.0 <= m.value <= 32 for m in history)
    tokens = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "tokens_seen")}
    assert tokens[40] == 40 * 32 * 64
    for key in ("geometry/alpha_req", "geometry/alpha_r2", "eval/probe_loss"):
        assert len(client.get_metric_history(run.info.run_id, key)) == len(steps)
    params = run.data.params
    assert params["cfg.probe.fit_end"] == "20" and params["cfg.model.toy.hidden_size"] == "32"
    assert params["cfg.probe.rankme"] == "eigen" and params["cfg.method.name"] == "none"
    assert len(run.data.tags["geomsweep.config_hash"]) == 16
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "spectra", "plots", "sampling"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {
        "plots/eigenspectrum.png",
        "plots/trajectory.png",
        "plots/trace.png",
        "plots/pass_at_k.png",
    }
    # sampler.at=last: the completions of the last checkpoint only
    assert {a.path for a in client.list_artifacts(run.info.run_id, "sampling")} == {
        f"sampling/id_step{steps[-1]}.json",
        f"sampling/ood_step{steps[-1]}.json",
    }
    table = client.download_artifacts(run.info.run_id, "spectra/eigenspectra.csv", str(tmp_path))
    lines = open(table).read().splitlines()
    assert lines[0] == "step,revision,rank,eigenvalue,explained_variance_ratio"
    assert len(lines) == 1 + 32 * len(steps)
    assert_keys_pinned("trace_run_keys", own_keys(run))


def test_tracking_uri_from_config_and_default_sqlite_in_cwd(tmp_path, cache_dir, tiny_checkpoints):
    run_app(TINY + ["checkpoint=final"], tmp_path, cache_dir)
    assert (tmp_path / "mlflow.db").exists()
    other = tmp_path / "elsewhere.db"
    run_app(TINY + ["checkpoint=final", f"tracking.uri=sqlite:///{other}"], tmp_path, cache_dir)
    assert len(only_run(client_for(f"sqlite:///{other}"))) == 1


def test_multirun_nests_jobs_under_a_sweep_parent(tmp_path, cache_dir, tiny_checkpoints, store):
    run_app(["-m", "probe.norm=post,pre", "checkpoint=final", *TINY], tmp_path, cache_dir, store)
    client = client_for(store)
    runs = only_run(client)
    parents = [r for r in runs if r.data.tags.get("geomsweep.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("geomsweep.role") == "job"]
    assert len(parents) == 1 and len(children) == 2
    assert parents[0].info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {c.data.params["cfg.probe.norm"] for c in children} == {"post", "pre"}
    pre = next(c for c in children if c.data.params["cfg.probe.norm"] == "pre")
    assert pre.data.tags["geomsweep.ablation"].startswith("skipped: eval.ablation_k=[2, 8] projects")
    assert len({c.data.tags["geomsweep.config_hash"] for c in children}) == 2


def test_unknown_choice_lists_valid_options(tmp_path, cache_dir):
    proc = run_app(["model=gpt5"], tmp_path, cache_dir, check=False)
    assert proc.returncode != 0
    assert "Could not find 'model/gpt5'" in proc.stderr and "tiny" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["model=local", "model.path=/nonexistent/model"], "model.path '/nonexistent/model' does not exist"),
        (["data=files", "data.path=EMPTY"], "has no text of at least 1 characters"),
    ],
)
def test_bad_inputs_fail_with_one_clear_message_and_a_failed_run(tmp_path, cache_dir, store, args, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    args = [a.replace("EMPTY", str(empty)) for a in args]
    base = TINY_PROBE + ["progress=false"] if "model=local" in args else TINY
    proc = run_app(base + args, tmp_path, cache_dir, store, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    (run,) = only_run(client_for(store))
    assert run.info.status == "FAILED"
    assert message in run.data.tags["geomsweep.error"]


def test_phases_are_logged_per_checkpoint(tmp_path, cache_dir, tiny_checkpoints, store):
    run_app(TINY + ["phases.min_change=0.05"], tmp_path, cache_dir, store)
    client = client_for(store)
    (run,) = only_run(client)
    labels = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "geometry/phase")}
    rankme = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "geometry/rankme")}
    assert labels.keys() == rankme.keys() and set(labels.values()) <= {-1, 0, 1, 2}
    from geomsweep.core.phases import detect

    steps = sorted(rankme)
    expected = detect(steps, [rankme[s] for s in steps], min_change=0.05)
    assert [labels[s] for s in steps] == expected.labels
    assert run.data.tags["geomsweep.phases"] == expected.describe()
    assert run.data.tags["geomsweep.phase_boundaries"] == (",".join(map(str, expected.boundaries)) or "none")


def test_toy_models_get_long_and_short_range_accuracy(tmp_path, cache_dir, tiny_checkpoints, store, monkeypatch):
    run_app(TINY + ["checkpoint=steps", "checkpoint.steps=[0,40]", "sampler.at=all"], tmp_path, cache_dir, store)
    client = client_for(store)
    (run,) = only_run(client)
    for key in ("eval/long_range_acc", "eval/short_range_acc"):
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert history.keys() == {0, 40} and all(0.0 <= v <= 1.0 for v in history.values())
    memorized = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "behavior/memorization")}
    assert memorized.keys() == {0, 40} and memorized[40] > memorized[0]  # training pulls the model to the corpus
    for key in ("top2_only", "without_top2", "top8_only", "without_top8"):
        assert len(client.get_metric_history(run.info.run_id, f"ablation/{key}/long_range_acc")) == 2
    path = client.download_artifacts(run.info.run_id, "ablation/tail_ablation.csv", str(tmp_path))
    lines = open(path).read().splitlines()
    assert lines[0] == "step,phase,task,full,top2_only,without_top2,top8_only,without_top8"
    assert len(lines) == 1 + 2 * 2  # (2 checkpoints) x (long, short range)
    for key in ("pass_at_1", "pass_at_2", "pass_at_4", "ood/pass_at_4", "distinct_2", "sample_rankme"):
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, f"behavior/{key}")}
        assert history.keys() == {0, 40}, key
    pass_at = {k: client.get_metric_history(run.info.run_id, f"behavior/pass_at_{k}")[0].value for k in (1, 2, 4)}
    assert 0 <= pass_at[1] <= pass_at[2] <= pass_at[4] <= 1
    # MlflowClient.load_table searches runs through the global tracking URI and experiment, whatever the client's
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", run.info.experiment_id)
    table = mlflow.load_table("sampling/id_step40.json", run_ids=[run.info.run_id])
    assert len(table) == 4 * 30 and set(table["sample"]) == {0, 1, 2, 3}  # 30 ID problems x 4 samples
    assert {"prompt", "completion", "answer", "reference", "correct"} <= set(table.columns)
    assert any(a.path == "plots/pass_at_k.png" for a in client.list_artifacts(run.info.run_id, "plots"))


def test_a_model_narrower_than_the_fit_range_logs_rankme_and_says_why_alpha_is_missing(
    tmp_path, cache_dir, tiny_checkpoints, store
):
    """The tiny toy is 32 wide; a fit over ranks 2..40 needs 40 eigenvalues. RankMe is defined at any width."""
    run_app(
        [*TINY, "checkpoint=final", "probe.fit_end=40", "eval.toy_n_docs=0", "sampler.n=0"], tmp_path, cache_dir, store
    )
    (run,) = only_run(client_for(store))
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert 1 <= metrics["geometry/rankme"] <= 32 and metrics["geometry/rankme_se"] > 0
    assert math.isnan(metrics["geometry/alpha_req"]) and math.isnan(metrics["geometry/alpha_r2"])
    assert run.data.tags["geomsweep.alpha_fit"].startswith(
        "no alpha-ReQ: 32 eigenvalues, fewer than the fit range 2..40"
    )


def test_every_layer_and_the_whole_suite_in_one_pass_keep_the_final_layers_rankme(
    tmp_path, cache_dir, tiny_checkpoints, store
):
    suite = "probe.metrics=[rankme,alpha_req,participation_ratio,stable_rank,anisotropy,twonn]"
    base = [*TINY, "eval.toy_n_docs=0", "sampler.n=0"]
    run_app(base, tmp_path, cache_dir, store)
    run_app([*base, "probe.layers=all", suite, "probe.reservoir=48", "probe.weights=true"], tmp_path, cache_dir, store)
    client = client_for(store)
    default, every = sorted(only_run(client), key=lambda r: r.info.start_time)
    for key in ("geometry/rankme", "geometry/alpha_req"):
        one = {m.step: m.value for m in client.get_metric_history(default.info.run_id, key)}
        all_layers = {m.step: m.value for m in client.get_metric_history(every.info.run_id, key)}
        assert all_layers == pytest.approx(one, rel=1e-9), key  # the final layer's values stay the run's
    assert {"geometry/participation_ratio", "geometry/anisotropy", "geometry/twonn"} <= set(every.data.metrics)
    table = client.download_artifacts(every.info.run_id, "spectra/metrics_by_layer.csv", str(tmp_path))
    import pandas as pd

    frame = pd.read_csv(table)
    assert list(frame.columns) == ["step", "revision", "tokens", "layer", "metric", "value", "se"]
    # the tiny toy's 2 blocks: the embeddings (0), the first block's output (1), the final layer after its norm (2,
    # as the weight spectra number the block whose output it is)
    assert sorted(frame["layer"].unique()) == [0, 1, 2]
    assert {"rankme", "participation_ratio", "twonn"} <= set(frame["metric"])
    plots = {a.path for a in client.list_artifacts(every.info.run_id, "plots")}
    assert {"plots/layers_rankme.png", "plots/layers_anisotropy.png"} <= plots
    # probe.weights=true: each block's weight spectra on the same step axis, tabled and plotted by block
    steps = {m.step for m in client.get_metric_history(every.info.run_id, "geometry/rankme")}
    assert {m.step for m in client.get_metric_history(every.info.run_id, "weights/alpha")} == steps
    assert "weights/alpha" not in default.data.metrics
    weights = pd.read_csv(client.download_artifacts(every.info.run_id, "spectra/weights_by_layer.csv", str(tmp_path)))
    assert list(weights.columns) == ["step", "revision", "tokens", "layer", "matrix", "metric", "value"]
    assert sorted(weights["layer"].unique()) == [1, 2] and set(weights["step"]) == steps
    assert {"alpha", "alpha_weighted", "stable_rank", "log_spectral_norm"} == set(weights["metric"])
    assert {"plots/weights_alpha.png", "plots/weights_stable_rank.png"} <= plots
