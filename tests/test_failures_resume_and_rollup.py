"""MLflow as the lab notebook: failed cells, resume after SIGKILL, parallel writers, the sweep roll-up."""

import os
import signal
import subprocess
import sys
import time

import mlflow
import pandas as pd
import pytest
from filelock import FileLock

from geomsweep.tracking import server
from tests.conftest import GEOMETRY_ONLY, REPO, TINY, a_job_writing_to_a_server, free_port, run_app, runs_of

pytestmark = pytest.mark.slow

FAST = GEOMETRY_ONLY + ["checkpoint=final"]


# probe.layers=[9] is a valid config that fails at run time: the 2-layer toy has hidden_states -3..2.
def test_a_failed_cell_fails_the_sweep_and_is_named_in_its_summary(tmp_path, cache_dir, tiny_checkpoints, store):
    proc = run_app(["-m", *FAST, "probe.layers=[-1],[9]"], tmp_path, cache_dir, store, check=False)
    assert proc.returncode == 1
    assert "1 of 2 cells did not finish" in proc.stderr and "probe.layers=[9]" in proc.stderr
    (parent,) = runs_of(store, "sweep")
    jobs = {r.data.params["cfg.probe.layers"]: r for r in runs_of(store, "job")}
    assert parent.info.status == "FAILED" and "probe.layers=[9]" in parent.data.tags["geomsweep.failed_cells"]
    assert jobs["[-1]"].info.status == "FINISHED" and jobs["[9]"].info.status == "FAILED"
    assert "layers [9] out of range" in jobs["[9]"].data.tags["geomsweep.error"]
    client = mlflow.MlflowClient(store)
    assert "Traceback" in open(client.download_artifacts(jobs["[9]"].info.run_id, "error.txt", str(tmp_path))).read()
    summary = pd.read_csv(client.download_artifacts(parent.info.run_id, "summary.csv", str(tmp_path)))
    assert sorted(summary["status"]) == ["FAILED", "FINISHED"]
    finished = summary[summary["status"] == "FINISHED"].iloc[0]
    assert finished["geometry/rankme"] == pytest.approx(jobs["[-1]"].data.metrics["geometry/rankme"])


def test_a_rerun_skips_finished_cells_and_reruns_failed_ones(tmp_path, cache_dir, tiny_checkpoints, store):
    args = ["-m", *FAST, "probe.layers=[-1],[9]"]
    run_app(args, tmp_path, cache_dir, store, check=False)
    proc = run_app(args, tmp_path, cache_dir, store, check=False)
    assert "already FINISHED" in proc.stdout and proc.returncode == 1  # layers=[9] fails again
    jobs = runs_of(store, "job")
    by_cell = {}
    for run in jobs:
        by_cell.setdefault(run.data.params["cfg.probe.layers"], []).append(run.info.status)
    assert by_cell == {"[-1]": ["FINISHED"], "[9]": ["FAILED", "FAILED"]}
    client = mlflow.MlflowClient(store)
    second = max(runs_of(store, "sweep"), key=lambda r: r.info.start_time)
    summary = pd.read_csv(client.download_artifacts(second.info.run_id, "summary.csv", str(tmp_path)))
    assert sorted(summary["source"]) == ["earlier run", "this sweep"]
    run_app([*args[:-1], "probe.layers=[-1]", "tracking.force=true"], tmp_path, cache_dir, store)
    assert sum(r.data.params["cfg.probe.layers"] == "[-1]" for r in runs_of(store, "job")) == 2


