"""One of the N processes of a ``method.processes=N`` job (``python -m torch.distributed.run ... -m
geomsweep.post_training.worker <job.pkl>``, started by geomsweep.post_training.launch).

It joins the process group (accelerate's ``PartialState``: gloo on CPUs, NCCL on GPUs, the one TRL's trainer then
uses), runs the same ``post_train`` as a one-process job, and logs only from rank 0, into the job's run.

A worker never ends that run: the job's own process decides its status. Rank 0 makes the run active (so the
trainer's MLflow reporting joins it), and MLflow's exit handler would close an active run FINISHED, even after
an interrupt; so a worker leaves through ``os._exit`` once its logging has been flushed.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import traceback
from pathlib import Path

import mlflow
import torch
from accelerate import PartialState

from geomsweep.core.measure import resolve_device
from geomsweep.post_training.launch import HISTORY
from geomsweep.post_training.run import post_train
from geomsweep.tracking.writer import RunLogger


class Unlogged:
    """The logger of ranks other than 0: every write is dropped (rank 0 logs the figures all ranks agree on)."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def main(job_path: str) -> None:
    job = pickle.loads(Path(job_path).read_bytes())
    settings = job["settings"]
    on_gpu = resolve_device(settings.device).startswith("cuda")
    if on_gpu:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # "cuda" is then this process's own GPU
    state = PartialState(cpu=not on_gpu)
    try:
        if not state.is_main_process:
            post_train(settings, job["probe"], Unlogged())
            return
        # the run is active here too, so the trainer's own MLflow reporting joins it instead of opening another
        mlflow.start_run(run_id=job["run_id"])
        history = post_train(settings, job["probe"], RunLogger(job["run_id"]))
        (Path(job_path).parent / HISTORY).write_text(json.dumps(history))
    finally:
        state.destroy_process_group()


def leave(code: int) -> None:
    """Exit without MLflow's exit handler (it would end the job's run FINISHED), the logging flushed first."""
    try:
        mlflow.flush_async_logging()  # the trainer's metrics, logged asynchronously
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except KeyboardInterrupt:
        leave(130)
    except BaseException:
        traceback.print_exc()
        leave(1)
    leave(0)
