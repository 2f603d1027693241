"""Faults injected into real runs, each waiting on a real process:

- a multi-process job (``method.processes=2``: torchrun and its training workers) stopped by SIGTERM, Ctrl-C or
  SIGHUP: every process it started is gone soon after, the run ends KILLED and stays so (no worker closes it
  FINISHED later), and a re-run completes the cell with one FINISHED run beside the KILLED one; a one-process job
  stopped by SIGHUP or Ctrl-C;
- a tracking server frozen mid-job;
- two identical sweeps at once.

Run by ``make test-faults`` (CI), not by ``make test``: each case waits for its fault to land mid-run."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import GEOMETRY_ONLY, REPO, TINY, a_job_writing_to_a_server, run_app, runs_of
from tests.test_bad_inputs import GEOMETRY, wait_for_a_running_job

pytestmark = pytest.mark.faults

LONG = [
    *TINY,
    "method=sft",
    "method.processes=2",
    "checkpoint=final",
    "sampler.n=0",
    "eval.toy_n_docs=0",
    "++method.args.max_steps=1500",
    "++method.args.logging_steps=5",
]


def training_started(store: str) -> bool:
    """Whether rank 0 has joined the job's run and its trainer has logged (the workers are mid-training)."""
    try:
        return any(r.info.status == "RUNNING" and "sft/loss" in r.data.metrics for r in runs_of(store, "job"))
    except Exception:  # the store or the experiment does not exist yet
        return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_stops_every_process_and_the_run_stays_killed(tmp_path, cache_dir, tiny_checkpoints, store, signum):
    env = {**os.environ, "GEOMSWEEP_CACHE": str(cache_dir), "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": store}
    with open(tmp_path / "job.log", "w") as log:
        job = subprocess.Popen(
            [sys.executable, "-m", "geomsweep", *LONG], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 300
        while not training_started(store) and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert job.poll() is None, "the job ended before it could be signalled"
        started = psutil.Process(job.pid).children(recursive=True)  # torchrun and its two workers
        commands = [" ".join(p.cmdline()) for p in started]
        assert sum("torch.distributed.run" in c for c in commands) == 1 and len(started) == 3, commands
        signalled = time.monotonic()
        job.send_signal(signum)  # to the job's process alone, as a scheduler, a terminal or ssh sends it
        code = job.wait(timeout=60)
    gone, alive = psutil.wait_procs(started, timeout=max(0.0, 20 - (time.monotonic() - signalled)))
    assert not alive, [" ".join(p.cmdline()) for p in alive]
    assert code == 128 + signum
    output = (tmp_path / "job.log").read_text()
    if signum == signal.SIGINT:  # one line, not a traceback
        assert "geomsweep: interrupted (Ctrl-C)" in output and "Traceback" not in output
    (run,) = runs_of(store, "job")
    assert run.info.status == "KILLED", run.data.tags.get("geomsweep.error")
    time.sleep(5)  # a worker left behind would go on logging, and close the run FINISHED at its exit
    (run,) = runs_of(store, "job")
    assert run.info.status == "KILLED"
    if signum == signal.SIGTERM:  # the cell runs again (it was not FINISHED), once
        run_app(LONG, tmp_path, cache_dir, store)
        assert sorted(r.info.status for r in runs_of(store, "job")) == ["FINISHED", "KILLED"]


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_ends_a_one_process_job_killed_in_one_line(tmp_path, cache_dir, tiny_checkpoints, store, signum):
    """SIGHUP (a closed terminal, a dropped ssh) is SIGTERM's twin; Ctrl-C ends the run KILLED with one line."""
    env = {**os.environ, "GEOMSWEEP_CACHE": str(cache_dir), "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": store}
    args = [*TINY, "eval.toy_n_docs=0", "sampler.n=0", "probe.n_sequences=4096"]  # still measuring at the signal
    with open(tmp_path / "job.log", "w") as log:
        job = subprocess.Popen(
            [sys.executable, "-m", "geomsweep", *args], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        wait_for_a_running_job(job, store)
        job.send_signal(signum)
        assert job.wait(timeout=120) == 128 + signum
    (run,) = runs_of(store, "job")
    assert run.info.status == "KILLED"
    output = (tmp_path / "job.log").read_text()
    assert "Traceback" not in output
    if signum == signal.SIGHUP:
        assert "terminated by SIGHUP (a closed terminal or a dropped ssh session)" in run.data.tags["geomsweep.error"]
    else:
        assert "geomsweep: interrupted (Ctrl-C)" in output


def test_a_frozen_tracking_server_ends_the_job_within_30_seconds(tmp_path, cache_dir, tiny_checkpoints):
    """A server that stops answering without closing its sockets (SIGSTOP: a hung host, a full disk under its
    database) costs one call's budget, not the budget again for every write the job's failure path makes."""
    with a_job_writing_to_a_server(tmp_path, cache_dir, [*GEOMETRY_ONLY, "probe.n_sequences=4096"]) as (proc, job, uri):
        assert job.poll() is None, "the job ended before the server froze"
        os.killpg(proc.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            out, err = job.communicate(timeout=180)
            took = time.monotonic() - frozen_at
        finally:
            os.killpg(proc.pid, signal.SIGCONT)  # a stopped server would not take the SIGTERM that stops it
    print(f"the job ended {took:.1f} s after the server froze")
    assert job.returncode != 0 and took < 30, (took, err[-2000:])
    assert f"the MLflow server at {uri} stopped answering" in err and "Traceback" not in err


@pytest.mark.parametrize("shared_folder", [False, True], ids=["two-seconds-apart", "same-sweep-folder"])
def test_two_identical_sweeps_each_summarise_every_cell_and_run_each_once(
    tmp_path, cache_dir, tiny_checkpoints, store, shared_folder
):
    """Started 2 s apart they have a parent each, and each parent's summary covers all three cells (those the
    other sweep ran are awaited); started in the same second they share their folder and so one parent."""
    env = {**os.environ, "GEOMSWEEP_CACHE": str(cache_dir), "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": store}
    args = ["-m", *GEOMETRY, "checkpoint=final", "probe.n_sequences=1024", "seed=0,1,2"]
    sweeps = []
    for i in range(2):
        folder = tmp_path / ("multirun" if shared_folder else f"multirun{i}")
        sweeps.append(
            subprocess.Popen(
                [sys.executable, "-m", "geomsweep", *args, f"hydra.sweep.dir={folder}"],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
        time.sleep(2)
    outputs = [sweep.communicate(timeout=600)[0] for sweep in sweeps]
    assert [sweep.returncode for sweep in sweeps] == [0, 0], outputs[1][-3000:]
    jobs = runs_of(store, "job")
    assert sorted(r.info.status for r in jobs) == ["FINISHED"] * 3  # each cell ran once
    parents = runs_of(store, "sweep")
    assert len(parents) == (1 if shared_folder else 2)
    for parent in parents:
        assert parent.info.status == "FINISHED" and parent.data.tags["geomsweep.cells"] == "3"
