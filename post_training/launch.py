"""``method.processes=N``: the job's training in N processes started by torchrun (``torch.distributed.run``), inside
the job's MLflow run.

The job's own process keeps the run and waits; the N processes each load the base model, train it data-parallel
(DDP by default; FSDP or DeepSpeed ZeRO-3 when ``method.args`` say so, see conf/parallel/) and measure the
geometry on their share of the probe set, merged across processes (geomsweep.core.processes). Rank 0 alone logs
(geometry, behavior, the trainer's own metrics) into the run and hands the history back.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow

from geomsweep.sources.data import ProbeSet

WORKER = "geomsweep.post_training.worker"
HISTORY = "history.json"


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
        status = subprocess.run([*command, "-m", WORKER, str(job)], env=env).returncode
        if status != 0:
            raise RuntimeError(f"method.processes={n}: a training process exited with status {status} (output above)")
        log.params({"post_training.processes": str(n)})
        log.metrics({"post_training/seconds": time.perf_counter() - started}, step=0)
        history = json.loads((Path(work) / HISTORY).read_text())
    return {int(step): metrics for step, metrics in history.items()}


def _threads(n: int) -> str:
    """The CPU threads each process may use: the user's OMP_NUM_THREADS, else this machine's cores shared out."""
    return os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // n))
