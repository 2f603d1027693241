"""MLflow bookkeeping: the store and experiment, a cell's identity, one run per Hydra job.

A cell is identified by a hash of its resolved config without logistics (``geomsweep.config_hash``). Before a
job runs, earlier runs of the same cell are looked up: a FINISHED one means the cell is done (skipped unless
``tracking.force``), a RUNNING one whose process is gone was killed and is marked KILLED, a FAILED one is
simply run again. Workers of a multirun find the sweep parent (geomsweep.sweep) by its ``geomsweep.sweep_dir``
tag and open their own run with ``parent_run_id``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data
import pandas as pd
from filelock import FileLock, Timeout
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils import mlflow_tags
from omegaconf import DictConfig, OmegaConf

from geomsweep import compare
from geomsweep.server import healthy

# Every tag key geomsweep writes.
TAG_SWEEP_DIR = "geomsweep.sweep_dir"
TAG_ROLE = "geomsweep.role"
TAG_SWEPT = "geomsweep.swept_keys"  # on a sweep parent: the keys the sweep varies (they name its job runs)
TAG_CONFIG_HASH = "geomsweep.config_hash"
TAG_TRACE_KEY = "geomsweep.trace_key"
TAG_ERROR = "geomsweep.error"
TAG_HOST, TAG_PID = "geomsweep.host", "geomsweep.pid"
TAG_REUSED_PREFIX = "geomsweep.reused."  # on a sweep parent: a cell already FINISHED in an earlier run
TAG_TRACE_MEMBERS = "geomsweep.trace_members"  # on a trace run: the job runs it rolls up
TAG_PHASES, TAG_PHASE_BOUNDARIES = "geomsweep.phases", "geomsweep.phase_boundaries"
TAG_ABLATION = "geomsweep.ablation"  # why the spectral-tail ablation was skipped
TAG_STAGE_PREFIX = "geomsweep.stage."  # a stage trace: geomsweep.stage.<step> = the stage measured at that step
TAG_NONFINITE = "geomsweep.nonfinite"  # checkpoints whose representations held NaN or inf (their metrics: NaN)
TAG_PROBE_DIGEST = "geomsweep.probe_digest"  # sha256 of the probe texts: the same digest, the same texts
TAG_BASE_REVISION, TAG_BASE_STEP = "geomsweep.base_revision", "geomsweep.base_step"
TAG_CELLS, TAG_FAILED_CELLS = "geomsweep.cells", "geomsweep.failed_cells"
TAG_MODEL, TAG_MODEL_REVISION = "geomsweep.model", "geomsweep.model_revision"
TAG_VERSION, TAG_GIT_COMMIT = "geomsweep.version", "geomsweep.git_commit"  # provenance (run_context.py)
TAG_HYDRA_JOB, TAG_HYDRA_JOB_NUM = "geomsweep.hydra_job", "geomsweep.hydra_job_num"
TAG_SLURM_JOB, TAG_SLURM_TASK = "geomsweep.slurm_job_id", "geomsweep.slurm_array_task_id"
TAG_PARENT = "mlflow.parentRunId"
DEFAULT_URI = "sqlite:///mlflow.db"  # MLflow's own default store, and tracking=sqlite's
# Parts of the config that say where things go, not what is computed: left out of the run identity.
LOGISTICS_KEYS = ("tracking", "cache_dir", "progress", "prefetch", "plan", "tflops", "cache")  # results never differ
MAX_PARAM_CHARS = 6000


def tracking_uri(tracking_cfg=None) -> str:
    """``MLFLOW_TRACKING_URI`` wins over the config (or, without one, the default store), as everywhere in MLflow."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (str(tracking_cfg.uri) if tracking_cfg else DEFAULT_URI)


def sqlite_path(uri: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :]) if uri.startswith(prefix) and uri != prefix + ":memory:" else None


class StoreError(RuntimeError):
    """The tracking store cannot be reached or written: one line naming it, before any run opens."""


STORE_LOCK_TIMEOUT_S = 120  # longer than any store creation; a lock held past it is a stuck process


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


