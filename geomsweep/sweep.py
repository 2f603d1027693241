"""The sweep's MLflow parent run, from a Hydra callback in the main process.

Before any job: the store and experiment are created once; sweep parents left RUNNING by a killed sweep on
this host are marked KILLED; the parent is created (found again by its ``geomsweep.sweep_dir`` tag). After the
last job: jobs that each measured part of one trace become one trace run (rollup.py); a summary of every cell
(this sweep's runs and the earlier FINISHED runs it reused) goes to the parent as ``summary.csv`` and an MLflow
table; the parent ends FAILED if any cell failed, and the exit status says so. With ``tracking=server`` and
``tracking.server.start``, a local ``mlflow server`` lives exactly as long as the sweep (or single run).
"""

from __future__ import annotations

import atexit
import logging
import socket
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from geomsweep import server, tracking
from geomsweep.phases import PhaseRule
from geomsweep.rollup import roll_up_traces
from geomsweep.schema import check

logger = logging.getLogger(__name__)
SEQUENTIAL_LAUNCHERS = (None, "basic")
HEADLINE_METRICS = (
    "geometry/rankme",
    "geometry/alpha_req",
    "eval/probe_loss",
    "eval/long_range_acc",
    "behavior/ngram_alignment",
    "behavior/pass_at_1",
    "eval/id_acc",
    "eval/ood_acc",
)


def close_stale_sweeps(client, experiment_id: str) -> None:
    for run in client.search_runs(
        [experiment_id], filter_string=f"tags.`{tracking.TAG_ROLE}` = 'sweep' and attributes.status = 'RUNNING'"
    ):
        if run.data.tags.get(tracking.TAG_HOST) == socket.gethostname() and not tracking.process_alive(run):
            tracking.mark_killed(client, run)


