"""What a run keeps besides metric values: spectra tables, the trace summary (phases and the trajectory figure),
the ablation table. Built here once; the job, the trace roll-up and the evaluator all log these same shapes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from geomsweep.core.definitions import PhaseRule
from geomsweep.core.phases import NAMES as PHASE_NAMES
from geomsweep.core.phases import Phases, detect
from geomsweep.keys import metrics as M
from geomsweep.keys.tags import TAG_PHASE_BOUNDARIES, TAG_PHASES
from geomsweep.results import plots


def spectrum_table(eigs: torch.Tensor, **columns) -> pd.DataFrame:
    """(rank, eigenvalue, explained-variance ratio) of one spectrum, after any constant ``columns`` (step, ...)."""
    eigs = eigs.to(torch.float64)
    return pd.DataFrame(
        {
            **columns,
            "rank": range(1, len(eigs) + 1),
            "eigenvalue": eigs.numpy(),
            "explained_variance_ratio": (eigs / eigs.sum()).numpy(),
        }
    )


def spectra_table(points, layer: int) -> pd.DataFrame:
    """Long table (step, revision, rank, eigenvalue, explained-variance ratio) of one layer's spectra."""
    return pd.concat(
        [
            spectrum_table(p.geometry[layer].eigs, step=p.checkpoint.step, revision=p.checkpoint.revision)
            for p in points
        ],
        ignore_index=True,
    )


def layers_table(points) -> pd.DataFrame:
    """Every measure at every layer of every checkpoint, long: step, revision, tokens, layer, metric, value, se
    (NaN where the measure has no jackknife SE). Layers are hidden_states indices counted from the embeddings
    (0), as the weight spectra's blocks are (weights_table): with every layer measured (probe.layers=all) the
    final one, measured as -1, is its own index, the model's depth; a list of layers keeps its indices."""
    measured = {layer for p in points for layer in p.geometry}
    below = measured - {-1}
    every = -1 in measured and bool(below) and below == set(range(max(below) + 1))
    rows = []
    for p in points:
        for layer, g in p.geometry.items():
            layer = max(below) + 1 if every and layer == -1 else layer
            values = g.metrics()
            for key, value in values.items():
                if key.endswith("_se") or not key.startswith(M.GEOMETRY):
                    continue
                metric = key.removeprefix(M.GEOMETRY)
                se = values.get(f"{key}_se", float("nan"))
                rows.append(
                    {"step": p.checkpoint.step, "revision": p.checkpoint.revision, "tokens": p.checkpoint.tokens}
                    | {"layer": layer, "metric": metric, "value": value, "se": se}
                )
    return pd.DataFrame(rows, columns=["step", "revision", "tokens", "layer", "metric", "value", "se"])


def weights_table(points) -> pd.DataFrame:
    """Every block matrix's weight-spectrum measures at every checkpoint (probe.weights), long: step, revision,
    tokens, layer (the block's output in hidden_states), matrix, metric, value."""
    rows = [
        {"step": p.checkpoint.step, "revision": p.checkpoint.revision, "tokens": p.checkpoint.tokens}
        | {"layer": s.layer, "matrix": s.matrix, "metric": metric, "value": value}
        for p in points
        for s in p.weights
        for metric, value in s.metrics().items()
    ]
    return pd.DataFrame(rows, columns=["step", "revision", "tokens", "layer", "matrix", "metric", "value"])


@dataclass
class TraceSummary:
    """Phases read off a RankMe trajectory, and the figure of it (RankMe, alpha, loss; shaded by phase)."""

    steps: list[int]
    phases: Phases | None  # None with fewer than 3 checkpoints
    figure: object | None  # None with a single checkpoint

    def phase_history(self) -> dict[str, dict[int, float]]:
        return {M.PHASE: dict(zip(self.steps, self.phases.labels))} if self.phases else {}

    def phase_tags(self) -> dict[str, str]:
        if not self.phases:
            return {}
        return {
            TAG_PHASES: self.phases.describe(),
            TAG_PHASE_BOUNDARIES: ",".join(map(str, self.phases.boundaries)) or "none",
        }


def summarize_trace(
    steps: Sequence[int],
    rankme: Sequence[float],
    alpha: Sequence[float],
    loss: Sequence[float] | None,
    rule: PhaseRule,
    stages: Sequence[str] | None = None,
    errors: tuple[Sequence[float], Sequence[float]] | None = None,
    title: str = "",
    accuracy: dict[str, Sequence[float]] | None = None,
) -> TraceSummary:
    """Phases (from 3 checkpoints on) and the trajectory figure (from 2 on) of one trace, with downstream
    ``accuracy`` (task -> values) where measured. A trace over the stages of a post-training pipeline has no
    pretraining phases: its figure is labelled by stage instead."""
    phases = (
        detect(list(steps), list(rankme), rule.min_change, rule.bandwidth) if len(steps) > 2 and not stages else None
    )
    figure = None
    if len(steps) > 1:
        figure = plots.trajectory(
            list(steps),
            list(rankme),
            list(alpha),
            loss=loss,
            phases=phases.labels if phases else None,
            stages=stages,
            errors=errors,
            title=title,
            accuracy=accuracy,
        )
    return TraceSummary(list(steps), phases, figure)


