"""Trace roll-up: jobs that each measured some checkpoints of one trace (same model, method, data, probe: the
``geomsweep.trace_key`` tag) become one *trace* run whose metric history is stepped by pretraining step, with
phase detection and the shaded trajectory plot, as if one job had measured every checkpoint.

It runs at the end of every multirun (for that sweep's jobs) and as a command for existing experiments:

    python -m geomsweep.rollup --experiment geomsweep [--tracking-uri URI] [--sweep RUN_ID]

A trace is rebuilt from scratch each time (an earlier trace run of the same key and sweep is deleted first).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from geomsweep import tracking

ROLE = "trace"


def trace_groups(runs) -> dict[str, list]:
    """FINISHED method=none job runs by trace key, only where more than one job shares the key."""
    groups = defaultdict(list)
    for run in runs:
        tags = run.data.tags
        if (tags.get(tracking.TAG_ROLE) == "job" and run.info.status == "FINISHED"
                and run.data.params.get("cfg.method.name") == "none" and tracking.TAG_TRACE_KEY in tags):
            groups[tags[tracking.TAG_TRACE_KEY]].append(run)
    return {key: members for key, members in groups.items() if len(members) > 1}


def merged_history(client, members) -> dict[str, dict[int, float]]:
    """key -> step -> value over all member runs (a later run wins where two measured the same step)."""
    merged: dict[str, dict[int, float]] = defaultdict(dict)
    for run in sorted(members, key=lambda r: r.info.start_time):
        for key in run.data.metrics:
            if key == "geometry/phase":  # per-job phases are recomputed over the whole trace
                continue
            for metric in client.get_metric_history(run.info.run_id, key):
                merged[key][metric.step] = metric.value
    return merged


def roll_up_trace(client, experiment_id: str, key: str, members, parent: str | None, phases_cfg=None) -> str:
    """Create the trace run of one group; returns its run id."""
    from mlflow.entities import Metric, Param, RunTag

    from geomsweep import phases as ph
    from geomsweep import plots

    old = client.search_runs([experiment_id], filter_string=f"tags.`{tracking.TAG_TRACE_KEY}` = '{key}' and "
                                                            f"tags.`{tracking.TAG_ROLE}` = '{ROLE}'")
    for run in old:
        if run.data.tags.get("mlflow.parentRunId") == parent:
            client.delete_run(run.info.run_id)
    first = members[0]
    tags = {tracking.TAG_ROLE: ROLE, tracking.TAG_TRACE_KEY: key, "geomsweep.trace_members": ",".join(
        r.info.run_id for r in members)}
    if parent:
        tags["mlflow.parentRunId"] = parent
    trace = client.create_run(experiment_id, run_name=f"trace {first.data.params.get('cfg.model.name', '')} "
                                                      f"({len(members)} jobs)", tags=tags)
    run_id = trace.info.run_id
    history = merged_history(client, members)
    now = int(time.time() * 1000)
    shared = {k: v for k, v in first.data.params.items() if not k.startswith("cfg.checkpoint.")
              and all(m.data.params.get(k) == v for m in members)}
    client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, by_step in history.items()
                                      for step, v in by_step.items()],
                     params=[Param(k, v) for k, v in shared.items()])
    rankme = history.get("geometry/rankme", {})
    steps = sorted(rankme)
    if len(steps) > 2:
        found = ph.detect(steps, [rankme[s] for s in steps],
                          min_change=phases_cfg.min_change if phases_cfg else 0.15,
                          bandwidth=phases_cfg.bandwidth if phases_cfg else 0.25)
        client.log_batch(run_id, metrics=[Metric("geometry/phase", label, now, s) for s, label in
                                          zip(steps, found.labels)],
                         tags=[RunTag("geomsweep.phases", found.describe()),
                               RunTag("geomsweep.phase_boundaries", ",".join(map(str, found.boundaries)) or "none")])
        alpha = history.get("geometry/alpha_req", {})
        loss = history.get("eval/probe_loss")
        fig = plots.trajectory(steps, [rankme[s] for s in steps], [alpha.get(s, float("nan")) for s in steps],
                               loss=[loss.get(s, float("nan")) for s in steps] if loss else None,
                               phases=found.labels)
        client.log_figure(run_id, fig, "plots/trajectory.png")
        import matplotlib.pyplot as plt

        plt.close(fig)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def roll_up_traces(client, experiment_id: str, parent: str | None = None, phases_cfg=None) -> list[str]:
    """Trace runs for every group among the sweep's children (``parent``) or the whole experiment."""
    query = f"tags.`mlflow.parentRunId` = '{parent}'" if parent else ""
    runs = client.search_runs([experiment_id], filter_string=query, max_results=50_000)
    return [roll_up_trace(client, experiment_id, key, members, parent, phases_cfg)
            for key, members in trace_groups(runs).items()]


def main(argv=None) -> None:
    import mlflow

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="geomsweep")
    parser.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    parser.add_argument("--sweep", default=None, help="roll up this sweep parent's jobs only")
    args = parser.parse_args(argv)
    from omegaconf import OmegaConf

    client = mlflow.MlflowClient(args.tracking_uri or tracking.tracking_uri(OmegaConf.create({"uri": "sqlite:///mlflow.db"})))
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        names = [e.name for e in client.search_experiments()]
        raise SystemExit(f"no experiment {args.experiment!r} in {client.tracking_uri}; there are: {names}")
    made = roll_up_traces(client, experiment.experiment_id, args.sweep)
    print(f"geomsweep: {len(made)} trace run(s) in experiment {experiment.experiment_id}: {', '.join(made) or '-'}")


if __name__ == "__main__":
    main()