def setup_store(tracking_cfg) -> str:
    """Point MLflow at the store, create it and the experiment if needed; return the experiment id.

    On sqlite this happens under a file lock: parallel processes creating one fresh sqlite store all fail."""
    uri = tracking_uri(tracking_cfg)
    if uri.startswith(("http://", "https://")):
        if not healthy(uri, timeout=10):
            raise StoreError(
                f"no MLflow server answers at {uri}: start one (mlflow server --host 127.0.0.1 "
                f"--port ...), or use tracking=server with tracking.server.start=true, or the "
                f"single-machine default tracking=sqlite"
            )
    mlflow.set_tracking_uri(uri)
    path = sqlite_path(uri)
    if path is not None:
        writable_sqlite(path)
    if path is None:
        return experiment_id(tracking_cfg.experiment)
    try:
        with FileLock(str(path) + ".lock", timeout=STORE_LOCK_TIMEOUT_S):
            return experiment_id(tracking_cfg.experiment)
    except Timeout:
        raise StoreError(
            f"the MLflow store {path} stayed locked for {STORE_LOCK_TIMEOUT_S} s ({path}.lock): another geomsweep "
            f"process is creating it, or one died holding the lock; if none runs, delete {path}.lock"
        ) from None


def experiment_id(name: str) -> str:
    """The experiment's id, created if it does not exist yet."""
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except mlflow.exceptions.MlflowException:  # created concurrently by another process (a server store)
        return client.get_experiment_by_name(name).experiment_id


def process_tags() -> dict[str, str]:
    return {TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())}


