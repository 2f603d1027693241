"""Where runs are kept: the tracking URI, the store made once (under a lock on sqlite), the experiment's id."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import mlflow
from filelock import FileLock, Timeout
from hydra.core.hydra_config import HydraConfig

from geomsweep.tracking.server import healthy

DEFAULT_URI = "sqlite:///mlflow.db"  # MLflow's own default store, and tracking=sqlite's
EXPERIMENT_KIND, MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"
STORE_LOCK_TIMEOUT_S = 120  # longer than any store creation; a lock held past it is a stuck process
# A tracking server that stops answering costs a job seconds, not MLflow's default minutes (7 retries with
# exponential backoff on every call, 120 s timeouts): geomsweep's defaults, unless the environment sets them. One
# call then gives up within about 17 s; once a call has failed and the server does not answer its health check,
# every later call (the run's failure, its status, MLflow's own at exit) gets one try of 1 s (writer.py): the
# whole job ends within 30 s of the server freezing, not a timeout per call multiplied.
HTTP_BUDGET = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "8",
}


class StoreError(RuntimeError):
    """The tracking store cannot be reached or written: one line naming it, before any run opens."""


def tracking_uri(tracking_cfg=None) -> str:
    """``MLFLOW_TRACKING_URI`` wins over the config (or, without one, the default store), as everywhere in MLflow.
    A relative sqlite path is the folder geomsweep was started from, also when Hydra changes into a job's own
    output folder (``hydra.job.chdir=true``): every job of a sweep, and every re-run, finds the same store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or (str(tracking_cfg.uri) if tracking_cfg else DEFAULT_URI)
    path = sqlite_path(uri)
    if path is not None and not path.is_absolute() and HydraConfig.initialized():
        return f"sqlite:///{Path(HydraConfig.get().runtime.cwd) / path}"
    return uri


def store_fault(err: BaseException, experiment: str | None = None) -> StoreError | None:
    """When ``err`` came from the store itself (a disk out of space, a server that stopped answering), the one line
    to say instead, naming what failed, the fix and the run's true status; None for any other error. A full disk
    is named by its path: the sqlite store's (the run's status could not be written) or ``experiment``'s artifact
    location (the store still works: the run ended FAILED)."""
    uri = mlflow.get_tracking_uri()
    path = sqlite_path(uri)
    text = f"{err} {err.__cause__ or ''} {err.__context__ or ''}"
    after = "its run stays RUNNING until the next run of the cell marks it KILLED"
    if "database or disk is full" in text or "No space left on device" in text:
        artifacts = local_artifact_root(experiment)
        store_full = "database or disk is full" in text or (path is not None and disk_full(path.parent))
        if path is not None and store_full and not (artifacts is not None and disk_full(artifacts)):
            return StoreError(
                f"the MLflow store {path} ran out of disk space (sqlite: database or disk is full): free space on "
                f"its disk or point tracking.uri at another; {after}"
            )
        if artifacts is not None and disk_full(artifacts):
            return StoreError(
                f"the disk holding the run's artifacts ({artifacts}) is full (No space left on device): free space "
                f"there or give the experiment another artifact location; the run ended FAILED with the reason"
            )
        places = [
            f"{where} ({shutil.disk_usage(existing(where)).free >> 20} MB free)" for where in (path, artifacts) if where
        ]
        return StoreError(
            f"a disk ran out of space (No space left on device) while the job wrote to {' or '.join(places)}: free "
            f"space there; the run's status says how far it got"
        )
    if uri.startswith(("http://", "https://")) and not healthy(uri, timeout=2):
        return StoreError(
            f"the MLflow server at {uri} stopped answering ({type(err).__name__}); nothing more could be logged, "
            f"and {after} (its lease is stale)"
        )
    return None


def local_artifact_root(experiment: str | None) -> Path | None:
    """The experiment's artifact location when it is a local folder (None when unknown or remote)."""
    try:
        found = mlflow.MlflowClient().get_experiment_by_name(experiment) if experiment else None
    except Exception:  # the store itself is what failed
        return None
    location = found.artifact_location if found else ""
    local = location.removeprefix("file://") if location.startswith(("file://", "/")) else None
    return Path(local) if local else None


