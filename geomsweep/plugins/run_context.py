"""The ``geomsweep`` MLflow run-context provider (entry point ``mlflow.run_context_provider``).

MLflow asks every installed provider about every run started in the environment, so this one acts only inside a
geomsweep job (``tracking.running_job.current_job()`` is set exactly while ``job_run`` runs): there, runs get tags
saying where they came from (geomsweep version, git commit, Hydra job name and number, SLURM job id, model and
revision); any other program's runs, Hydra apps included, get nothing.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from mlflow.tracking.context.abstract_context import RunContextProvider

from geomsweep import __version__
from geomsweep.keys import tags as keys
from geomsweep.tracking.running_job import current_job


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the geomsweep checkout in use (None for an installed copy outside git)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None


class GeomsweepRunContext(RunContextProvider):
    """Active only while a geomsweep job runs in this process."""

    def in_context(self) -> bool:
        return current_job() is not None

    def tags(self) -> dict[str, str]:
        tags = {keys.TAG_VERSION: __version__}
        if git_commit():
            tags[keys.TAG_GIT_COMMIT] = git_commit()
        if HydraConfig.initialized():
            job = HydraConfig.get().job
            tags[keys.TAG_HYDRA_JOB] = job.name
            if job.get("num") is not None:
                tags[keys.TAG_HYDRA_JOB_NUM] = str(job.num)
        if os.environ.get("SLURM_JOB_ID"):
            tags[keys.TAG_SLURM_JOB] = os.environ["SLURM_JOB_ID"]
            if os.environ.get("SLURM_ARRAY_TASK_ID"):
                tags[keys.TAG_SLURM_TASK] = os.environ["SLURM_ARRAY_TASK_ID"]
        return tags | (current_job() or {})
