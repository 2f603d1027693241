"""Launcher presets (conf/hydra/launcher): they compose, their settings are what submitit accepts, and a sweep
really runs through submitit's local executor into an MLflow server."""

import importlib.util

import mlflow
import pytest
from hydra import compose, initialize_config_dir

from geomsweep.tracking import server
from tests.conftest import GEOMETRY_ONLY, REPO, free_port, run_app, runs_of

LAUNCHERS = REPO / "conf" / "hydra" / "launcher"


def launcher(name: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"hydra/launcher={name}"], return_hydra_config=True).hydra.launcher


def test_the_presets_are_there():
    assert {p.stem for p in LAUNCHERS.glob("*.yaml")} == {"parallel", "slurm", "ray_local"}


def test_parallel_preset_is_joblib():
    cfg = launcher("parallel")
    assert cfg._target_.endswith("JoblibLauncher") and cfg.n_jobs == 4


def test_slurm_preset_settings_are_valid_submitit_slurm_parameters(tmp_path):
    """Handed to submitit as Hydra's SlurmLauncher hands them; submitit refuses any name its SlurmExecutor
    does not know (checked without a cluster, through the AutoExecutor's parameter validation)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    cfg = launcher("slurm")
    assert cfg._target_.endswith("SlurmLauncher")
    assert (cfg.gpus_per_node, cfg.cpus_per_task, cfg.mem_gb, cfg.timeout_min) == (1, 8, 64, 720)
    params = OmegaConf.to_container(cfg, resolve=False)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    handed = {
        k if k in base else f"slurm_{k}": v
        for k, v in params.items()
        if k not in ("_target_", "submitit_folder", "max_num_timeout")
    }
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="local")
    executor.update_parameters(**handed)  # raises on an unknown slurm parameter
    with pytest.raises(Exception, match="slurm_partitionn"):
        executor.update_parameters(slurm_partitionn="gpu")


needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None,
    reason="hydra-ray-launcher is not installed: it pins cloudpickle<3, which breaks joblib>=1.6, so it lives in "
    "an environment of its own (make test-ray)",
)


@needs_ray
def test_ray_local_preset_composes():
    cfg = launcher("ray_local")
    assert cfg._target_.endswith("RayLauncher") and cfg.ray.remote.num_gpus == 0


@needs_ray
@pytest.mark.slow
def test_a_sweep_through_ray_into_a_server(tmp_path, cache_dir, tiny_checkpoints, monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    port = free_port()
    run_app(
        [
            "-m",
            *GEOMETRY_ONLY,
            "checkpoint=final",
            "seed=0,1",
            "hydra/launcher=ray_local",
            "hydra.launcher.ray.init.num_cpus=2",
            "tracking=server",
            f"tracking.server.port={port}",
        ],
        tmp_path,
        cache_dir,
    )
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    jobs, (parent,) = runs_of(store, "job"), runs_of(store, "sweep")
    assert sorted(r.info.status for r in jobs) == ["FINISHED", "FINISHED"] and parent.info.status == "FINISHED"
    assert parent.data.tags["geomsweep.pid"] not in {r.data.tags["geomsweep.pid"] for r in jobs}


@pytest.mark.slow
def test_a_sharded_trace_through_submitit_local_into_a_server_is_one_trace(tmp_path, cache_dir, tiny_checkpoints):
    """The cluster path end to end, without a cluster: each shard in its own submitit subprocess, writing into
    the MLflow server the sweep started, rolled up into one trace run."""
    port = free_port()
    run_app(
        [
            "-m",
            *GEOMETRY_ONLY,
            "hydra/launcher=submitit_local",
            "checkpoint.num_shards=2",
            "checkpoint.shard=0,1",
            "tracking=server",
            f"tracking.server.port={port}",
        ],
        tmp_path,
        cache_dir,
    )
    assert not server.healthy(f"http://127.0.0.1:{port}")  # stopped with the sweep
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    jobs, (parent,), (trace,) = runs_of(store, "job"), runs_of(store, "sweep"), runs_of(store, "trace")
    assert sorted(r.info.status for r in jobs) == ["FINISHED", "FINISHED"]
    assert parent.info.status == "FINISHED" and parent.data.tags["geomsweep.cells"] == "2"
    assert parent.data.tags["geomsweep.pid"] not in {r.data.tags["geomsweep.pid"] for r in jobs}
    assert list((tmp_path / "multirun").glob("*/*/.submitit/*/*_0_log.out"))  # submitit ran them
    history = mlflow.MlflowClient(store).get_metric_history(trace.info.run_id, "geometry/rankme")
    assert sorted(m.step for m in history) == [0, 1, 3, 12, 40]
