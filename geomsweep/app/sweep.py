"""The sweep's MLflow parent run, in named steps the Hydra callback (``app/callback.py``) calls in the main process.

Opening (before any job): the store and experiment are created once; sweep parents left RUNNING by a killed sweep on
this host are marked KILLED; the parent is created, named by what the sweep compares, and found again by workers
through its ``geomsweep.sweep_dir`` tag. Closing (after the last job): jobs that each measured part of one trace
become one trace run (rollup.py); a summary of every cell (this sweep's runs and the earlier FINISHED runs it
reused) goes to the parent as ``summary.csv`` and an MLflow table; the parent ends FAILED if any cell failed, and
the exit status says so.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import mlflow
import pandas as pd
from omegaconf import DictConfig

from geomsweep.app.preflight import check_harness, check_memory, check_vllm
from geomsweep.config.errors import ConfigError
from geomsweep.config.overrides import override_key, swept_keys, varied
from geomsweep.config.schema import Config
from geomsweep.core.definitions import PhaseRule
from geomsweep.core.measure import resolve_device
from geomsweep.keys.tags import (
    ROLE_JOB,
    ROLE_SWEEP,
    TAG_CELLS,
    TAG_FAILED_CELLS,
    TAG_HOST,
    TAG_PARENT,
    TAG_PID,
    TAG_REUSED_PREFIX,
    TAG_ROLE,
    TAG_SWEEP_DIR,
    TAG_SWEPT,
)
from geomsweep.results.compare import headline, rounded
from geomsweep.results.messages import results_message, saved_views
from geomsweep.results.report import log_comparison, summary
from geomsweep.results.rollup import roll_up_traces
from geomsweep.trace import plan
from geomsweep.tracking.job_run import find_sweep_parent, sweep_dir
from geomsweep.tracking.liveness import mark_killed, process_alive, process_tags
from geomsweep.tracking.store import StoreError, setup_store
from geomsweep.tracking.writer import RunLogger

logger = logging.getLogger(__name__)
SEQUENTIAL_LAUNCHERS = (None, "basic")
CELL_POLL_S = 5.0  # how often a cell running in another process is looked at, at the end of a sweep
Cells = list[tuple[str, DictConfig, Config]]


def print_plan(cells: Cells) -> None:
    """``plan=true`` for a sweep: every cell's cost, printed instead of running anything."""
    if not cells:
        raise SystemExit("geomsweep: plan=true covers the basic sweeper's cells; plan other sweeps cell by cell")
    try:
        print(plan.plan_table(cells)[0])
    except Exception as err:  # Hydra would turn it into a warning and launch the jobs
        raise SystemExit(f"geomsweep: plan=true: {err}") from None


def check_runtime(cells: Cells) -> None:
    """The checks that need torch, for every cell before any starts: the device, vLLM and the memory plan."""
    for name, _, settings in cells:
        try:
            resolve_device(settings.device)
            check_vllm(settings)
            check_memory(settings)
            check_harness(settings)
        except (ConfigError, ValueError, RuntimeError) as err:
            raise SystemExit(f"geomsweep: invalid config in cell {name}: {err}") from None


def open_store(config: DictConfig) -> str:
    """The experiment's id, the store created once here before any worker writes to it."""
    try:
        return setup_store(config.tracking)
    except StoreError as err:
        raise SystemExit(f"geomsweep: {err}") from None


def warn_parallel_sqlite(config: DictConfig) -> None:
    launcher = config.hydra.runtime.choices.get("hydra/launcher")
    if launcher not in SEQUENTIAL_LAUNCHERS and mlflow.get_tracking_uri().startswith("sqlite"):
        logger.warning(
            "hydra/launcher=%s runs jobs at the same time, but %s takes one writer at a time "
            "(jobs may fail with 'database is locked'): use tracking=server",
            launcher,
            mlflow.get_tracking_uri(),
        )