def test_a_sweep_killed_mid_way_resumes_without_duplicates_or_gaps(tmp_path, cache_dir, tiny_checkpoints, store):
    args = ["-m", *FAST, "probe.fit_end=10,15,20"]
    env = {**os.environ, "GEOMSWEEP_CACHE": str(cache_dir), "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": store}
    log = open(tmp_path / "killed-sweep.log", "w")
    sweep = subprocess.Popen(
        [sys.executable, "-m", "geomsweep", *args],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and sweep.poll() is None:
        try:
            with FileLock(store.removeprefix("sqlite:///") + ".lock"):  # never read a store being created
                if any(r.info.status == "RUNNING" for r in runs_of(store, "job")):
                    break
        except Exception:  # the experiment does not exist yet
            pass
        time.sleep(0.2)
    assert sweep.poll() is None, "the sweep ended before a job could be killed"
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    assert any(r.info.status == "RUNNING" for r in runs_of(store))  # what a SIGKILL leaves behind

    run_app(args, tmp_path, cache_dir, store)
    runs = runs_of(store)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    finished = [r.data.params["cfg.probe.fit_end"] for r in runs_of(store, "job") if r.info.status == "FINISHED"]
    assert sorted(finished) == ["10", "15", "20"]  # every cell once: none missing, none duplicated
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert killed and all("ended without closing the run" in r.data.tags["geomsweep.error"] for r in killed)
    assert {r.data.tags["geomsweep.role"] for r in killed} == {"sweep", "job"}, (
        [(r.info.status, r.data.tags) for r in runs if r.data.tags["geomsweep.role"] == "sweep"],
        (tmp_path / "killed-sweep.log").read_text()[-3000:],
    )


@pytest.mark.faults
def test_parallel_jobs_into_a_local_server_lose_nothing(tmp_path, cache_dir, tiny_checkpoints):
    """Four jobs writing at once into one server (twice the cores here: more workers would only queue)."""
    port = free_port()
    proc = run_app(
        [
            "-m",
            *GEOMETRY_ONLY,
            "seed=range(4)",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=4",
            "tracking=server",
            f"tracking.server.port={port}",
        ],
        tmp_path,
        cache_dir,
    )
    assert "http://127.0.0.1" in proc.stdout
    assert not server.healthy(f"http://127.0.0.1:{port}")  # stopped with the sweep
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the server's backend store, read directly
    jobs = runs_of(store, "job")
    (parent,) = runs_of(store, "sweep")
    assert parent.info.status == "FINISHED" and parent.data.tags["geomsweep.cells"] == "4"
    assert sorted(int(r.data.params["cfg.seed"]) for r in jobs) == list(range(4))
    client = mlflow.MlflowClient(store)
    pids = set()
    for run in jobs:
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "geometry/rankme")) == [
            0,
            1,
            3,
            12,
            40,
        ]
        pids.add(run.data.tags["geomsweep.pid"])
    assert len(pids) > 1  # really parallel worker processes