def by_phase_table(
    steps: Sequence[int],
    labels: Sequence[int],
    series: dict[str, list[float]],
    change_se: dict[str, Callable[[int, int], float]] | None = None,
) -> pd.DataFrame:
    """Each behavioural metric's change within each detected phase: its value at the phase's first and last
    checkpoint, the change, and its SE. ``change_se`` gives, for the metrics whose checkpoints were scored on the
    same items (the harness's tasks, memorization), the SE of the change between two checkpoints (by index), paired
    over those items; elsewhere it is left empty (a toy accuracy has no per-item record here)."""
    rows, start = [], 0
    for end in range(1, len(labels) + 1):
        if end < len(labels) and labels[end] == labels[start]:
            continue
        first, last = start, end - 1
        for metric, values in series.items():
            paired = (change_se or {}).get(metric)
            rows.append(
                {
                    "metric": metric,
                    "phase": PHASE_NAMES.get(labels[start], str(labels[start])),
                    "start_step": steps[first],
                    "end_step": steps[last],
                    "start": values[first],
                    "end": values[last],
                    "change": values[last] - values[first],
                    "change_se": paired(first, last) if paired and last > first else float("nan"),
                }
            )
        start = end
    return pd.DataFrame(rows)


def ablation_table(points, phases: Phases | None) -> pd.DataFrame | None:
    """Table 1 of the paper, one row per (checkpoint, task); None when no checkpoint was ablated."""
    labels = phases.labels if phases else [None] * len(points)
    rows = [
        {"step": p.checkpoint.step, "phase": label, "results": p.ablation}
        for p, label in zip(points, labels)
        if p.ablation
    ]
    return tail_ablation_table(rows) if rows else None


def post_training_history(history: dict[int, dict[str, float]]) -> pd.DataFrame:
    """Every measurement of a post-training job by post-training step."""
    return pd.DataFrame.from_dict(history, orient="index").rename_axis("step").reset_index()


def post_training_figure(frame: pd.DataFrame, method: str, stages: list[str] | None = None, title: str = ""):
    """The trajectory over post-training steps, a pipeline's ``stages`` shaded, or None with fewer than two
    geometry measurements."""
    geometry = frame.dropna(subset=[M.RANKME])
    if len(geometry) < 2:
        return None
    spans = None
    if stages and M.STAGE in frame:  # a stage runs from where the last one ended to its own last step
        ends = frame.groupby(M.STAGE)["step"].max()
        spans = [(stages[int(i)], ends.get(i - 1, 0), end) for i, end in ends.items()]
    paired = all(M.change(M.geometry(m)) + s in geometry for m in ("rankme", "alpha_req") for s in ("", "_se"))
    if paired:  # the change from the base with its paired SE: the bands of two levels would overlap
        values = [list(geometry[M.change(M.geometry(m))]) for m in ("rankme", "alpha_req")]
        errors = tuple(list(geometry[M.se(M.change(M.geometry(m)))]) for m in ("rankme", "alpha_req"))
        names = ("RankMe − base", "α-ReQ − base")
    else:
        values = [list(geometry[M.RANKME]), list(geometry[M.ALPHA_REQ])]
        errors = (list(geometry[M.RANKME_SE]), list(geometry[M.ALPHA_SE])) if M.RANKME_SE in geometry else None
        names = ("RankMe", "α-ReQ")
    return plots.trajectory(
        list(geometry["step"]),
        *values,
        loss=list(geometry[M.PROBE_LOSS]) if M.PROBE_LOSS in geometry else None,
        xlabel=f"{method} step",
        spans=spans,
        errors=errors,
        title=title,
        names=names,
        log_x=False,  # post-training's steps are evenly spaced: a log axis crowds them to the right
    )


def tail_ablation_table(rows: list[dict]) -> pd.DataFrame:
    """Table-1 shape: one row per (checkpoint, task), one column per variant (full, top-K only, without top-K)."""
    records = []
    for row in rows:
        by_task: dict[str, dict] = {}
        for key, value in row["results"].items():
            variant, task = key.split("/", 1)
            by_task.setdefault(task, {"step": row["step"], "phase": row.get("phase"), "task": task})[variant] = value
        records.extend(by_task.values())
    return pd.DataFrame.from_records(records)