def close_stale_sweeps(experiment_id: str) -> None:
    """Sweep parents left RUNNING by a sweep on this host whose process is gone -> KILLED."""
    stale = mlflow.MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_ROLE}` = '{ROLE_SWEEP}' and attributes.status = 'RUNNING'"
    )
    for run in stale:
        if run.data.tags.get(TAG_HOST) == socket.gethostname() and not process_alive(run):
            mark_killed(run)


def create_parent(experiment_id: str, config: DictConfig, cells: Cells) -> str:
    """The parent run, named by what it compares (``method=sft,dpo,rlvr seed=0,1,2``, else by when it started),
    with the swept values as ``swept.*`` params, the command line and the plan."""
    directory = sweep_dir(config.hydra)
    overrides = list(config.hydra.overrides.task)
    swept = swept_keys(overrides)
    compared = varied(overrides, swept)
    name = " ".join(compared) or f"sweep {Path(directory).parent.name}/{Path(directory).name}"
    tags = {TAG_SWEEP_DIR: directory, TAG_ROLE: ROLE_SWEEP, **process_tags(), TAG_SWEPT: ",".join(swept)}
    log = RunLogger.create(experiment_id, name, tags)
    log.params({f"swept.{override_key(o)}": o.split("=", 1)[1] for o in compared})
    log.text(" ".join(overrides), "overrides.txt")
    try:
        _, planned = plan.plan_table(cells) if cells else ("", None)
    except Exception as err:  # a plan that cannot be made (revisions unknown offline) stops nothing
        logger.warning("geomsweep: no plan logged for this sweep: %s", err)
        planned = None
    if planned is not None:  # beside sweep/seconds at the end: what it was expected to take
        log.table(planned, "plan.csv")
    return log.run_id


def open_sweep(config: DictConfig, cells: Cells) -> str:
    """Before the first job: the store, stale parents closed, and this sweep's parent (made once); its run id."""
    experiment_id = open_store(config)
    warn_parallel_sqlite(config)
    close_stale_sweeps(experiment_id)
    return find_sweep_parent(experiment_id, sweep_dir(config.hydra)) or create_parent(experiment_id, config, cells)


def abandon(parent_id: str) -> None:
    """The parent of a sweep that stopped before its end (a signal, or an error Hydra let through, which skips
    on_multirun_end): KILLED, so no sweep is left RUNNING. A parent already closed is left as it is."""
    try:
        if mlflow.MlflowClient().get_run(parent_id).info.status == "RUNNING":
            RunLogger(parent_id).end("KILLED", "the sweep stopped before its last job ended (a signal or an error)")
    except Exception as err:  # the store itself is gone: nothing left to close
        logger.warning("geomsweep: could not close the sweep's parent run %s: %s", parent_id, err)


def cells_of(client, experiment_id: str, parent_id: str) -> list:
    """This sweep's job runs and the earlier FINISHED runs it reused, by run name."""
    children = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_PARENT}` = '{parent_id}' and tags.`{TAG_ROLE}` = '{ROLE_JOB}'",
    )
    tags = client.get_run(parent_id).data.tags
    own = {run.info.run_id for run in children}  # a sweep sharing this parent may have tagged one of them
    reused = [
        client.get_run(run_id)
        for key, run_id in tags.items()
        if key.startswith(TAG_REUSED_PREFIX) and run_id not in own
    ]
    return sorted(children + reused, key=lambda r: r.info.run_name or "")


def wait_for_cells_elsewhere(client, runs: list) -> list:
    """``runs`` once none is RUNNING: at the end of a sweep, a cell still running was started by another process
    (a concurrent sweep over the same cells, or one sharing this sweep's folder), and this sweep's summary depends
    on it. Each is awaited while its process lives (a dead one's run is marked KILLED), said once, polled."""
    settled = []
    for run in runs:
        if run.info.status == "RUNNING":
            tags = run.data.tags
            print(
                f"geomsweep: waiting for cell {run.info.run_name}, running in run {run.info.run_id} (process "
                f"{tags.get(TAG_PID, '?')} on {tags.get(TAG_HOST, '?')}) for another sweep: this summary covers it"
            )
            while run.info.status == "RUNNING":
                if not process_alive(run):
                    mark_killed(run)
                else:
                    time.sleep(CELL_POLL_S)
                run = client.get_run(run.info.run_id)
        settled.append(run)
    return settled


def close_sweep(client, experiment_id: str, parent_id: str) -> pd.DataFrame:
    """Log the summary on the parent and end it FINISHED, or FAILED when a cell failed; returns the summary.
    The summary covers every cell the sweep depends on: those it ran, and those it found FINISHED or running in
    another process (awaited)."""
    runs = wait_for_cells_elsewhere(client, cells_of(client, experiment_id, parent_id))
    parent, log = client.get_run(parent_id), RunLogger(parent_id, client)
    table = summary(runs, parent_id)
    failed = table[table["status"] != "FINISHED"] if len(table) else table
    log.table(table, "summary.csv")
    if len(table):
        log.json_table(rounded(table), "summary.json")
        try:
            folded = log_comparison(client, parent_id, [r for r in runs if r.info.status == "FINISHED"])
        except Exception as err:  # the comparison is extra: the parent still closes with the cells' status
            logger.warning("geomsweep: the sweep's comparison page failed: %s: %s", type(err).__name__, err)
            folded = None
        if folded is not None:
            swept = parent.data.tags.get(TAG_SWEPT, "").split(",")
            print("\n".join(f"geomsweep: {line}" for line in headline(folded, swept)))
    log.tags({TAG_CELLS: str(len(table)), TAG_FAILED_CELLS: ", ".join(failed["cell"]) if len(failed) else "none"})
    log.metrics({"sweep/seconds": time.time() - parent.info.start_time / 1000}, step=0)
    log.end("FAILED" if len(failed) else "FINISHED")
    return table


def end_sweep(config: DictConfig) -> None:
    """After the last job: traces rolled up, the parent closed with the summary, the results printed; exits non-zero
    naming the cells that did not finish."""
    experiment_id = setup_store(config.tracking)
    parent = find_sweep_parent(experiment_id, sweep_dir(config.hydra))
    if parent is None:
        return
    client = mlflow.MlflowClient()
    roll_up_traces(client, experiment_id, parent, PhaseRule(**config.phases))
    table = close_sweep(client, experiment_id, parent)
    closed = client.get_run(parent)
    print(results_message(closed, saved_views(client, closed, cells_of(client, experiment_id, parent))))
    failed = table[table["status"] != "FINISHED"] if len(table) else table
    if len(failed):
        raise SystemExit(
            f"geomsweep: {len(failed)} of {len(table)} cells did not finish: "
            + "; ".join(f"{c} ({s}: {e})" for c, s, e in zip(failed["cell"], failed["status"], failed["error"]))
        )