def existing(path: Path) -> Path:
    """``path`` or its nearest parent that exists (a disk's free space is asked of a path on it)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_full(path: Path, headroom: int = 1 << 20) -> bool:
    """Whether the disk holding ``path`` has less than ``headroom`` bytes free."""
    return shutil.disk_usage(existing(path)).free < headroom


def sqlite_path(uri: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :]) if uri.startswith(prefix) and uri != prefix + ":memory:" else None


def writable_sqlite(path: Path) -> None:
    """The sqlite file's directory exists (made if needed) and takes a file, or a StoreError naming the path:
    a lock that cannot be created would otherwise be retried forever."""
    lock = Path(str(path) + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a"):
            pass
    except OSError as err:
        raise StoreError(
            f"cannot write the MLflow store {path} ({err.strerror or type(err).__name__}: {err.filename or lock}); "
            f"point tracking.uri or MLFLOW_TRACKING_URI at a writable place, e.g. sqlite:///$PWD/mlflow.db"
        ) from None


def intact_sqlite(path: Path) -> None:
    """An existing sqlite store passes sqlite's own ``quick_check`` and holds MLflow's tables only, or a StoreError
    naming the file and the fix: writing into a damaged store loses data, an empty file is a truncated store, not
    a new one, and another program's database would get MLflow's tables added to it."""
    if not path.exists():
        return
    fix = f"restore {path} from a backup, or move it aside to start a new store"
    if path.stat().st_size == 0:
        raise StoreError(f"the MLflow store {path} is an empty file (0 bytes), not a store: {fix}")
    tables = []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=20)) as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            if verdict == "ok":
                tables = sorted(row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    except sqlite3.DatabaseError as err:
        verdict = str(err)
    if verdict != "ok":
        raise StoreError(f"the MLflow store {path} is damaged (sqlite: {verdict}): {fix}")
    if tables and "alembic_version" not in tables:  # MLflow's own tables come with their migration record
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise StoreError(
            f"{path} is a SQLite database of another program ({len(tables)} tables: {shown}), not an MLflow store; "
            f"MLflow would add its own tables to it: point tracking.uri at a file of its own, e.g. "
            f"sqlite:///$PWD/mlflow.db"
        )


def setup_store(tracking_cfg) -> str:
    """Point MLflow at the store, create it and the experiment if needed; return the experiment id.

    On sqlite this happens under a file lock: parallel processes creating one fresh sqlite store all fail."""
    uri = tracking_uri(tracking_cfg)
    if uri.startswith(("http://", "https://")):
        for key, value in HTTP_BUDGET.items():
            os.environ.setdefault(key, value)
        if not healthy(uri, timeout=10):
            raise StoreError(
                f"no MLflow server answers at {uri}: start one (mlflow server --host 127.0.0.1 "
                f"--port ...), or use tracking=server with tracking.server.start=true, or the "
                f"single-machine default tracking=sqlite"
            )
    mlflow.set_tracking_uri(uri)
    path = sqlite_path(uri)
    if path is None:
        return experiment_id(tracking_cfg.experiment)
    writable_sqlite(path)
    intact_sqlite(path)
    lock = FileLock(str(path) + ".lock")
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:  # held: say so now, not after the wait
            print(
                f"geomsweep: waiting up to {STORE_LOCK_TIMEOUT_S} s for {path}.lock (another geomsweep process is "
                f"creating the store)",
                file=sys.stderr,
            )
            lock.acquire(timeout=STORE_LOCK_TIMEOUT_S)
    except Timeout:
        raise StoreError(
            f"the MLflow store {path} stayed locked for {STORE_LOCK_TIMEOUT_S} s ({path}.lock): another geomsweep "
            f"process is creating it, or one died holding the lock; if none runs, delete {path}.lock"
        ) from None
    try:
        return experiment_id(tracking_cfg.experiment)
    finally:
        lock.release()


def experiment_id(name: str) -> str:
    """The experiment's id, created if it does not exist yet, and marked as model development so that every entry
    of MLflow 3's UI opens it on its runs (MLflow reads the tag ``mlflow.experimentKind``; one already set by the
    user is left as it is)."""
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise StoreError(
            f"the experiment tracking.experiment={name!r} (id {experiment.experiment_id}) is deleted in "
            f"{mlflow.get_tracking_uri()}: restore it (mlflow experiments restore --experiment-id "
            f"{experiment.experiment_id}, with MLFLOW_TRACKING_URI set to that store) or name another with "
            f"tracking.experiment=<name>"
        )
    if experiment is None:
        try:
            client.create_experiment(name, tags={EXPERIMENT_KIND: MODEL_DEVELOPMENT})
        except mlflow.exceptions.MlflowException:  # created concurrently by another process (a server store)
            pass
        experiment = client.get_experiment_by_name(name)
    if EXPERIMENT_KIND not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_DEVELOPMENT)
    return experiment.experiment_id


def quoted(value: str) -> str:
    """``value`` as a string literal of an MLflow filter: single quotes, or double quotes when it holds a single
    quote (a sweep folder such as ``/home/o'brien/...``)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{value!r} holds both quote characters, which an MLflow search cannot match; rename it")
