"""Compare runs: overlay plots and a summary table, written to disk and logged to the sweep's parent run.

    python -m geomsweep.app.report [--experiment geomsweep] [--sweep RUN_ID] [--out report] [--tracking-uri URI]

- ``geometry.png``: RankMe and alpha-ReQ against step, one line per run (traces by pretraining step,
  post-training runs by post-training step).
- ``pass_at_k.png``: each run's pass@k curve at its last sampled step, labelled by method.
- ``summary.csv``: one row per run with its status and latest headline metrics.

Without ``--sweep`` it covers every job and trace run of the experiment and logs to the latest sweep parent.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import mlflow
import pandas as pd
from matplotlib.figure import Figure

from geomsweep.app.compare import cell_row, over_seeds, rounded
from geomsweep.results import plots
from geomsweep.tracking.keys import ROLE_SWEEP, TAG_CONFIG_HASH, TAG_ERROR, TAG_PARENT, TAG_ROLE, TAG_SWEPT
from geomsweep.tracking.store import tracking_uri
from geomsweep.tracking.writer import RunLogger

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


def geometry_figure(client, runs, title: str = "Representation geometry of each run") -> Figure:
    """RankMe and alpha against step (symlog: log-spaced checkpoints spread out), one line per run, with +-1
    jackknife SE bands where the run logged them."""
    fig = Figure(figsize=(8, 6))
    axes = fig.subplots(2, 1, sharex=True)
    for run in runs:
        for ax, key in zip(axes, ("geometry/rankme", "geometry/alpha_req")):
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            if not history:
                continue
            steps, values = zip(*history)
            (line,) = ax.plot(steps, values, "o-", ms=2, label=label(run) if key == "geometry/rankme" else None)
            errors = {m.step: m.value for m in client.get_metric_history(run.info.run_id, f"{key}_se")}
            if errors:
                se = [errors.get(step, 0.0) for step in steps]
                low, high = [v - e for v, e in zip(values, se)], [v + e for v, e in zip(values, se)]
                ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, lw=0)
    axes[0].set_ylabel("RankMe")
    axes[1].set_ylabel("α-ReQ")
    axes[1].set_xscale("symlog", linthresh=1)
    axes[1].set_xlabel("step (pretraining for traces, post-training for methods)")
    axes[0].set_title(title)
    for ax in axes:
        ax.grid(alpha=0.3)
    if axes[0].lines:
        axes[0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def log_comparison(client, parent_id: str, runs) -> pd.DataFrame | None:
    """The sweep parent as the comparison page: overlay plots of its finished cells, each cell's first/last/change
    table (``cells.csv``) and the same folded over seeds (``comparison.csv`` and the MLflow table
    ``comparison.json``); returns the folded table."""
    if not runs:
        return None
    parent, log = client.get_run(parent_id), RunLogger(parent_id, client)
    swept = [key for key in parent.data.tags.get(TAG_SWEPT, "").split(",") if key]
    title = parent.info.run_name or parent_id
    log.figure(geometry_figure(client, runs, title), "plots/geometry.png")
    curves = pass_at_k_curves(runs)
    if curves:
        fig = plots.pass_at_k(curves, max(max(c) for c in curves.values()), title)
        log.figure(fig, "plots/pass_at_k.png")
    cells = pd.DataFrame([{"cell": run.info.run_name} | cell_row(client, run, swept) for run in runs])
    log.table(rounded(cells), "cells.csv")
    folded = rounded(over_seeds(cells.drop(columns="cell"), swept))
    log.table(folded, "comparison.csv")
    log.json_table(folded, "comparison.json")
    return folded


def pass_at_k_curves(runs) -> dict[str, dict[int, float]]:
    """Each run's pass@k (ID split) at its latest logged step."""
    curves = {}
    for run in runs:
        curve = {
            int(m.group(1)): value
            for key, value in run.data.metrics.items()
            if (m := re.fullmatch(r"behavior/pass_at_(\d+)", key))
        }
        if curve:
            curves[label(run)] = curve
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="geomsweep")
    parser.add_argument("--sweep", default=None, help="compare this sweep parent's runs only")
    parser.add_argument("--out", default="report", help="directory for the plots and the table")
    parser.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    args = parser.parse_args(argv)
    uri = args.tracking_uri or tracking_uri()
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(
            f"no experiment {args.experiment!r} in {uri}; there are: {[e.name for e in client.search_experiments()]}"
        )
    written = write_report(client, experiment.experiment_id, Path(args.out), args.sweep)
    print("geomsweep: report written: " + ", ".join(str(p) for p in written.values()))


if __name__ == "__main__":
    main()
