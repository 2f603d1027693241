"""Shared fixtures: a tiny toy world pretrained once per session, and isolated MLflow stores."""

import io
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import geomsweep.config.schema  # noqa: F401  registers the typed schema that conf/config.yaml lists first (as the app does)
from geomsweep.tracking import server as tracking_server

REPO = Path(__file__).resolve().parents[1]

# The toy world small enough to pretrain in seconds (a 600-word language, width 32, 40 steps), with the fit range
# shrunk to its width: a shipped preset, which make ui-check runs on too.
SMALL = OmegaConf.load(REPO / "conf/experiment/small.yaml")
TINY = ["+experiment=small"]
TINY_TOY = OmegaConf.to_container(SMALL.model.toy)
TINY_PROBE = [f"probe.{key}={value}" for key, value in SMALL.probe.items()]  # for a real model, without the toy
# Geometry only: no toy-task evaluation, no memorization, no sampling (for tests of the tracking and launch machinery).
GEOMETRY_ONLY = [*TINY, "eval.toy_n_docs=0", "eval.memorization.items=null", "sampler.n=0"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One toy-model cache for the whole session (the first user pretrains it, ~5 s, and converts SmolLM2's GGUF,
    ~50 s)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n: the workers share one cache (pretraining is locked)
        shared = tmp_path_factory.getbasetemp().parent / "geomsweep-cache"
        shared.mkdir(exist_ok=True)
        return shared
    return tmp_path_factory.mktemp("geomsweep-cache")


@pytest.fixture(scope="session")
def tiny_checkpoints(cache_dir) -> Path:
    from geomsweep.sources.toy.pretrain import ToyConfig, ensure_pretrained

    return ensure_pretrained(ToyConfig(**TINY_TOY), cache_dir, progress=False)


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store with all of MLflow's migrations applied, made once per session: creating one
    takes ~2 s, copying it a tenth of that."""
    import mlflow

    path = tmp_path_factory.mktemp("store-template") / "mlflow.db"
    here = os.getcwd()
    os.chdir(path.parent)  # the Default experiment's artifact root is ./mlruns where the store is made: not the repo
    try:
        mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    finally:
        os.chdir(here)
    return path


@pytest.fixture
def new_store(tmp_path) -> str:
    """The URI of a sqlite store not yet created: for tests that a refusal leaves no store behind."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def store(tmp_path, migrated_store) -> str:
    """A fresh, empty sqlite tracking store in a temporary directory (a copy of the migrated template; tests of
    how a store is created make their own)."""
    path = tmp_path / "mlflow.db"
    shutil.copyfile(migrated_store, path)
    return f"sqlite:///{path}"


def run_app(
    args: list[str],
    cwd: Path,
    cache_dir: Path,
    tracking_uri: str | None = None,
    check: bool = True,
    own_process: bool = False,
) -> subprocess.CompletedProcess:
    """Run ``python -m geomsweep`` as a user would: in this process (its imports paid once per session, the app's
    global state reset after), or with ``own_process`` in a fresh interpreter, for what a process owns (a peak
    resident set, parallel launchers' workers, stdin)."""
    env = {"GEOMSWEEP_CACHE": str(cache_dir), "MLFLOW_TRACKING_URI": tracking_uri}
    if own_process or _spawns_workers(args):
        proc = _in_subprocess(args, cwd, env)
    else:
        proc = _in_this_process(args, cwd, env)
    if check and proc.returncode != 0:
        raise AssertionError(f"geomsweep failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _spawns_workers(args: list[str]) -> bool:
    """A launcher whose workers would inherit this process's state (joblib's reusable loky pool, submitit, ray)."""
    return any(arg.startswith("hydra/launcher=") for arg in args)


def _in_subprocess(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO), **{k: v for k, v in env.items() if v is not None}}
    if env["MLFLOW_TRACKING_URI"] is None:
        full.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "geomsweep", *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=600
    )


