"""One Hydra job = one MLflow run: config in, measurements and artifacts out, failures recorded."""

from __future__ import annotations

import sys
import traceback

from omegaconf import DictConfig

METHODS = ("none", "sft", "dpo", "rlvr")


class RunLogger:
    """The few MLflow calls a job makes, bound to its run (so workers never rely on a global active run)."""

    def __init__(self, run_id: str):
        import mlflow

        self.run_id = run_id
        self.client = mlflow.MlflowClient()

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.history({key: {step: value} for key, value in values.items()})

    def history(self, series: dict[str, dict[int, float]]) -> None:
        """Many (key, step, value) points in one batched call."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(key, float(value), now, step) for key, by_step in series.items() for step, value in by_step.items()
        ])

    def tags(self, values: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in values.items()])

    def figure(self, fig, path: str) -> None:
        import matplotlib.pyplot as plt

        self.client.log_figure(self.run_id, fig, path)
        plt.close(fig)

    def table(self, frame, path: str) -> None:
        self.client.log_text(self.run_id, frame.to_csv(index=False), path)

    def json_table(self, columns: dict[str, list], path: str) -> None:
        """An MLflow table (readable in the UI's artifact view and through ``mlflow.load_table``)."""
        self.client.log_table(self.run_id, columns, path)


def run_job(cfg: DictConfig) -> None:
    """Run one cell unless it already FINISHED. A failure ends the run FAILED with the reason and traceback;
    in a multirun the job then returns normally, so the sweep goes on and its end-of-sweep roll-up (and exit
    status) reports the failed cells; a single run re-raises."""
    import mlflow

    from geomsweep import tracking

    experiment_id = tracking.setup_store(cfg.tracking)
    identity = tracking.config_hash(cfg)
    name, parent = tracking.job_context(experiment_id)
    done = tracking.earlier_run(experiment_id, identity, force=cfg.tracking.get("force", False))
    if done is not None:
        if parent is not None:
            mlflow.MlflowClient().set_tag(parent, tracking.TAG_REUSED_PREFIX + identity, done.info.run_id)
        print(f"geomsweep: skipped {name}: this cell (config hash {identity}) already FINISHED in run "
              f"{done.info.run_id}; tracking.force=true runs it again")
        print(tracking.results_message(done))
        return
    with tracking.start_job_run(experiment_id, identity, name, parent, cfg) as run:
        try:
            tracking.log_config(cfg)
            if cfg.method.name not in METHODS:
                raise ValueError(f"unknown method {cfg.method.name!r}; valid: {', '.join(METHODS)}")
            log = RunLogger(run.info.run_id)
            _measure_and_report(cfg, log)
        except BaseException as err:
            mlflow.set_tag(tracking.TAG_ERROR, f"{type(err).__name__}: {err}"[:5000])
            mlflow.log_text(traceback.format_exc(), "error.txt")
            if not isinstance(err, Exception):  # KeyboardInterrupt, SystemExit: stop here
                mlflow.end_run("KILLED")
                raise
            if not tracking.in_multirun():
                raise
            mlflow.end_run("FAILED")
            traceback.print_exc()
            print(f"geomsweep: {name} FAILED ({type(err).__name__}: {err}); the sweep goes on", file=sys.stderr)
            return
    print(tracking.results_message(run))


def _measure_and_report(cfg: DictConfig, log: RunLogger) -> None:
    from geomsweep import artifacts
    from geomsweep.data import probe_texts
    from geomsweep.trace import run_trace

    needed = cfg.probe.fit_end + 1
    if cfg.probe.n_sequences < needed:
        raise ValueError(f"probe.n_sequences={cfg.probe.n_sequences} is too few for the alpha-ReQ fit range "
                         f"{cfg.probe.fit_start}..{cfg.probe.fit_end}: it needs at least {needed} sequences")
    toy = cfg.model.get("toy")
    texts = probe_texts(cfg.data, toy, cfg.probe.n_sequences, seed=cfg.seed)
    if len(texts) < cfg.probe.n_sequences:
        raise ValueError(f"the probe dataset has {len(texts)} usable texts, fewer than probe.n_sequences="
                         f"{cfg.probe.n_sequences}")
    if cfg.method.name != "none":
        from post_training.run import post_train

        history = post_train(cfg, texts, log)
        artifacts.log_post_training_artifacts(history, cfg.method.name, log)
        return
    points = run_trace(cfg, texts, log)
    phases = artifacts.log_phases(points, cfg.probe, cfg.phases, log) if len(points) > 2 else None
    artifacts.log_trace_artifacts(points, cfg.probe, log, phases)
    artifacts.log_ablation_table(points, phases, log)
