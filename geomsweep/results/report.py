"""Compare runs: overlay plots and a summary table, written to disk and logged to the sweep's parent run.

    python -m geomsweep.devtools report [--experiment geomsweep] [--sweep RUN_ID] [--out report] [--tracking-uri URI]

- ``geometry.png``: RankMe and alpha-ReQ against step, one line per run (traces by pretraining step,
  post-training runs by post-training step).
- ``pass_at_k.png``: each run's pass@k curve at its last sampled step, labelled by method.
- ``summary.csv``: one row per run with its status and latest headline metrics.

Without ``--sweep`` it covers every job and trace run of the experiment and logs to the latest sweep parent.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
import pandas as pd
from matplotlib.figure import Figure

from geomsweep.keys import metrics as M
from geomsweep.keys.tags import ROLE_SWEEP, TAG_CONFIG_HASH, TAG_ERROR, TAG_PARENT, TAG_ROLE, TAG_SWEPT
from geomsweep.results import plots
from geomsweep.results.compare import (
    SEED,
    cell_row,
    comparison_markdown,
    group_metrics,
    group_verdicts,
    over_seeds,
    rounded,
    swept_value,
)
from geomsweep.tracking.store import tracking_uri
from geomsweep.tracking.writer import RunLogger

NOTE = "mlflow.note.content"  # MLflow renders it as markdown on the run's Overview
HEADLINE_METRICS = (
    M.RANKME,
    M.ALPHA_REQ,
    M.PROBE_LOSS,
    M.accuracy("long_range"),
    M.MEMORIZATION,
    M.pass_at(1),
    M.accuracy("id"),
    M.accuracy("ood"),
)


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
                "source": "this sweep" if run.data.tags.get(TAG_PARENT) == parent_id else "earlier run",
                "config_hash": run.data.tags.get(TAG_CONFIG_HASH, ""),
                **{key: metrics.get(key) for key in HEADLINE_METRICS if key in metrics},
                "error": run.data.tags.get(TAG_ERROR, ""),
            }
        )
    return pd.DataFrame(rows)


def compared_runs(client, experiment_id: str, sweep: str | None) -> list:
    query = f"tags.`{TAG_PARENT}` = '{sweep}'" if sweep else ""
    runs = client.search_runs([experiment_id], filter_string=query, max_results=5000)
    return sorted(
        (r for r in runs if r.data.tags.get(TAG_ROLE) in ("job", "trace")), key=lambda r: r.info.run_name or ""
    )


def label(run) -> str:
    name = run.info.run_name or run.info.run_id[:8]
    method = run.data.params.get("cfg.method.name", "?")
    return f"{method}: {name[:60]}"


def metric_history(client, run, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}


GEOMETRY_PANELS = ((M.RANKME, "RankMe"), (M.ALPHA_REQ, "α-ReQ"))
LEGEND_FONT = 9  # readable at the UI's artifact-preview size


def group_of(run, swept: list[str]) -> str:
    """The group a cell belongs to in a comparison: its swept values but the seed."""
    return " ".join(f"{k}={swept_value(run, k)}" for k in swept if k != SEED) or label(run)


def levels_panel(ax, client, runs, key: str, colors: dict[str, str] | None = None, swept=()) -> None:
    """One line per run with +-1 jackknife SE bands where the run logged them (coloured by group, when given)."""
    for run in runs:
        values = metric_history(client, run, key)
        if not values:
            continue
        steps = sorted(values)
        color = colors.get(group_of(run, list(swept))) if colors else None
        (line,) = ax.plot(steps, [values[s] for s in steps], "o-", ms=2, label=label(run), color=color)
        errors = metric_history(client, run, f"{key}_se")
        if errors:
            se = [errors.get(s, 0.0) for s in steps]
            ax.fill_between(
                steps,
                [values[s] - e for s, e in zip(steps, se)],
                [values[s] + e for s, e in zip(steps, se)],
                color=line.get_color(),
                alpha=0.2,
                lw=0,
            )


def changes_panel(ax, client, runs, key: str, swept: list[str], colors: dict[str, str]) -> None:
    """The paired change since the base model, one line per group (the swept values but the seed): the mean over
    its seeds, with a band of their spread (one seed: +-1 paired jackknife SE)."""
    groups: dict[str, list] = {}
    for run in runs:
        groups.setdefault(group_of(run, swept), []).append(run)
    for name, members in groups.items():
        series = [metric_history(client, run, f"{key}_change") for run in members]
        steps = sorted(set.intersection(*(set(s) for s in series))) if all(series) else []
        if not steps:
            continue
        values = [[s[step] for step in steps] for s in series]
        mean = [sum(column) / len(column) for column in zip(*values)]
        seeds = f"{len(members)} seed{'s' if len(members) > 1 else ''}"
        (line,) = ax.plot(steps, mean, "o-", ms=3, label=f"{name} ({seeds})", color=colors.get(name))
        if len(members) > 1:
            low, high = [min(column) for column in zip(*values)], [max(column) for column in zip(*values)]
        else:
            se = metric_history(client, members[0], f"{key}_change_se")
            low = [m - se.get(step, 0.0) for m, step in zip(mean, steps)]
            high = [m + se.get(step, 0.0) for m, step in zip(mean, steps)]
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, lw=0)
    ax.axhline(0.0, color="0.5", lw=0.8)


def geometry_figure(client, runs, title: str = "Representation geometry of each run", swept=()) -> Figure:
    """Traces: RankMe and alpha against pretraining step (symlog: log-spaced checkpoints spread out), one line per
    run. Post-training: the levels against post-training step beside the paired change from the base, one line per
    group over its seeds. Pretraining and post-training steps are never drawn on one axis."""
    trained = [run for run in runs if run.data.params.get("cfg.method.name", "none") != "none"]
    if not trained:
        fig = Figure(figsize=(9, 6.5))
        axes = fig.subplots(2, 1, sharex=True)
        phases = shared_phases(client, runs)
        for ax, (key, name) in zip(axes, GEOMETRY_PANELS):
            levels_panel(ax, client, runs, key)
            if phases:
                plots.shade_phases(ax, *phases)
            ax.set_ylabel(name)
        axes[1].set_xscale("symlog", linthresh=1)
        axes[1].set_xlabel("pretraining step")
        legend_axes = axes[0]
    else:
        fig = Figure(figsize=(12, 7))
        axes = fig.subplots(2, 2, sharex=True)
        names = list(dict.fromkeys(group_of(run, list(swept)) for run in trained))
        colors = {name: f"C{i % 10}" for i, name in enumerate(names)}  # a group's colour in both panels
        for row, (key, name) in enumerate(GEOMETRY_PANELS):
            levels_panel(axes[row][0], client, trained, key, colors, swept)
            changes_panel(axes[row][1], client, trained, key, list(swept), colors)
            axes[row][0].set_ylabel(name)
            axes[row][1].set_ylabel(f"{name} change from the base")
        for ax in axes[1]:
            ax.set_xlabel("post-training step")
        axes[0][0].set_title("levels, one line per cell (coloured by group)", fontsize=10)
        axes[0][1].set_title("paired change (mean over seeds; band: their spread)", fontsize=10)
        legend_axes = axes[0][1]
    fig.suptitle(title)
    for ax in fig.axes:
        ax.grid(alpha=0.3)
    if legend_axes.lines:
        legend_axes.legend(fontsize=LEGEND_FONT)
    fig.tight_layout()
    return fig


def shared_phases(client, runs) -> tuple[list[int], list[int]] | None:
    """(steps, phase labels) when every trace was tagged with the same phases at the same steps, for shading."""
    labelled = {tuple(sorted(metric_history(client, run, M.PHASE).items())) for run in runs}
    if len(labelled) != 1 or not (only := labelled.pop()):
        return None
    return [step for step, _ in only], [int(label) for _, label in only]


def log_comparison(client, parent_id: str, runs) -> pd.DataFrame | None:
    """The sweep parent as the comparison page: overlay plots of its finished cells, each cell's first/last/change
    table (``cells.csv``) and the same folded over seeds (``comparison.csv`` and the MLflow table
    ``comparison.json``); returns the folded table."""
    if not runs:
        return None
    parent, log = client.get_run(parent_id), RunLogger(parent_id, client)
    swept = [key for key in parent.data.tags.get(TAG_SWEPT, "").split(",") if key]
    title = parent.info.run_name or parent_id
    traces = [run for run in runs if run.data.params.get("cfg.method.name", "none") == "none"]
    log.figure(geometry_figure(client, runs, title, swept), "plots/geometry.png")
    if traces and len(traces) < len(runs):  # a mixed sweep: its traces on their own pretraining-step axis
        log.figure(geometry_figure(client, traces, f"{title}: traces", swept), "plots/geometry_traces.png")
    curves = pass_at_k_curves(runs, client)
    if curves:
        fig = plots.pass_at_k(curves, max(max(c) for c in curves.values()), title)
        log.figure(fig, "plots/pass_at_k.png")
    cells = pd.DataFrame([{"cell": run.info.run_name} | cell_row(client, run, swept) for run in runs])
    log.table(rounded(cells), "cells.csv")
    folded = rounded(over_seeds(cells.drop(columns="cell"), swept))
    log.table(folded, "comparison.csv")
    log.json_table(folded, "comparison.json")
    log.metrics(group_metrics(folded, swept), step=0)  # the parent's row in the runs table answers
    log.tags({NOTE: comparison_markdown(folded, swept), **group_verdicts(folded, swept)})  # the parent's Overview
    return folded


def pass_at_k_curves(runs, client=None) -> dict[str, dict[int, float]]:
    """Each run's pass@k (ID split) at its latest logged step; with ``client``, also the base model's before
    post-training (the mean over the post-training runs of their first sampled step), the curve the methods move."""
    curves, bases = {}, []
    for run in runs:
        ks = [int(m.group(1)) for key in run.data.metrics if (m := M.PASS_AT.fullmatch(key))]
        if not ks:
            continue
        curves[label(run)] = {k: run.data.metrics[M.pass_at(k)] for k in ks}
        if client is not None and run.data.params.get("cfg.method.name", "none") != "none":
            histories = {k: metric_history(client, run, M.pass_at(k)) for k in ks}
            bases.append({k: h[min(h)] for k, h in histories.items() if h and min(h) < max(h)})
    bases = [base for base in bases if base]
    if bases:
        ks = set.intersection(*(set(base) for base in bases))
        curves["base, before post-training"] = {k: sum(base[k] for base in bases) / len(bases) for k in sorted(ks)}
    return curves


def latest_sweep(client, experiment_id: str) -> str | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_ROLE}` = '{ROLE_SWEEP}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def write_report(client, experiment_id: str, out: Path, sweep: str | None = None) -> dict[str, Path]:
    runs = compared_runs(client, experiment_id, sweep)
    if not runs:
        raise SystemExit(
            f"no job or trace runs to compare in experiment {experiment_id}"
            + (f" under sweep {sweep}" if sweep else "")
        )
    out.mkdir(parents=True, exist_ok=True)
    written = {"summary.csv": out / "summary.csv", "geometry.png": out / "geometry.png"}
    summary(runs, sweep or "").to_csv(written["summary.csv"], index=False)
    fig = geometry_figure(client, runs)
    fig.savefig(written["geometry.png"], dpi=120)
    curves = pass_at_k_curves(runs)
    if curves:
        fig = plots.pass_at_k(curves, max(max(c) for c in curves.values()))
        written["pass_at_k.png"] = out / "pass_at_k.png"
        fig.savefig(written["pass_at_k.png"], dpi=120)
    parent = sweep or latest_sweep(client, experiment_id)
    if parent:
        for path in written.values():
            RunLogger(parent, client).file(path, "report")
    return written


def arguments(parser: argparse.ArgumentParser) -> None:
    """This command's options (``python -m geomsweep.devtools report --help``)."""
    parser.add_argument("--experiment", default="geomsweep")
    parser.add_argument("--sweep", default=None, help="compare this sweep parent's runs only")
    parser.add_argument("--out", default="report", help="directory for the plots and the table")
    parser.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db")


def command(args: argparse.Namespace) -> None:
    uri = args.tracking_uri or tracking_uri()
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(
            f"no experiment {args.experiment!r} in {uri}; there are: {[e.name for e in client.search_experiments()]}"
        )
    written = write_report(client, experiment.experiment_id, Path(args.out), args.sweep)
    print("geomsweep: report written: " + ", ".join(str(p) for p in written.values()))
