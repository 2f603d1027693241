"""One of the N processes of a ``method.processes=N`` job (``python -m torch.distributed.run ... -m
geomsweep.post_training.worker <job.pkl>``, started by geomsweep.post_training.launch).

It joins the process group (accelerate's ``PartialState``: gloo on CPUs, NCCL on GPUs, the one TRL's trainer then
uses), runs the same ``post_train`` as a one-process job, and logs only from rank 0, into the job's run.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
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


if __name__ == "__main__":
    main(sys.argv[1])
