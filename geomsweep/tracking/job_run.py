"""The Hydra job a run belongs to: its name, its sweep parent, and the job running in this process.

The running job is a ``ContextVar`` (``tracking/running_job.py``, read by the run-context plugin), set only inside
``job_run``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from geomsweep.config.overrides import varied
from geomsweep.keys.tags import (
    ROLE_JOB,
    ROLE_SWEEP,
    TAG_CONFIG_HASH,
    TAG_MODEL,
    TAG_MODEL_REVISION,
    TAG_ROLE,
    TAG_SWEEP_DIR,
    TAG_SWEPT,
    TAG_TRACE_KEY,
)
from geomsweep.tracking.identity import trace_key
from geomsweep.tracking.liveness import lease, process_tags
from geomsweep.tracking.running_job import CURRENT_JOB
from geomsweep.tracking.store import quoted
from geomsweep.tracking.writer import one_write


def find_sweep_parent(experiment_id: str, sweep_dir: str) -> str | None:
    runs = mlflow.MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_SWEEP_DIR}` = {quoted(sweep_dir)} and tags.`{TAG_ROLE}` = '{ROLE_SWEEP}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def sweep_dir(hydra_cfg) -> str:
    return str(Path(hydra_cfg.sweep.dir).resolve())


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_context(experiment_id: str) -> tuple[str, str | None]:
    """(run name, sweep parent run id or None) of the current Hydra job."""
    if not HydraConfig.initialized():
        return "run", None
    hydra_cfg = HydraConfig.get()
    name = hydra_cfg.job.override_dirname or "default"
    parent = find_sweep_parent(experiment_id, sweep_dir(hydra_cfg)) if in_multirun() else None
    if parent is not None:
        swept = mlflow.MlflowClient().get_run(parent).data.tags.get(TAG_SWEPT, "").split(",")
        name = ",".join(varied(hydra_cfg.overrides.task, swept)) or name
    return name, parent


def model_tags(settings) -> dict[str, str]:
    """What model (and which revisions of it) a job measures, for the run-context provider."""
    checkpoint = settings.checkpoint
    detail = {
        "steps": ",".join(map(str, checkpoint.steps or [])),
        "log": checkpoint.num,
        "every": checkpoint.every,
    }.get(checkpoint.select)
    revision = f"{checkpoint.select}:{detail}" if detail else str(checkpoint.select)
    return {TAG_MODEL: str(settings.model.name), TAG_MODEL_REVISION: revision}


@contextmanager
def job_run(
    experiment_id: str, identity: str, name: str, parent: str | None, cfg: DictConfig, settings, data: str = ""
) -> Iterator[mlflow.ActiveRun]:
    """This job's run, active for its duration (TRL's MLflow reporting joins it): nested under the sweep parent in
    a multirun, tagged with the cell's identity and, through the run-context provider, its provenance; its lease
    (the heartbeat other hosts read) is refreshed while it runs."""
    tags = {TAG_CONFIG_HASH: identity, TAG_TRACE_KEY: trace_key(cfg, data), TAG_ROLE: ROLE_JOB, **process_tags()}
    token = CURRENT_JOB.set(model_tags(settings))
    try:
        with one_write():
            active = mlflow.start_run(experiment_id=experiment_id, run_name=name[:250], parent_run_id=parent, tags=tags)
        with active as run:
            with lease(run.info.run_id):
                yield run
    finally:
        CURRENT_JOB.reset(token)
