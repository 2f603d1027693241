"""Liveness by lease: a RUNNING run on another host is alive while its heartbeat is fresh (its cell is skipped,
naming it), dead once the lease is stale (KILLED, the cell re-run); on this host a PID that now names another
process is dead; ``tracking.force=true`` always runs the cell."""

import os
import socket
import time

import mlflow
import pytest

from tests.conftest import GEOMETRY_ONLY, run_app, runs_of

CELL = ["checkpoint=final", *GEOMETRY_ONLY]


def pretend_running(client, run_id: str, **tags) -> None:
    """The run as a job elsewhere would leave it while it runs: RUNNING, with these process and lease tags."""
    client.update_run(run_id, status="RUNNING")
    for key, value in tags.items():
        client.set_tag(run_id, f"geomsweep.{key}", value)


@pytest.mark.slow
def test_two_hosts_share_a_store_without_running_a_live_cell_twice(tmp_path, cache_dir, tiny_checkpoints, store):
    run_app(CELL, tmp_path, cache_dir, store)
    (first,) = runs_of(store, "job")
    client = mlflow.MlflowClient(store)

    # another host runs the cell now: its lease is fresh, so the cell is skipped and its run left alone
    pretend_running(client, first.info.run_id, host="node-b", pid="4242", heartbeat=f"{time.time():.0f}")
    proc = run_app(CELL, tmp_path, cache_dir, store)
    assert f"is running now in run {first.info.run_id} (process 4242 on node-b)" in proc.stdout
    assert [r.info.status for r in runs_of(store, "job")] == ["RUNNING"]

    # that host died: its lease is stale, so the run is KILLED and the cell runs again
    pretend_running(client, first.info.run_id, heartbeat=f"{time.time() - 3600:.0f}")
    run_app(CELL, tmp_path, cache_dir, store)
    statuses = {r.info.run_id: r.info.status for r in runs_of(store, "job")}
    assert statuses.pop(first.info.run_id) == "KILLED" and list(statuses.values()) == ["FINISHED"]
    assert "ended without closing the run" in client.get_run(first.info.run_id).data.tags["geomsweep.error"]


@pytest.mark.slow
def test_a_reused_pid_on_this_host_is_dead_and_force_always_runs(tmp_path, cache_dir, tiny_checkpoints, store):
    run_app(CELL, tmp_path, cache_dir, store)
    (first,) = runs_of(store, "job")
    client = mlflow.MlflowClient(store)
    # a container restarted under the same hostname: the PID is alive, but it is this test, not the job
    pretend_running(
        client, first.info.run_id, host=socket.gethostname(), pid=str(os.getpid()), pid_start="1", heartbeat="0"
    )
    run_app(CELL, tmp_path, cache_dir, store)
    assert client.get_run(first.info.run_id).info.status == "KILLED"
    # a live run elsewhere does not stop tracking.force=true
    (second,) = [r for r in runs_of(store, "job") if r.info.status == "FINISHED"]
    pretend_running(client, second.info.run_id, host="node-b", pid="1", heartbeat=f"{time.time():.0f}")
    run_app([*CELL, "tracking.force=true"], tmp_path, cache_dir, store)
    assert sum(r.info.status == "FINISHED" for r in runs_of(store, "job")) == 1
    assert client.get_run(second.info.run_id).info.status == "RUNNING"  # not touched: it is alive