def process_alive(run) -> bool:
    """Whether the process that opened ``run`` still runs (known only on the same host; elsewhere: assumed not)."""
    tags = run.data.tags
    if tags.get(TAG_HOST) != socket.gethostname() or not tags.get(TAG_PID, "").isdigit():
        return False
    try:
        os.kill(int(tags[TAG_PID]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return int(tags[TAG_PID]) != os.getpid()  # this process runs jobs one after another: not that one now


def mark_killed(client, run) -> None:
    client.set_tag(
        run.info.run_id,
        TAG_ERROR,
        f"killed: process {run.data.tags.get(TAG_PID, '?')} on "
        f"{run.data.tags.get(TAG_HOST, '?')} ended without closing the run",
    )
    client.set_terminated(run.info.run_id, "KILLED")


def earlier_run(experiment_id: str, identity: str, force: bool = False):
    """The FINISHED run of this cell, if any (None when ``force``); RUNNING runs of dead processes -> KILLED.

    A RUNNING run whose process is alive on this host is the same cell running right now: refused."""
    client = mlflow.MlflowClient()
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_CONFIG_HASH}` = '{identity}' and tags.`{TAG_ROLE}` = 'job'"
    )
    for run in runs:
        if run.info.status == "RUNNING":
            if process_alive(run):
                raise RuntimeError(
                    f"this cell (config hash {identity}) is running now in run {run.info.run_id}, "
                    f"process {run.data.tags[TAG_PID]}: not starting it twice"
                )
            mark_killed(client, run)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    return finished[0] if finished and not force else None


def flatten(cfg: DictConfig) -> dict[str, str]:
    """Resolved config as ``cfg.<dotted.key>`` -> string value, one MLflow param each."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}")
        else:
            out[prefix] = str(node)[:MAX_PARAM_CHARS]

    walk(OmegaConf.to_container(cfg, resolve=True), "cfg")
    return out


def finished_cell(cfg: DictConfig, settings) -> str | None:
    """The id of this cell's FINISHED run, looked up without creating a store or an experiment (``plan=true``);
    None when there is none or the store cannot be read."""
    uri = tracking_uri(settings.tracking)
    path = sqlite_path(uri)
    if path is not None and not path.exists():
        return None
    try:
        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name(settings.tracking.experiment)
        if experiment is None:
            return None
        identity = config_hash(cfg, data=data_files_digest(settings))
        query = (
            f"tags.`{TAG_CONFIG_HASH}` = '{identity}' and tags.`{TAG_ROLE}` = 'job' and attributes.status = 'FINISHED'"
        )
        runs = client.search_runs([experiment.experiment_id], filter_string=query, max_results=1)
    except Exception:  # an unreachable server: the plan shows every cell as one to run
        return None
    return runs[0].info.run_id if runs else None


def config_hash(cfg: DictConfig, without: tuple[str, ...] = (), data: str = "") -> str:
    """Identity of a cell: a hash of the resolved config without logistics (output dirs, tracking store) and
    without the top-level keys in ``without``, and of ``data``, the digest of the local data files it reads (so
    an edited probe or task file makes a new cell)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in (*LOGISTICS_KEYS, *without):
        container.pop(key, None)
    return hashlib.sha256((OmegaConf.to_yaml(OmegaConf.create(container)) + data).encode()).hexdigest()[:16]


def trace_key(cfg: DictConfig, data: str = "") -> str:
    """Identity of a trace: jobs that differ only in which checkpoints they measured belong to one trace."""
    return config_hash(cfg, without=("checkpoint",), data=data)


def data_files_digest(settings) -> str:
    """A digest of the content of the local files a cell reads (data.path, task.path, task.ood.path; every file of
    a directory); hub datasets and the toy world are identified by their config alone. A missing file adds
    nothing here: the job reports it."""
    paths = [
        settings.data.path if settings.data.source == "files" else None,
        settings.task.path if settings.task.source == "files" else None,
        (settings.task.ood or {}).get("path") if (settings.task.ood or {}).get("source") == "files" else None,
    ]
    digest = hashlib.sha256()
    for path in (Path(str(p)).expanduser() for p in paths if p):
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                digest.update(str(file).encode() + b"\x00" + hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()[:16]


class RunLogger:
    """Every MLflow write of one job, bound to its run id (so workers never rely on a global active run)."""

    def __init__(self, run_id: str, client: mlflow.MlflowClient | None = None):
        self.run_id = run_id
        self.client = client or mlflow.MlflowClient()

    @property
    def name(self) -> str:
        """The run's name (figures are titled with it)."""
        return self.client.get_run(self.run_id).info.run_name or self.run_id

    def config(self, cfg: DictConfig) -> None:
        """Params (``cfg.<dotted.key>``, batched) and the resolved YAML as an artifact."""
        self.params(flatten(cfg))
        self.client.log_text(self.run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")

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
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in values.items()])

    def figure(self, fig, path: str) -> None:
        self.client.log_figure(self.run_id, fig, path)

    def table(self, frame, path: str) -> None:
        """A CSV artifact."""
        self.client.log_text(self.run_id, frame.to_csv(index=False), path)

    def directory(self, local_dir: str | Path, path: str) -> None:
        """A directory (a saved model) as the artifact folder ``path``."""
        self.client.log_artifacts(self.run_id, str(local_dir), path)

    def json_table(self, columns: dict[str, list], path: str) -> None:
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
        self.client.log_text(self.run_id, traceback.format_exc(), "error.txt")


def download_model(uri: str, directory: Path) -> None:
    """A model an earlier run saved (``runs:/<id>/model``) into ``directory``; a clear error when there is none."""
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(partial))
    except MlflowException as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise FileNotFoundError(
            f"model.uri={uri}: no such model in {mlflow.get_tracking_uri()} ({str(err).splitlines()[0]}); "
            f"valid: runs:/<run id>/model of a run with method.save=true"
        ) from None
    (saved,) = [p for p in partial.iterdir()]  # download_artifacts keeps the artifact's own directory name
    saved.rename(directory)
    shutil.rmtree(partial)


def find_sweep_parent(experiment_id: str, sweep_dir: str) -> str | None:
    runs = mlflow.MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_SWEEP_DIR}` = '{sweep_dir}' and tags.`{TAG_ROLE}` = 'sweep'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def sweep_dir(hydra_cfg) -> str:
    return str(Path(hydra_cfg.sweep.dir).resolve())


def job_context(experiment_id: str) -> tuple[str, str | None]:
    """(run name, sweep parent run id or None) of the current Hydra job."""
    if not HydraConfig.initialized():
        return "run", None
    hydra_cfg = HydraConfig.get()
    name = hydra_cfg.job.override_dirname or "default"
    parent = find_sweep_parent(experiment_id, sweep_dir(hydra_cfg)) if hydra_cfg.mode == RunMode.MULTIRUN else None
    if parent is not None:
        swept = mlflow.MlflowClient().get_run(parent).data.tags.get(TAG_SWEPT, "").split(",")
        varied = [o for o in hydra_cfg.overrides.task if o.split("=", 1)[0].lstrip("+~") in swept]
        name = ",".join(varied) or name
    return name, parent


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys a multirun's command line sweeps over (``a=1,2``, ``b=range(3)``, ...)."""
    return [
        o.get_key_element().lstrip("+~")
        for o in OverridesParser.create().parse_overrides(overrides)
        if o.is_sweep_override()
    ]


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def model_tags(settings) -> dict[str, str]:
    """What model (and which revisions of it) a job measures, for the run-context provider."""
    checkpoint = settings.checkpoint
    detail = {
        "steps": ",".join(map(str, checkpoint.steps or [])),
        "log": checkpoint.num,
        "every": checkpoint.every,
    }.get(checkpoint.select)
    revision = f"{checkpoint.select}:{detail}" if detail else str(checkpoint.select)
    return {TAG_MODEL: str(settings.model.name), TAG_MODEL_REVISION: revision}


_JOB: dict[str, str] | None = None  # the running job's model tags, while it runs (run_context.py reads them)


def current_job() -> dict[str, str] | None:
    """The model tags of the geomsweep job running in this process, or None outside one."""
    return _JOB


@contextmanager
def job_run(
    experiment_id: str, identity: str, name: str, parent: str | None, cfg: DictConfig, settings, data: str = ""
) -> Iterator[mlflow.ActiveRun]:
    """This job's run, active for its duration (TRL's MLflow reporting joins it): nested under the sweep parent in
    a multirun, tagged with the cell's identity and, through the run-context provider, its provenance."""
    global _JOB
    tags = {TAG_CONFIG_HASH: identity, TAG_TRACE_KEY: trace_key(cfg, data), TAG_ROLE: "job", **process_tags()}
    _JOB = model_tags(settings)
    try:
        with mlflow.start_run(experiment_id=experiment_id, run_name=name[:250], parent_run_id=parent, tags=tags) as run:
            yield run
    finally:
        _JOB = None


def results_message(run) -> str:
    """What a job or sweep ends with: a few lines of results and where to see the rest, the link opening the
    experiment's runs table (MLflow 3 otherwise lands on its GenAI overview)."""
    uri = mlflow_uri_for_ui()
    client = mlflow.MlflowClient()
    lines = []
    if run.data.tags.get(TAG_ROLE) in ("job", "trace") and run.info.status == "FINISHED":
        row = compare.cell_row(client, run, [])
        lines = compare.describe(row, run.data.tags.get(TAG_PHASES))
    where = [
        f"results in MLflow experiment {run.info.experiment_id}, run {run.info.run_id} ({run.info.run_name}) at {uri}"
    ]
    page = runs_table_page(run.info.experiment_id)
    if uri.startswith(("http://", "https://")):
        where.append(f"browse them at {uri}/{page}")
    else:
        where.append(f"open the UI with: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
        where.append(f"then the runs table: http://127.0.0.1:5000/{page}")
    return "\n".join(f"geomsweep: {line}" for line in [*lines, *where])


def runs_table_page(experiment_id: str) -> str:
    """The UI's runs table of an experiment, in MLflow 3's model-training view (checked by ``make ui-check``)."""
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def mlflow_uri_for_ui() -> str:
    """The tracking URI with a relative sqlite path made absolute, so the printed command works anywhere."""
    uri = mlflow.get_tracking_uri()
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri
