"""MLflow bookkeeping: the store and experiment, one run per Hydra job, the sweep parent run.

A multirun gets one *sweep parent* run, created by a Hydra callback in the main process before any job starts
(so a fresh sqlite store and the experiment are created once, never raced by workers). Workers find the parent
by its ``geomsweep.sweep_dir`` tag and open their own run with ``parent_run_id``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

TAG_SWEEP_DIR = "geomsweep.sweep_dir"
TAG_ROLE = "geomsweep.role"
TAG_CONFIG_HASH = "geomsweep.config_hash"
TAG_ERROR = "geomsweep.error"
# Parts of the config that say where things go, not what is computed: left out of the run identity.
LOGISTICS_KEYS = ("tracking", "cache_dir", "progress")
MAX_PARAM_CHARS = 6000


def tracking_uri(tracking_cfg) -> str:
    """``MLFLOW_TRACKING_URI`` wins over the config, as everywhere in MLflow."""
    return os.environ.get("MLFLOW_TRACKING_URI") or str(tracking_cfg.uri)


def setup_store(tracking_cfg) -> str:
    """Point MLflow at the store, create it and the experiment if needed; return the experiment id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(tracking_cfg))
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(tracking_cfg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(tracking_cfg.experiment)
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        return client.get_experiment_by_name(tracking_cfg.experiment).experiment_id


def flatten(cfg: DictConfig) -> dict[str, str]:
    """Resolved config as ``cfg.<dotted.key>`` -> string value, one MLflow param each."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}")
        else:
            out[prefix] = str(node)[:MAX_PARAM_CHARS]

    walk(OmegaConf.to_container(cfg, resolve=True), "cfg")
    return out


def config_hash(cfg: DictConfig) -> str:
    """Identity of a cell: a hash of the resolved config without logistics (output dirs, tracking store)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in LOGISTICS_KEYS:
        container.pop(key, None)
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(container)).encode()).hexdigest()[:16]


def log_config(cfg: DictConfig) -> None:
    """Params (batched) and the resolved YAML as an artifact."""
    import mlflow
    from mlflow.entities import Param

    params = [Param(k, v) for k, v in flatten(cfg).items()]
    mlflow.MlflowClient().log_batch(mlflow.active_run().info.run_id, params=params)
    mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")


def find_sweep_parent(experiment_id: str, sweep_dir: str) -> str | None:
    import mlflow

    runs = mlflow.MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_SWEEP_DIR}` = '{sweep_dir}' and tags.`{TAG_ROLE}` = 'sweep'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _sweep_dir(hydra_cfg) -> str:
    return str(Path(hydra_cfg.sweep.dir).resolve())


def start_job_run(cfg: DictConfig):
    """Open this job's run: nested under the sweep parent in a multirun, tagged with the config hash."""
    import mlflow
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    experiment_id = setup_store(cfg.tracking)
    parent = None
    name = "run"
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        name = hydra_cfg.job.override_dirname or "default"
        if hydra_cfg.mode == RunMode.MULTIRUN:
            parent = find_sweep_parent(experiment_id, _sweep_dir(hydra_cfg))
    tags = {TAG_CONFIG_HASH: config_hash(cfg), TAG_ROLE: "job"}
    return mlflow.start_run(experiment_id=experiment_id, run_name=name[:250], parent_run_id=parent, tags=tags)


def results_message(run) -> str:
    uri = mlflow_uri_for_ui()
    return (
        f"geomsweep: results in MLflow experiment {run.info.experiment_id}, run {run.info.run_id} "
        f"({run.info.run_name}) at {uri}\n"
        f"geomsweep: open the UI with: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    )


def mlflow_uri_for_ui() -> str:
    """The tracking URI with a relative sqlite path made absolute, so the printed command works anywhere."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


class SweepCallback(Callback):
    """Creates the store, the experiment and the sweep parent run once, in the main process of a multirun."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import mlflow

        experiment_id = setup_store(config.tracking)
        sweep_dir = _sweep_dir(config.hydra)
        if find_sweep_parent(experiment_id, sweep_dir) is None:
            run = mlflow.MlflowClient().create_run(
                experiment_id, run_name=f"sweep {Path(sweep_dir).parent.name}/{Path(sweep_dir).name}",
                tags={TAG_SWEEP_DIR: sweep_dir, TAG_ROLE: "sweep"},
            )
            mlflow.MlflowClient().log_text(run.info.run_id, " ".join(config.hydra.overrides.task), "overrides.txt")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import mlflow

        experiment_id = setup_store(config.tracking)
        parent = find_sweep_parent(experiment_id, _sweep_dir(config.hydra))
        if parent is not None:
            mlflow.MlflowClient().set_terminated(parent, "FINISHED")
            run = mlflow.MlflowClient().get_run(parent)
            print(results_message(run))
