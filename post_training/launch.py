"""``method.processes=N``: the job's training in N processes started by torchrun (``torch.distributed.run``), inside
the job's MLflow run.

The job's own process keeps the run and waits; the N processes each load the base model, train it data-parallel
(DDP by default; FSDP or DeepSpeed ZeRO-3 when ``method.args`` say so, see conf/parallel/) and measure the
geometry on their share of the probe set, merged across processes (geomsweep.core.processes). Rank 0 alone logs
(geometry, behavior, the trainer's own metrics) into the run and hands the history back.

torchrun and its workers run in a process group of their own: a SIGTERM, SIGHUP or Ctrl-C that stops the job
stops every one of them (SIGTERM to the group, SIGKILL after a grace period) before the job closes its run
KILLED. Only the job's own process ever ends the run (worker.py leaves it open whatever happens).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import mlflow

from geomsweep.keys import metrics as M
from geomsweep.sources.data import ProbeSet
from geomsweep.tracking.server import stop as stop_group

WORKER = "geomsweep.post_training.worker"
HISTORY = "history.json"
GRACE_S = 10.0  # how long the workers may take to stop after SIGTERM before they are killed


def in_worker() -> bool:
    """Whether this process is one of torchrun's (it sets LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


def launch(settings, probe: ProbeSet, log) -> dict[int, dict[str, float]]:
    """Run ``settings``' post-training in ``method.processes`` processes on this machine; returns rank 0's history
    (step -> metrics). A failed process fails the job, its output above."""
    n = settings.method.processes
    with tempfile.TemporaryDirectory(prefix="geomsweep-processes-") as work:
        job = Path(work) / "job.pkl"
        job.write_bytes(pickle.dumps({"settings": settings, "probe": probe, "run_id": log.run_id}))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]
        env = os.environ | {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), "OMP_NUM_THREADS": _threads(n)}
        started = time.perf_counter()
        workers = subprocess.Popen(
            [*command, "-m", WORKER, str(job)], env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        stopping = threading.Event()
        relay = threading.Thread(target=_relay, args=(workers.stderr, stopping), daemon=True)
        relay.start()
        try:
            status = workers.wait()
        except BaseException:  # SIGTERM, SIGHUP or Ctrl-C reached this process alone: the group is told too
            stopping.set()  # what torchrun prints as it is stopped is no news: the job says why in one line
            stop_group(workers, grace_s=GRACE_S)
            raise
        relay.join()
        if status != 0:
            raise RuntimeError(f"method.processes={n}: a training process exited with status {status} (output above)")
        log.params({"post_training.processes": str(n)})
        log.metrics({M.POST_TRAINING_SECONDS: time.perf_counter() - started}, step=0)
        history = json.loads((Path(work) / HISTORY).read_text())
    return {int(step): metrics for step, metrics in history.items()}


def _relay(stream, stopping: threading.Event) -> None:
    """The workers' standard error, line by line, to this process's, until the job stops them."""
    for line in stream:
        if not stopping.is_set():
            sys.stderr.write(line)


def _threads(n: int) -> str:
    """The CPU threads each process may use: the user's OMP_NUM_THREADS, else this machine's cores shared out."""
    return os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // n))
