"""Every tag key geomsweep writes, in one place (MLflow keys allow letters, digits and ``_ - . / : space``)."""

TAG_SWEEP_DIR = "geomsweep.sweep_dir"
TAG_ROLE = "geomsweep.role"  # job, sweep or trace
TAG_SWEPT = "geomsweep.swept_keys"  # on a sweep parent: the keys the sweep varies (they name its job runs)
TAG_CONFIG_HASH = "geomsweep.config_hash"
TAG_TRACE_KEY = "geomsweep.trace_key"
TAG_ERROR = "geomsweep.error"
TAG_HOST, TAG_PID = "geomsweep.host", "geomsweep.pid"
TAG_PID_START = "geomsweep.pid_start"  # when that process started: a reused PID is another process
TAG_HEARTBEAT = "geomsweep.heartbeat"  # unix time of the running job's last lease refresh
TAG_REUSED_PREFIX = "geomsweep.reused."  # on a sweep parent: a cell FINISHED earlier or running in another process
TAG_TRACE_MEMBERS = "geomsweep.trace_members"  # on a trace run: the job runs it rolls up
TAG_PHASES, TAG_PHASE_BOUNDARIES = "geomsweep.phases", "geomsweep.phase_boundaries"
TAG_ABLATION = "geomsweep.ablation"  # why the spectral-tail ablation was skipped
TAG_ALPHA_FIT = "geomsweep.alpha_fit"  # why alpha-ReQ is NaN: a spectrum shorter than its fit range
TAG_STAGE_PREFIX = "geomsweep.stage."  # a stage trace: geomsweep.stage.<step> = the stage measured at that step
TAG_NONFINITE = "geomsweep.nonfinite"  # checkpoints whose representations held NaN or inf (their metrics: NaN)
TAG_PROBE_DIGEST = "geomsweep.probe_digest"  # sha256 of the probe texts: the same digest, the same texts
TAG_BASE_REVISION, TAG_BASE_STEP = "geomsweep.base_revision", "geomsweep.base_step"
TAG_VERDICT_PREFIX = "geomsweep.verdict."  # on a sweep parent: geomsweep.verdict.<group> = its changes' verdicts
TAG_CELLS, TAG_FAILED_CELLS = "geomsweep.cells", "geomsweep.failed_cells"
TAG_MODEL, TAG_MODEL_REVISION = "geomsweep.model", "geomsweep.model_revision"
TAG_VERSION, TAG_GIT_COMMIT = "geomsweep.version", "geomsweep.git_commit"  # provenance (plugins/run_context.py)
TAG_HYDRA_JOB, TAG_HYDRA_JOB_NUM = "geomsweep.hydra_job", "geomsweep.hydra_job_num"
TAG_SLURM_JOB, TAG_SLURM_TASK = "geomsweep.slurm_job_id", "geomsweep.slurm_array_task_id"
TAG_PARENT = "mlflow.parentRunId"

# Spellings that runs written by one version carry (a package move renamed three keys for a while): readers take
# either, writers write the key above. A key never changes its spelling again; tests/golden/ pins every one.
MOVED_TAGS = {
    TAG_PHASES: "geomsweep.core.phases",
    TAG_ABLATION: "geomsweep.core.ablation",
    TAG_ALPHA_FIT: "geomsweep.core.alpha_fit",
}


def read_tag(tags: dict[str, str], key: str, default: str | None = None) -> str | None:
    """A run's tag ``key``, or the spelling a run written in between carries (``MOVED_TAGS``)."""
    if key in tags:
        return tags[key]
    return tags.get(MOVED_TAGS.get(key, key), default)


ROLE_JOB, ROLE_SWEEP, ROLE_TRACE = "job", "sweep", "trace"