def test_parallel_processes_create_one_fresh_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    code = (
        "from omegaconf import OmegaConf; from geomsweep.tracking.store import setup_store; "
        f"print(setup_store(OmegaConf.create({{'uri': '{uri}', 'experiment': 'geomsweep'}})))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-500:] for _, err in outputs]
    assert len({out.strip().splitlines()[-1] for out, _ in outputs}) == 1


def test_a_trace_sharded_over_jobs_rolls_up_into_one_trace_run(tmp_path, cache_dir, tiny_checkpoints, store):
    run_app([*GEOMETRY_ONLY, "checkpoint=all"], tmp_path, cache_dir, store)  # the same trace measured by one job
    run_app(["-m", *GEOMETRY_ONLY, "checkpoint.num_shards=2", "checkpoint.shard=0,1"], tmp_path, cache_dir, store)
    client = mlflow.MlflowClient(store)
    whole = next(r for r in runs_of(store, "job") if r.data.params["cfg.checkpoint.num_shards"] == "1")
    (parent,) = runs_of(store, "sweep")
    (trace,) = runs_of(store, "trace")
    assert trace.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert len(trace.data.tags["geomsweep.trace_members"].split(",")) == 2
    expected = {m.step: m.value for m in client.get_metric_history(whole.info.run_id, "geometry/rankme")}
    rolled = {m.step: m.value for m in client.get_metric_history(trace.info.run_id, "geometry/rankme")}
    assert rolled.keys() == expected.keys() == {0, 1, 3, 12, 40}
    assert all(rolled[s] == pytest.approx(expected[s], rel=1e-9) for s in expected)
    assert trace.data.tags["geomsweep.phases"] == whole.data.tags["geomsweep.phases"]
    assert [a.path for a in client.list_artifacts(trace.info.run_id, "plots")] == ["plots/trajectory.png"]
    assert parent.data.tags["geomsweep.cells"] == "2"  # the trace run is not a cell

    # the command, over the whole experiment: the single job and the two shards share one trace key
    proc = subprocess.run(
        [sys.executable, "-m", "geomsweep.devtools", "rollup", "--tracking-uri", store],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    traces = runs_of(store, "trace")
    assert len(traces) == 2 and {len(t.data.tags["geomsweep.trace_members"].split(",")) for t in traces} == {2, 3}


def test_report_overlays_runs_and_logs_to_the_sweep(tmp_path, cache_dir, tiny_checkpoints, store):
    run_app(["-m", *TINY, "eval.toy_n_docs=0", "checkpoint=final", "probe.norm=post,pre"], tmp_path, cache_dir, store)
    proc = subprocess.run(
        [sys.executable, "-m", "geomsweep.devtools", "report", "--tracking-uri", store, "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert len(summary) == 2 and set(summary["status"]) == {"FINISHED"}
    assert summary["behavior/pass_at_1"].between(0, 1).all()
    for name in ("geometry.png", "pass_at_k.png"):
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
    (parent,) = runs_of(store, "sweep")
    logged = {a.path for a in mlflow.MlflowClient(store).list_artifacts(parent.info.run_id, "report")}
    assert logged == {"report/summary.csv", "report/geometry.png", "report/pass_at_k.png"}


def _browser_available() -> bool:
    import importlib.util
    import shutil

    return bool(shutil.which("chromium")) and importlib.util.find_spec("playwright") is not None


@pytest.mark.parametrize(
    "mode",
    [
        "rest",
        pytest.param(
            "browser",
            marks=pytest.mark.skipif(
                not _browser_available(), reason="needs Debian's chromium and playwright (make ui-check installs them)"
            ),
        ),
    ],
)
def test_the_mlflow_ui_shows_the_sweep_and_the_rankme_chart(tmp_path, cache_dir, tiny_checkpoints, store, mode):
    """REST: over a store the suite makes; browser: ui-check's own trace and post-training sweep, then the same
    check over views spoiled so that each must fail."""
    args = [sys.executable, "-m", "geomsweep.devtools", "ui-check", "--out", str(tmp_path / "ui")]
    if mode == "rest":
        run_app(["-m", *GEOMETRY_ONLY, "probe.norm=post,pre"], tmp_path, cache_dir, store)
        args += ["--store", store, "--rest-only"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "GEOMSWEEP_CACHE": str(cache_dir)}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "REST ok: sweep" in proc.stdout
    if mode == "rest":
        assert "with 2 jobs" in proc.stdout
        return
    shots = sorted(p.name for p in (tmp_path / "ui").glob("*.png"))
    assert {"experiment-from-list.png", "sweep-overview.png"} <= set(shots) and len(shots) == 6  # 2 views x 2
    spoiled = subprocess.run(
        args + ["--store", f"sqlite:///{tmp_path / 'ui' / 'mlflow.db'}", "--break-view"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert spoiled.returncode == 0, spoiled.stdout[-2000:] + spoiled.stderr[-3000:]
    assert "every spoiled view failed its check" in spoiled.stdout
    assert (
        "step axis is linear, not log" in spoiled.stdout and "no numbers in a geometry/rankme_change" in spoiled.stdout
    )


@pytest.mark.faults
def test_a_tracking_server_that_dies_mid_job_ends_the_job_in_one_line_within_seconds(
    tmp_path, cache_dir, tiny_checkpoints
):
    """MLflow retries each call 7 times with backoff by default (minutes of silence); geomsweep's budget for a
    server it is told to use is a few seconds, then one line naming the server."""
    with a_job_writing_to_a_server(tmp_path, cache_dir, GEOMETRY_ONLY) as (_, job, uri):
        pass  # the server stops here
    killed_at = time.monotonic()
    out, err = job.communicate(timeout=120)
    assert job.returncode != 0 and time.monotonic() - killed_at < 30, err[-2000:]
    last = err.strip().splitlines()[-2:]
    assert any(uri.split("//")[1] in line or "127.0.0.1" in line for line in last), last
    assert "Traceback" not in err
