"""Shared fixtures: a tiny toy world pretrained once per session, and isolated MLflow stores."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import geomsweep.config.schema  # noqa: F401  registers the typed schema that conf/config.yaml lists first (as the app does)
from geomsweep.app.ui_check import SMALL_PROBE, SMALL_TOY, SMALL_WORLD

REPO = Path(__file__).resolve().parents[1]

# The toy world small enough to pretrain in seconds (a 600-word language, width 32, 40 steps), with the fit range
# shrunk to its width: defined once, where make ui-check uses it too.
TINY_TOY, TINY_PROBE, TINY = SMALL_TOY, SMALL_PROBE, SMALL_WORLD
# Geometry only: no toy-task evaluation, no sampling (for tests of the tracking and launch machinery).
GEOMETRY_ONLY = [*TINY, "eval.toy_n_docs=0", "sampler.n=0"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One toy-model cache for the whole session (the first user pretrains it, ~5 s)."""
    return tmp_path_factory.mktemp("geomsweep-cache")


@pytest.fixture(scope="session")
def tiny_checkpoints(cache_dir) -> Path:
    from geomsweep.sources.toy.pretrain import ToyConfig, ensure_pretrained

    return ensure_pretrained(ToyConfig(**TINY_TOY), cache_dir, progress=False)


@pytest.fixture
def store(tmp_path) -> str:
    """A fresh sqlite tracking URI in a temporary directory."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def run_app(args: list[str], cwd: Path, cache_dir: Path, tracking_uri: str | None = None, check: bool = True):
    """Run ``python -m geomsweep`` as a user would, in its own process."""
    env = {**os.environ, "GEOMSWEEP_CACHE": str(cache_dir), "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    proc = subprocess.run(
        [sys.executable, "-m", "geomsweep", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"geomsweep failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def runs_of(store: str, role: str | None = None):
    """The geomsweep experiment's runs, optionally only those of one role (sweep, job, trace)."""
    import mlflow

    client = mlflow.MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("geomsweep").experiment_id])
    return [r for r in runs if role is None or r.data.tags.get("geomsweep.role") == role]
