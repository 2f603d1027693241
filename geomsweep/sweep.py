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
import time
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from mlflow.entities import Param
from omegaconf import DictConfig

from geomsweep import plan, server, tracking
from geomsweep.compare import headline, rounded
from geomsweep.phases import PhaseRule
from geomsweep.report import log_comparison, summary
from geomsweep.rollup import roll_up_traces
from geomsweep.schema import Config, check

logger = logging.getLogger(__name__)
SEQUENTIAL_LAUNCHERS = (None, "basic")


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


def close_sweep(client, experiment_id: str, parent_id: str) -> pd.DataFrame:
    """Log the summary on the parent and end it FINISHED, or FAILED when a cell failed; returns the summary."""
    runs = cells(client, experiment_id, parent_id)
    parent = client.get_run(parent_id)
    table = summary(runs, parent_id)
    failed = table[table["status"] != "FINISHED"] if len(table) else table
    client.log_text(parent_id, table.to_csv(index=False), "summary.csv")
    if len(table):
        client.log_table(parent_id, rounded(table), "summary.json")
        try:
            folded = log_comparison(client, parent_id, [r for r in runs if r.info.status == "FINISHED"])
        except Exception as err:  # the comparison is extra: the parent still closes with the cells' status
            logger.warning("geomsweep: the sweep's comparison page failed: %s: %s", type(err).__name__, err)
            folded = None
        if folded is not None:
            swept = parent.data.tags.get(tracking.TAG_SWEPT, "").split(",")
            print("\n".join(f"geomsweep: {line}" for line in headline(folded, swept)))
    client.set_tag(parent_id, tracking.TAG_CELLS, str(len(table)))
    client.set_tag(parent_id, tracking.TAG_FAILED_CELLS, ", ".join(failed["cell"]) if len(failed) else "none")
    client.log_metric(parent_id, "sweep/seconds", time.time() - parent.info.start_time / 1000)
    client.set_terminated(parent_id, "FAILED" if len(failed) else "FINISHED")
    return table


def check_cells(config: DictConfig) -> list[tuple[str, DictConfig, Config]]:
    """Compose and check every cell of the sweep (the basic sweeper's cross product of the command line) before
    anything starts: one bad value stops the whole sweep at once, naming its cell, instead of failing that cell
    after the others have run. Returns the cells as (name, composed config, typed config); [] for other
    sweepers, whose cells are checked as they start."""
    if config.hydra.runtime.choices.get("hydra/sweeper") != "basic":
        return []
    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    (cells,) = BasicSweeper.split_arguments(parsed, None)
    checked = []
    for cell in cells:
        try:
            composed = compose(config.hydra.job.config_name, overrides=cell)
            checked.append((plan.cell_name(cell), composed, check(composed)))
        except Exception as err:
            raise SystemExit(
                f"geomsweep: invalid config in cell {' '.join(cell)}: {str(err).splitlines()[0]}"
            ) from None
    return checked


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
        cells = check_cells(config)
        if config.plan:  # the sweep's cost, printed instead of running it: no parent, no job
            if not cells:
                raise SystemExit(
                    "geomsweep: plan=true covers the basic sweeper's cells; plan other sweeps cell by cell"
                )
            try:
                print(plan.report(cells)[0])
            except Exception as err:  # Hydra would turn it into a warning and launch the jobs
                raise SystemExit(f"geomsweep: plan=true: {err}") from None
            raise SystemExit(0)
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
            overrides = list(config.hydra.overrides.task)
            swept = tracking.swept_keys(overrides)
            varied = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in swept]
            run = client.create_run(
                experiment_id,
                # named by what it compares (method=sft,dpo,rlvr seed=0,1,2), else by when it started
                run_name=" ".join(varied) or f"sweep {Path(directory).parent.name}/{Path(directory).name}",
                tags={
                    tracking.TAG_SWEEP_DIR: directory,
                    tracking.TAG_ROLE: "sweep",
                    **tracking.process_tags(),
                    tracking.TAG_SWEPT: ",".join(swept),
                },
            )
            pairs = (o.lstrip("+~").split("=", 1) for o in varied)
            client.log_batch(run.info.run_id, params=[Param(f"swept.{key}", values) for key, values in pairs])
            client.log_text(run.info.run_id, " ".join(overrides), "overrides.txt")
            try:
                _, planned = plan.report(cells) if cells else ("", None)
            except Exception as err:  # a plan that cannot be made (revisions unknown offline) stops nothing
                logger.warning("geomsweep: no plan logged for this sweep: %s", err)
                planned = None
            if planned is not None:  # beside sweep/seconds at the end: what it was expected to take
                client.log_text(run.info.run_id, planned.to_csv(index=False), "plan.csv")

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