def _in_this_process(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    import logging
    import signal
    from contextlib import redirect_stderr, redirect_stdout

    import mlflow
    from hydra.core.global_hydra import GlobalHydra
    from mlflow.tracking._tracking_service import utils as tracking_utils

    import geomsweep.__main__ as app

    saved = os.environ.copy(), os.getcwd(), sys.argv, signal.getsignal(signal.SIGTERM)
    root = logging.getLogger()
    saved_logging = root.handlers[:], root.level
    stdout, stderr = io.StringIO(), io.StringIO()
    returncode = 0
    try:
        os.chdir(cwd)
        os.environ.update({key: value for key, value in env.items() if value is not None})
        for key in [key for key, value in env.items() if value is None]:
            os.environ.pop(key, None)
        sys.argv = ["geomsweep", *args]
        with redirect_stdout(stdout), redirect_stderr(stderr):
            try:
                app.entry()
            except SystemExit as exit_:  # as the interpreter reports it: a message goes to stderr with status 1
                if isinstance(exit_.code, int) or exit_.code is None:
                    returncode = exit_.code or 0
                else:
                    print(exit_.code, file=sys.stderr)
                    returncode = 1
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        tracking_utils._tracking_uri = None  # the next run reads MLFLOW_TRACKING_URI again, as a new process would
        GlobalHydra.instance().clear()
        os.environ.clear()
        os.environ.update(saved[0])
        os.chdir(saved[1])
        sys.argv = saved[2]
        signal.signal(signal.SIGTERM, saved[3])
        root.handlers[:] = saved_logging[0]
        root.setLevel(saved_logging[1])
    return subprocess.CompletedProcess(["geomsweep", *args], returncode, stdout.getvalue(), stderr.getvalue())


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


GOLDEN = REPO / "tests" / "golden"


def assert_keys_pinned(name: str, keys) -> None:
    """The keys a run carries equal the golden list ``tests/golden/<name>.txt``: a key never changes its spelling
    (runs written before and after must compare). GEOMSWEEP_PIN_KEYS=1 writes the list anew, for a key *added*."""
    path = GOLDEN / f"{name}.txt"
    keys = sorted(set(keys))
    if os.environ.get("GEOMSWEEP_PIN_KEYS") == "1":
        path.write_text("\n".join(keys) + "\n")
    assert keys == path.read_text().split("\n")[:-1], f"the keys differ from {path.relative_to(REPO)}"


def own_keys(run, trainer: str | None = None) -> list[str]:
    """A run's metric keys (less the trainer's own, logged under ``trainer/``) and its ``geomsweep.`` tag keys."""
    metrics = [f"metric {key}" for key in run.data.metrics if not (trainer and key.startswith(f"{trainer}/"))]
    return metrics + [f"tag {key}" for key in run.data.tags if key.startswith("geomsweep.")]


@contextmanager
def a_job_writing_to_a_server(tmp_path, cache_dir, args):
    """(server process, job process, server URI): a local MLflow server, and a job writing to it under MLflow's
    own HTTP defaults less geomsweep's budget, yielded once the job's run exists; the server is stopped after."""
    import mlflow

    port = free_port()
    proc = tracking_server.start(
        "127.0.0.1", port, f"sqlite:///{tmp_path / 'server.db'}", str(tmp_path / "art"), tmp_path / "server.log"
    )
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "GEOMSWEEP_CACHE": str(cache_dir), "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri}
    for key in [k for k in env if k.startswith("MLFLOW_HTTP_REQUEST_")]:
        env.pop(key)
    try:
        job = subprocess.Popen(
            [sys.executable, "-m", "geomsweep", *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        client = mlflow.MlflowClient(uri)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and job.poll() is None:
            experiment = client.get_experiment_by_name("geomsweep")
            if experiment and client.search_runs([experiment.experiment_id]):
                break
            time.sleep(0.3)
        yield proc, job, uri
    finally:
        tracking_server.stop(proc)
