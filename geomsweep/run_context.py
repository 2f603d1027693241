"""The ``geomsweep`` MLflow run-context provider (entry point ``mlflow.run_context_provider``).

Every run started inside a geomsweep job gets tags saying where it came from: geomsweep version, git commit,
Hydra job name and number, SLURM job id (when present), model and revision.
"""

from __future__ import annotations

import functools
import os
import subprocess
from importlib import metadata
from pathlib import Path

from mlflow.tracking.context.abstract_context import RunContextProvider


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the geomsweep checkout in use (None for an installed copy outside git)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None


def geomsweep_version() -> str:
    try:
        return metadata.version("geomsweep")
    except metadata.PackageNotFoundError:
        return "unknown"


class GeomsweepRunContext(RunContextProvider):
    """Active inside a geomsweep job (Hydra app) or wherever a job's config is registered (tracking.JOB)."""

    def in_context(self) -> bool:
        from hydra.core.hydra_config import HydraConfig

        from geomsweep import tracking

        return HydraConfig.initialized() or tracking.JOB is not None

    def tags(self) -> dict[str, str]:
        from hydra.core.hydra_config import HydraConfig

        from geomsweep import tracking

        tags = {"geomsweep.version": geomsweep_version()}
        if git_commit():
            tags["geomsweep.git_commit"] = git_commit()
        if HydraConfig.initialized():
            job = HydraConfig.get().job
            tags["geomsweep.hydra_job"] = job.name
            if job.get("num") is not None:
                tags["geomsweep.hydra_job_num"] = str(job.num)
        if os.environ.get("SLURM_JOB_ID"):
            tags["geomsweep.slurm_job_id"] = os.environ["SLURM_JOB_ID"]
            if os.environ.get("SLURM_ARRAY_TASK_ID"):
                tags["geomsweep.slurm_array_task_id"] = os.environ["SLURM_ARRAY_TASK_ID"]
        if tracking.JOB is not None:
            tags |= tracking.JOB
        return tags
