"""Whether a RUNNING run is still alive, on any host, and what to do with earlier runs of a cell.

A running job holds a lease on its run: a daemon thread refreshes the run's ``geomsweep.heartbeat`` tag every
``HEARTBEAT_S``. A RUNNING run is alive while its lease is fresh (younger than ``LEASE_S``), wherever it runs. On
its own host a run is also dead as soon as its process is gone, or when its PID now names another process (the
process start time differs: a container restarted under the same hostname). Earlier runs of a cell: a FINISHED
one means the cell is done (skipped unless ``tracking.force``), a live RUNNING one is the cell running now
(skipped, naming the run, unless forced), a dead RUNNING one is marked KILLED, a FAILED one is run again.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow

from geomsweep.keys.tags import (
    ROLE_JOB,
    TAG_CONFIG_HASH,
    TAG_HEARTBEAT,
    TAG_HOST,
    TAG_PID,
    TAG_PID_START,
    TAG_ROLE,
)
from geomsweep.tracking.store import sqlite_path, tracking_uri
from geomsweep.tracking.writer import RunLogger

HEARTBEAT_S = 30.0
LEASE_S = 4 * HEARTBEAT_S  # a lease not refreshed for this long belongs to a dead job


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None where that cannot be read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_tags() -> dict[str, str]:
    pid = os.getpid()
    return {TAG_HOST: socket.gethostname(), TAG_PID: str(pid), TAG_PID_START: process_start(pid) or "", **beat()}


def beat() -> dict[str, str]:
    return {TAG_HEARTBEAT: f"{time.time():.0f}"}


def process_alive(run) -> bool:
    """Whether the process that opened ``run`` still runs: by its PID on this host, else by its lease."""
    tags = run.data.tags
    if tags.get(TAG_HOST) == socket.gethostname() and tags.get(TAG_PID, "").isdigit():
        pid = int(tags[TAG_PID])
        if pid == os.getpid():  # this process runs jobs one after another: not that one now
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        started = tags.get(TAG_PID_START)
        return not started or started == process_start(pid)  # a PID reused by another process: dead
    last = float(tags.get(TAG_HEARTBEAT) or run.info.start_time / 1000)
    return time.time() - last < LEASE_S


@contextmanager
def lease(run_id: str, every_s: float = HEARTBEAT_S) -> Iterator[None]:
    """Inside the block, a daemon thread refreshes the run's heartbeat every ``every_s`` seconds (cheap: one tag)."""
    stop = threading.Event()
    log = RunLogger(run_id, mlflow.MlflowClient())

    def refresh() -> None:
        while not stop.wait(every_s):
            try:
                log.tags(beat())
            except Exception:  # a store that cannot be reached now: the job itself will say so
                pass

    thread = threading.Thread(target=refresh, name="geomsweep-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def mark_killed(run) -> None:
    """End a run whose process died without closing it."""
    tags = run.data.tags
    reason = f"killed: process {tags.get(TAG_PID, '?')} on {tags.get(TAG_HOST, '?')} ended without closing the run"
    RunLogger(run.info.run_id).end("KILLED", reason)


def cell_runs(client, experiment_id: str, identity: str, status: str | None = None, max_results: int = 1000):
    query = f"tags.`{TAG_CONFIG_HASH}` = '{identity}' and tags.`{TAG_ROLE}` = '{ROLE_JOB}'"
    if status:
        query += f" and attributes.status = '{status}'"
    return client.search_runs([experiment_id], filter_string=query, max_results=max_results)


@dataclass(frozen=True)
class Earlier:
    """What the store says of a cell before it runs: its FINISHED run, or a live RUNNING one (either may be None)."""

    finished: object = None
    running: object = None


def earlier_runs(experiment_id: str, identity: str, force: bool = False) -> Earlier:
    """This cell's FINISHED run and a RUNNING run that is alive (both None when ``force``); RUNNING runs whose
    process is dead are marked KILLED on the way."""
    runs = cell_runs(mlflow.MlflowClient(), experiment_id, identity)
    running = None
    for run in runs:
        if run.info.status == "RUNNING":
            if process_alive(run):
                running = running or run
            else:
                mark_killed(run)
    client = mlflow.MlflowClient()
    finished = next((r for r in runs if r.info.status == "FINISHED" and artifacts_intact(client, r)), None)
    return Earlier() if force else Earlier(finished, running)


def artifacts_intact(client, run) -> bool:
    """Whether a FINISHED run still has what every job logs first (``config.yaml``): one whose artifacts were
    deleted is no result to reuse, and its cell runs again."""
    try:
        intact = any(a.path == "config.yaml" for a in client.list_artifacts(run.info.run_id))
    except Exception:  # an artifact store that cannot be listed: the run's record is still trusted
        return True
    if not intact:
        print(
            f"geomsweep: run {run.info.run_id} of this cell FINISHED, but its artifacts are gone "
            f"({run.info.artifact_uri} holds no config.yaml): the cell runs again"
        )
    return intact


def finished_cell(identity: str, tracking_cfg) -> str | None:
    """The id of a cell's FINISHED run, looked up without creating a store or an experiment (``plan=true``);
    None when there is none or the store cannot be read."""
    uri = tracking_uri(tracking_cfg)
    path = sqlite_path(uri)
    if path is not None and not path.exists():
        return None
    try:
        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name(tracking_cfg.experiment)
        if experiment is None:
            return None
        runs = cell_runs(client, experiment.experiment_id, identity, status="FINISHED", max_results=1)
    except Exception:  # an unreachable server: the plan shows every cell as one to run
        return None
    return runs[0].info.run_id if runs else None