def cells(client, experiment_id: str, parent_id: str) -> list:
    """This sweep's job runs and the earlier FINISHED runs it reused, by run name."""
    children = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{tracking.TAG_PARENT}` = '{parent_id}' and tags.`{tracking.TAG_ROLE}` = 'job'",
    )
    tags = client.get_run(parent_id).data.tags
    reused = [client.get_run(run_id) for key, run_id in tags.items() if key.startswith(tracking.TAG_REUSED_PREFIX)]
    return sorted(children + reused, key=lambda r: r.info.run_name or "")


def summary(runs, parent_id: str) -> pd.DataFrame:
    """One row per cell: name, status, where it ran, the error if any, and the latest headline metrics."""
    rows = []
    for run in runs:
        metrics = run.data.metrics
        rows.append(
            {
                "cell": run.info.run_name,
                "status": run.info.status,
                "run_id": run.info.run_id,
                "source": "this sweep" if run.data.tags.get(tracking.TAG_PARENT) == parent_id else "earlier run",
                "config_hash": run.data.tags.get(tracking.TAG_CONFIG_HASH, ""),
                **{key: metrics.get(key) for key in HEADLINE_METRICS if key in metrics},
                "error": run.data.tags.get(tracking.TAG_ERROR, ""),
            }
        )
    return pd.DataFrame(rows)


def close_sweep(client, experiment_id: str, parent_id: str) -> pd.DataFrame:
    """Log the summary on the parent and end it FINISHED, or FAILED when a cell failed; returns the summary."""
    table = summary(cells(client, experiment_id, parent_id), parent_id)
    failed = table[table["status"] != "FINISHED"] if len(table) else table
    client.log_text(parent_id, table.to_csv(index=False), "summary.csv")
    if len(table):
        client.log_table(parent_id, table.astype(str), "summary.json")
    client.set_tag(parent_id, tracking.TAG_CELLS, str(len(table)))
    client.set_tag(parent_id, tracking.TAG_FAILED_CELLS, ", ".join(failed["cell"]) if len(failed) else "none")
    client.set_terminated(parent_id, "FAILED" if len(failed) else "FINISHED")
    return table


def check_cells(config: DictConfig) -> int:
    """Compose and check every cell of the sweep (the basic sweeper's cross product of the command line) before
    anything starts: one bad value stops the whole sweep at once, naming its cell, instead of failing that cell
    after the others have run. Returns the number of cells (0 for other sweepers, whose cells are checked as they
    start)."""
    if config.hydra.runtime.choices.get("hydra/sweeper") != "basic":
        return 0
    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    (cells,) = BasicSweeper.split_arguments(parsed, None)
    for cell in cells:
        try:
            check(compose(config.hydra.job.config_name, overrides=cell))
        except Exception as err:
            raise SystemExit(
                f"geomsweep: invalid config in cell {' '.join(cell)}: {str(err).splitlines()[0]}"
            ) from None
    return len(cells)


_SERVER = []  # the local server process, if this process started one (kept off the callback: launchers pickle it)


class SweepCallback(Callback):
    # a local tracking server for the lifetime of the sweep or single run ----------------------------------
    def _start_server(self, config: DictConfig, output_dir: str) -> None:
        spec = config.tracking.get("server")
        if not spec or not spec.start or _SERVER or server.healthy(f"http://{spec.host}:{spec.port}"):
            return
        _SERVER.append(
            server.start(
                spec.host,
                spec.port,
                spec.backend_store_uri,
                spec.artifacts_destination,
                Path(output_dir) / "mlflow-server.log",
            )
        )
        atexit.register(self._stop_server)  # also when the sweep dies before on_multirun_end

    @staticmethod
    def _stop_server() -> None:
        while _SERVER:
            proc = _SERVER.pop()
            server.stop(proc)
            print(
                f"geomsweep: stopped the local MLflow server; its store stays readable with: "
                f"mlflow ui {' '.join(proc.args[proc.args.index('--backend-store-uri') :])} --port 5000"
            )

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._start_server(config, config.hydra.run.dir)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._stop_server()

    # the sweep parent ---------------------------------------------------------------------------------------
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_cells(config)
        self._start_server(config, config.hydra.sweep.dir)
        try:
            experiment_id = tracking.setup_store(config.tracking)
        except tracking.StoreError as err:
            raise SystemExit(f"geomsweep: {err}") from None
        launcher = config.hydra.runtime.choices.get("hydra/launcher")
        if launcher not in SEQUENTIAL_LAUNCHERS and mlflow.get_tracking_uri().startswith("sqlite"):
            logger.warning(
                "hydra/launcher=%s runs jobs at the same time, but %s takes one writer at a time "
                "(jobs may fail with 'database is locked'): use tracking=server",
                launcher,
                mlflow.get_tracking_uri(),
            )
        client = mlflow.MlflowClient()
        close_stale_sweeps(client, experiment_id)
        directory = tracking.sweep_dir(config.hydra)
        if tracking.find_sweep_parent(experiment_id, directory) is None:
            run = client.create_run(
                experiment_id,
                run_name=f"sweep {Path(directory).parent.name}/{Path(directory).name}",
                tags={
                    tracking.TAG_SWEEP_DIR: directory,
                    tracking.TAG_ROLE: "sweep",
                    **tracking.process_tags(),
                    tracking.TAG_SWEPT: ",".join(tracking.swept_keys(list(config.hydra.overrides.task))),
                },
            )
            client.log_text(run.info.run_id, " ".join(config.hydra.overrides.task), "overrides.txt")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            experiment_id = tracking.setup_store(config.tracking)
            parent = tracking.find_sweep_parent(experiment_id, tracking.sweep_dir(config.hydra))
            if parent is None:
                return
            client = mlflow.MlflowClient()
            roll_up_traces(client, experiment_id, parent, PhaseRule(**config.phases))
            table = close_sweep(client, experiment_id, parent)
            print(tracking.results_message(client.get_run(parent)))
        finally:
            self._stop_server()
        failed = table[table["status"] != "FINISHED"] if len(table) else table
        if len(failed):
            raise SystemExit(
                f"geomsweep: {len(failed)} of {len(table)} cells did not finish: "
                + "; ".join(f"{c} ({s}: {e})" for c, s, e in zip(failed["cell"], failed["status"], failed["error"]))
            )
