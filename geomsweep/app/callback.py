"""The Hydra callback (``hydra.callbacks`` in conf/config.yaml): a multirun becomes one MLflow sweep, and a local
tracking server (``tracking=server``) lives exactly as long as the run or sweep that asked for it.

Hydra instantiates the callback before anything else runs, also for a command about to be refused, so this module
imports only the config: the sweep's steps (``app/sweep.py``: MLflow, the plan) are imported once a sweep's cells
are known to be good.
"""

from __future__ import annotations

import weakref
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from geomsweep.config.checks import check
from geomsweep.config.overrides import cell_name, sweep_cells
from geomsweep.config.schema import Config
from geomsweep.tracking.server import local_server


def check_cells(config: DictConfig) -> list[tuple[str, DictConfig, Config]]:
    """Compose and check every cell of the sweep (the basic sweeper's cross product of the command line) before
    anything starts: one bad value stops the whole sweep at once, naming its cell, instead of failing that cell
    after the others have run. Returns the cells as (name, composed config, typed config); [] for other
    sweepers, whose cells are checked as they start."""
    if config.hydra.runtime.choices.get("hydra/sweeper") != "basic":
        return []
    checked = []
    for cell in sweep_cells(config.hydra.overrides.task):
        try:
            composed = compose(config.hydra.job.config_name, overrides=cell)
            checked.append((cell_name(cell), composed, check(composed)))
        except Exception as err:
            raise SystemExit(
                f"geomsweep: invalid config in cell {' '.join(cell)}: {str(err).splitlines()[0]}"
            ) from None
    return checked


class SweepCallback(Callback):
    def __init__(self) -> None:
        self._started = ExitStack()  # what this process started and stops at the end: the local server
        weakref.finalize(self, self._started.close)  # also when Hydra skips on_multirun_end (a job raised)

    def __getstate__(self) -> dict:  # launchers pickle the callback into their workers; what it started stays here
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def _serve(self, config: DictConfig, output_dir: str) -> None:
        try:
            server = local_server(config.tracking.get("server"), Path(output_dir) / "mlflow-server.log")
            self._started.enter_context(server)
        except (RuntimeError, ValueError) as err:  # a port held by another program, a host not this machine
            raise SystemExit(f"geomsweep: {err}") from None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._serve(config, config.hydra.run.dir)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._started.close()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        cells = check_cells(config)
        from geomsweep.app import sweep  # noqa: PLC0415  the heavy steps, once every cell is known to be good
        from geomsweep.app.job import sigterm_ends_run  # noqa: PLC0415

        if config.plan:  # the sweep's cost, printed instead of running it: no parent, no job
            sweep.print_plan(cells)
            raise SystemExit(0)
        sweep.check_runtime(cells)
        self._serve(config, config.hydra.sweep.dir)
        parent = sweep.open_sweep(config, cells)
        self._started.callback(sweep.abandon, parent)  # a sweep that stops early still closes its parent
        self._started.enter_context(sigterm_ends_run())  # SIGTERM between two jobs, too

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from geomsweep.app import sweep  # noqa: PLC0415  (imported by on_multirun_start already)

        try:
            sweep.end_sweep(config)
        finally:
            self._started.close()
