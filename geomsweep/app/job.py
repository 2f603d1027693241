"""One Hydra job = one MLflow run: typed config in, measurements and artifacts out, failures recorded.

Read top to bottom: check the config (before anything loads or any run opens), skip a cell that already
FINISHED, open the run, log the config, prepare the model (the toy world is pretrained here, as a step of its
own), then either trace the pretraining checkpoints or hand over to the method's runner (``method.runner``, a
dotted path such as ``geomsweep.post_training.run.post_train``: the app never imports post-training, the config
names it).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import mlflow
from hydra.utils import get_method
from omegaconf import DictConfig

from geomsweep.config.schema import Config
from geomsweep.keys.tags import (
    ROLE_JOB,
    TAG_HOST,
    TAG_PARENT,
    TAG_PID,
    TAG_REUSED_PREFIX,
    TAG_ROLE,
)
from geomsweep.results.messages import results_message, saved_views
from geomsweep.sources.data import ProbeSet, probe_set
from geomsweep.sources.models import model_source, resolve
from geomsweep.trace.run import run_trace
from geomsweep.tracking.identity import config_hash, data_files_digest
from geomsweep.tracking.job_run import in_multirun, job_context, job_run
from geomsweep.tracking.liveness import earlier_runs, process_tags
from geomsweep.tracking.store import setup_store
from geomsweep.tracking.writer import RunLogger, when_no_write


def run_job(cfg: DictConfig, settings: Config) -> None:
    """Run one cell unless it already FINISHED. ``settings`` is ``cfg`` checked and typed (config.checks.check).
    A failure ends the run FAILED with the reason and traceback; in a multirun the job then returns normally,
    so the sweep goes on and its end-of-sweep roll-up (and exit status) reports the failed cells; a single run
    re-raises."""
    experiment_id = setup_store(settings.tracking)
    name, parent = job_context(experiment_id)
    try:
        data = data_files_digest(settings)
        identity = config_hash(cfg, data=data)
        earlier = earlier_runs(experiment_id, identity, force=settings.tracking.force)
    except Exception as err:  # before the cell's run could open: in a sweep, a FAILED row of its own says why
        if not in_multirun():
            raise
        failed_before_running(experiment_id, name, parent, cfg, err)
        return
    if earlier.running is not None:
        if parent is not None:  # the sweep depends on it: its summary awaits it (sweep.wait_for_cells_elsewhere)
            RunLogger(parent).tags({TAG_REUSED_PREFIX + identity: earlier.running.info.run_id})
        tags = earlier.running.data.tags
        print(
            f"geomsweep: skipped {name}: this cell (config hash {identity}) is running now in run "
            f"{earlier.running.info.run_id} (process {tags.get(TAG_PID, '?')} on {tags.get(TAG_HOST, '?')}); "
            f"tracking.force=true runs it again anyway"
        )
        return
    done = earlier.finished
    if done is not None:
        if parent is not None:
            RunLogger(parent).tags({TAG_REUSED_PREFIX + identity: done.info.run_id})
        print(
            f"geomsweep: skipped {name}: this cell (config hash {identity}) already FINISHED in run "
            f"{done.info.run_id}; tracking.force=true runs it again"
        )
        print(results_message(done, saved_views(mlflow.MlflowClient(), done, own_view(done))))
        return
    with sigterm_ends_run(), job_run(experiment_id, identity, name, parent, cfg, settings, data) as run:
        log = RunLogger(run.info.run_id)
        try:
            log.config(cfg)
            measure_and_report(settings, log)
        except BaseException as err:
            log.failure(err)
            if not isinstance(err, Exception):  # KeyboardInterrupt, SystemExit: stop here
                log.end("KILLED")
                raise
            if not in_multirun():
                raise
            log.end("FAILED")
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                traceback.print_exc()
            print(
                f"geomsweep: {name} FAILED ({type(err).__name__}: {err}); the sweep goes on (the traceback is the "
                f"run's error.txt)",
                file=sys.stderr,
            )
            return
    done = mlflow.MlflowClient().get_run(run.info.run_id)
    print(results_message(done, saved_views(mlflow.MlflowClient(), done, own_view(done))))


def own_view(run) -> list:
    """The runs a job's saved view shows (written as it ends): the job alone, or none in a sweep (the sweep's view
    shows its cells)."""
    return [] if in_multirun() else [run]


def failed_before_running(experiment_id: str, name: str, parent: str | None, cfg: DictConfig, err: Exception) -> None:
    """A cell of a sweep that failed before its run opened (its data files unreadable, the store unreadable for
    its identity): a FAILED run with the reason, so the sweep's summary has its row, and the sweep goes on."""
    log = RunLogger.create(
        experiment_id, name, {TAG_ROLE: ROLE_JOB, **process_tags(), **({TAG_PARENT: parent} if parent else {})}
    )
    log.config(cfg)
    log.failure(err)
    log.end("FAILED")
    print(f"geomsweep: {name} FAILED before it ran ({type(err).__name__}: {err}); the sweep goes on", file=sys.stderr)


STOPPING = {  # the signals that stop a job, and what usually sends them
    signal.SIGTERM: "a timeout, preemption or job-time limit",
    signal.SIGHUP: "a closed terminal or a dropped ssh session",
}


class Terminated(SystemExit):
    """SIGTERM (a timeout, SLURM preemption, a job-time limit) or SIGHUP (a closed terminal): the run ends KILLED,
    the process exits 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        return f"terminated by {name} ({STOPPING[self.signum]}); re-running the cell runs it again"


@contextmanager
def sigterm_ends_run() -> Iterator[None]:
    """Inside the block SIGTERM and SIGHUP raise Terminated, so the run is closed as KILLED instead of left RUNNING
    (MLflow's own end-of-run handling never sees either). Signals reach the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        def stop() -> None:
            raise Terminated(signum)

        when_no_write(stop)  # never inside a store write: its transaction's lock would outlive it

    previous = {signum: signal.signal(signum, terminate) for signum in STOPPING}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def prepare_model(settings: Config) -> None:
    """Make the model's checkpoints available: the toy world is pretrained on first use (minutes, cached); a
    model saved in MLflow is downloaded into the cache once."""
    model_source(settings.model).prepare(settings.model, settings.cache_dir, settings.progress)


def measure_and_report(settings: Config, log: RunLogger) -> None:
    prepare_model(settings)
    selected = resolve(settings.model, settings.checkpoint, settings.cache_dir)
    # data.min_tokens counts tokens the way the measured model does (its checkpoints share one tokenizer)
    trust = settings.model.trust_remote_code
    tokenizer = selected[0].load_tokenizer(trust) if settings.data.min_tokens else None
    probe = probe_set(settings.data, settings.model.toy, settings.probe.n_sequences, settings.seed, tokenizer)
    if len(probe.texts) < settings.probe.n_sequences:
        raise ValueError(
            f"the probe dataset has {len(probe.texts)} usable texts, fewer than probe.n_sequences="
            f"{settings.probe.n_sequences}"
        )
    log.probe_input(probe.texts, name=str(settings.data.name or settings.data.path or "toy"))
    runner(settings)(settings, probe, log)


def runner(settings: Config) -> Callable[[Config, ProbeSet, RunLogger], object]:
    """The pipeline a job hands over to, called the same way for both: the trace (method=none), or the method's
    runner, a dotted path the config names (``method.runner``; the app never imports post-training)."""
    return get_method(settings.method.runner) if settings.method.runner else run_trace
