"""``RunLogger``: the one writer to MLflow. Every param, metric, tag, artifact and status change geomsweep makes
goes through it, bound to a run id (so workers never rely on a global active run)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data
import pandas as pd
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.utils import mlflow_tags
from omegaconf import DictConfig, OmegaConf

from geomsweep.keys.tags import TAG_ERROR, TAG_PROBE_DIGEST
from geomsweep.tracking.identity import flatten
from geomsweep.tracking.server import healthy

MAX_TAG_CHARS = 5000

# Store writes of the main thread under way, and what a signal handler asked to run once they end.
_open_writes = 0
_after_writes: list[Callable[[], None]] = []


@contextmanager
def one_write() -> Iterator[None]:
    """A store write that a signal handler must not cut in half: a sqlite transaction interrupted by an exception
    keeps its lock, and every write after it (the run's FAILED or KILLED status) waits on that lock until it times
    out. What ``when_no_write`` deferred runs as the write ends (signal handlers run in the main thread only)."""
    global _open_writes
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _open_writes += 1
    try:
        yield
    finally:
        _open_writes -= 1
        if not _open_writes and _after_writes:
            _after_writes.pop()()


def when_no_write(action: Callable[[], None]) -> None:
    """Run ``action`` (a signal handler's: it may raise) now, or as soon as the main thread's store write ends."""
    if _open_writes:
        _after_writes[:] = [action]
    else:
        action()


class _WholeWrites:
    """An MlflowClient whose every call is ``one_write``."""

    def __init__(self, client: mlflow.MlflowClient):
        self._client = client

    def __getattr__(self, name: str):
        method = getattr(self._client, name)

        @functools.wraps(method)
        def whole(*args, **kwargs):
            with one_write():
                try:
                    return method(*args, **kwargs)
                except Exception:
                    give_up_on_a_silent_server()
                    raise

        return whole


SILENT_SERVER = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "1"}


def give_up_on_a_silent_server() -> None:
    """After a failed call to a tracking server that no longer answers its health check, every later call of this
    process (MLflow reads these at each request) gets one try of 1 s: a frozen server then costs the job one
    call's budget (store.HTTP_BUDGET), not that budget again for each write that follows."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")) and not healthy(uri, timeout=2):
        os.environ.update(SILENT_SERVER)


class RunLogger:
    """Every MLflow write of one run."""

    def __init__(self, run_id: str, client: mlflow.MlflowClient | None = None):
        self.run_id = run_id
        self.client = _WholeWrites(client or mlflow.MlflowClient())

    @classmethod
    def create(cls, experiment_id: str, name: str, tags: dict[str, str], client=None) -> RunLogger:
        """A new run, not made active (a sweep parent or a trace roll-up, written to from outside)."""
        client = client or mlflow.MlflowClient()
        with one_write():
            run = client.create_run(experiment_id, run_name=name[:250], tags=tags)
        return cls(run.info.run_id, client)

    @property
    def name(self) -> str:
        """The run's name (figures are titled with it)."""
        return self.client.get_run(self.run_id).info.run_name or self.run_id

    def config(self, cfg: DictConfig) -> None:
        """Params (``cfg.<dotted.key>``, batched) and the resolved YAML as an artifact."""
        self.params(flatten(cfg))
        self.text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")

    def params(self, values: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in values.items()])

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.history({key: {step: value} for key, value in values.items()})

    def history(self, series: dict[str, dict[int, float]]) -> None:
        """Many (key, step, value) points in one batched call."""
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[
                Metric(key, float(value), now, step)
                for key, by_step in series.items()
                for step, value in by_step.items()
            ],
        )

    def tags(self, values: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:MAX_TAG_CHARS]) for k, v in values.items()])

    def text(self, content: str, path: str) -> None:
        self.client.log_text(self.run_id, content, path)

    def figure(self, fig, path: str) -> None:
        self.client.log_figure(self.run_id, fig, path)

    def table(self, frame, path: str) -> None:
        """A CSV artifact."""
        self.text(frame.to_csv(index=False), path)

    def file(self, local_path: str | Path, path: str) -> None:
        """A local file into the artifact folder ``path``."""
        self.client.log_artifact(self.run_id, str(local_path), path)

    def directory(self, local_dir: str | Path, path: str) -> None:
        """A directory (a saved model) as the artifact folder ``path``."""
        self.client.log_artifacts(self.run_id, str(local_dir), path)

    def document(self, content, path: str) -> None:
        """A JSON artifact; what JSON cannot hold is written as its text."""
        self.text(json.dumps(content, indent=1, default=str), path)

    def json_table(self, columns: dict[str, list] | pd.DataFrame, path: str) -> None:
        """An MLflow table (readable in the UI's artifact view and through ``mlflow.load_table``)."""
        self.client.log_table(self.run_id, columns, path)

    def probe_input(self, texts: list[str], name: str) -> str:
        """The probe texts as the run's MLflow dataset input (context ``probe``, in the UI's Datasets column), with
        a digest of all of them; returns the digest."""
        digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
        dataset = mlflow.data.from_pandas(pd.DataFrame({"text": texts}), name=name, digest=digest)
        context = InputTag(key=mlflow_tags.MLFLOW_DATASET_CONTEXT, value="probe")
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[context])])
        self.tags({TAG_PROBE_DIGEST: digest})
        return digest

    def failure(self, err: BaseException) -> None:
        """The reason as a tag, the traceback as ``error.txt``."""
        self.tags({TAG_ERROR: f"{type(err).__name__}: {err}"})
        self.text(traceback.format_exc(), "error.txt")

    def end(self, status: str, reason: str | None = None) -> None:
        """Close the run with ``status`` (FINISHED, FAILED, KILLED), the reason as its error tag."""
        if reason is not None:
            self.tags({TAG_ERROR: reason})
        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:  # the job's own run: also leave it inactive
            mlflow.end_run(status)
        else:
            self.client.set_terminated(self.run_id, status)

    def delete(self) -> None:
        """Delete the run (a roll-up rebuilt from scratch replaces its earlier one)."""
        self.client.delete_run(self.run_id)
