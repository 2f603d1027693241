"""Trace roll-up: jobs that each measured some checkpoints of one trace (same model, method, data, probe: the
``geomsweep.trace_key`` tag) become one *trace* run whose metric history is stepped by pretraining step, with
phase detection and the shaded trajectory plot, as if one job had measured every checkpoint.

It runs at the end of every multirun (for that sweep's jobs) and as a command for existing experiments:

    python -m geomsweep.devtools rollup --experiment geomsweep [--tracking-uri URI] [--sweep RUN_ID]

A trace is rebuilt from scratch each time (an earlier trace run of the same key and sweep is deleted first).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import mlflow

from geomsweep.core.definitions import PhaseRule
from geomsweep.keys import metrics as M
from geomsweep.keys.tags import ROLE_JOB, ROLE_TRACE, TAG_PARENT, TAG_ROLE, TAG_TRACE_KEY, TAG_TRACE_MEMBERS
from geomsweep.results.artifacts import summarize_trace
from geomsweep.tracking.store import tracking_uri
from geomsweep.tracking.writer import RunLogger


def trace_groups(runs) -> dict[str, list]:
    """FINISHED method=none job runs by trace key, only where more than one job shares the key."""
    groups = defaultdict(list)
    for run in runs:
        tags = run.data.tags
        if (
            tags.get(TAG_ROLE) == ROLE_JOB
            and run.info.status == "FINISHED"
            and run.data.params.get("cfg.method.name") == "none"
            and TAG_TRACE_KEY in tags
        ):
            groups[tags[TAG_TRACE_KEY]].append(run)
    return {key: members for key, members in groups.items() if len(members) > 1}


def merged_history(client, members) -> dict[str, dict[int, float]]:
    """key -> step -> value over all member runs (a later run wins where two measured the same step)."""
    merged: dict[str, dict[int, float]] = defaultdict(dict)
    for run in sorted(members, key=lambda r: r.info.start_time):
        for key in run.data.metrics:
            if key == M.PHASE:  # per-job phases are recomputed over the whole trace
                continue
            for metric in client.get_metric_history(run.info.run_id, key):
                merged[key][metric.step] = metric.value
    return merged


def roll_up_trace(
    client, experiment_id: str, key: str, members, parent: str | None, rule: PhaseRule | None = None
) -> str:
    """Create the trace run of one group; returns its run id."""
    old = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_TRACE_KEY}` = '{key}' and tags.`{TAG_ROLE}` = '{ROLE_TRACE}'",
    )
    for run in old:
        if run.data.tags.get(TAG_PARENT) == parent:
            RunLogger(run.info.run_id, client).delete()
    first = members[0]
    tags = {
        TAG_ROLE: ROLE_TRACE,
        TAG_TRACE_KEY: key,
        TAG_TRACE_MEMBERS: ",".join(r.info.run_id for r in members),
    }
    if parent:
        tags[TAG_PARENT] = parent
    name = f"trace {first.data.params.get('cfg.model.name', '')} ({len(members)} jobs)"
    log = RunLogger.create(experiment_id, name, tags, client)
    history = merged_history(client, members)
    shared = {
        k: v
        for k, v in first.data.params.items()
        if not k.startswith("cfg.checkpoint.") and all(m.data.params.get(k) == v for m in members)
    }
    log.history(history)
    log.params(shared)
    rankme = history.get(M.RANKME, {})
    steps = sorted(rankme)
    if len(steps) > 2:
        alpha, loss = history.get(M.ALPHA_REQ, {}), history.get(M.PROBE_LOSS)
        summary = summarize_trace(
            steps,
            [rankme[s] for s in steps],
            [alpha.get(s, float("nan")) for s in steps],
            [loss.get(s, float("nan")) for s in steps] if loss else None,
            rule or PhaseRule(),
            title=name,
        )
        log.history(summary.phase_history())
        log.tags(summary.phase_tags())
        log.figure(summary.figure, "plots/trajectory.png")
    log.end("FINISHED")
    return log.run_id


def roll_up_traces(client, experiment_id: str, parent: str | None = None, rule: PhaseRule | None = None) -> list[str]:
    """Trace runs for every group among the sweep's children (``parent``) or the whole experiment."""
    query = f"tags.`{TAG_PARENT}` = '{parent}'" if parent else ""
    runs = client.search_runs([experiment_id], filter_string=query, max_results=50_000)
    return [
        roll_up_trace(client, experiment_id, key, members, parent, rule) for key, members in trace_groups(runs).items()
    ]


def arguments(parser: argparse.ArgumentParser) -> None:
    """This command's options (``python -m geomsweep.devtools rollup --help``)."""
    parser.add_argument("--experiment", default="geomsweep")
    parser.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    parser.add_argument("--sweep", default=None, help="roll up this sweep parent's jobs only")


def command(args: argparse.Namespace) -> None:
    client = mlflow.MlflowClient(args.tracking_uri or tracking_uri())
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        names = [e.name for e in client.search_experiments()]
        raise SystemExit(f"no experiment {args.experiment!r} in {client.tracking_uri}; there are: {names}")
    made = roll_up_traces(client, experiment.experiment_id, args.sweep)
    print(f"geomsweep: {len(made)} trace run(s) in experiment {experiment.experiment_id}: {', '.join(made) or '-'}")
