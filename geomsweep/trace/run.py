"""The trace runner (method=none): each selected checkpoint's metrics logged at its step as soon as it is measured,
then the trace's phases, spectra, figures and tables, all in the job's run."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from geomsweep.behavior.harness import paired_change
from geomsweep.behavior.memorization import rho_change
from geomsweep.behavior.sample_eval import INTERVALS, sampling_probe
from geomsweep.config.schema import Config
from geomsweep.core.definitions import headline_layer
from geomsweep.keys import metrics as M
from geomsweep.keys.tags import TAG_ABLATION, TAG_ALPHA_FIT, TAG_NONFINITE, TAG_STAGE_PREFIX
from geomsweep.results import artifacts, plots
from geomsweep.sources import checkpoints as ckpts
from geomsweep.sources.data import ProbeSet
from geomsweep.sources.models import resolve
from geomsweep.trace.pipeline import ablation_plan, trace
from geomsweep.tracking.writer import RunLogger


def run_trace(settings: Config, probe: ProbeSet, log: RunLogger) -> None:
    """The runner a job calls for method=none (the post-training runners take the same arguments)."""
    trace_checkpoints(settings, resolve(settings.model, settings.checkpoint, settings.cache_dir), probe, log)


def no_fit_reason(n_eigs: int, probe) -> str:
    return (
        f"no alpha-ReQ: {n_eigs} eigenvalues, fewer than the fit range {probe.fit_start}..{probe.fit_end} needs "
        f"(RankMe is measured; probe.fit_end <= {n_eigs} fits alpha)"
    )


def errors(points, layer: int) -> tuple[list[float], list[float]]:
    """Each point's jackknife standard errors of RankMe and alpha (NaN where its representations were not finite)."""
    nan = float("nan")
    return (
        [p.geometry[layer].errors.get(M.RANKME_SE, nan) for p in points],
        [p.geometry[layer].errors.get(M.ALPHA_SE, nan) for p in points],
    )


def accuracies(points) -> dict[str, list[float]] | None:
    """Downstream accuracy per task (``eval/<task>_acc``) at each checkpoint (NaN where one was not measured)."""
    keys = sorted({key for p in points for key in p.metrics if key.startswith(M.EVAL) and key.endswith("_acc")})
    return {key.removeprefix(M.EVAL): [p.metrics.get(key, float("nan")) for p in points] for key in keys} or None


def behaviour(points) -> dict[str, list[float]]:
    """Every behavioural metric at each checkpoint (NaN where one was not measured): the harness's downstream
    metrics (``<task>/<metric>``), the toy's accuracies and memorization."""
    keys = sorted(
        key
        for key in {key for p in points for key in p.metrics}
        if (key.startswith(M.DOWNSTREAM) and "_stderr" not in key.rsplit("/")[-1])
        or (key.startswith(M.EVAL) and key.endswith("_acc"))
        or key == M.MEMORIZATION
    )
    return {behaviour_label(key): [p.metrics.get(key, float("nan")) for p in points] for key in keys}


def behaviour_label(key: str) -> str:
    """A behavioural metric's name in the figure and the phase table: ``toy_recall/acc``, ``long_range_acc``,
    ``memorization``."""
    return key.removeprefix(M.DOWNSTREAM).removeprefix(M.EVAL).removeprefix(M.BEHAVIOR)


def trace_checkpoints(settings: Config, selected: list[ckpts.Checkpoint], probe: ProbeSet, log: RunLogger) -> None:
    """method=none: each checkpoint's metrics logged at its step as soon as it is measured, then the trace's
    phases, spectra, figures and tables."""
    ablation_k, skipped = ablation_plan(settings)
    if skipped:
        log.tags({TAG_ABLATION: skipped})
    points, nonfinite = [], []
    with sampling_probe(settings) as sampling:
        for point in trace(settings, selected, probe, sampling, ablation_k):
            log.metrics(point.metrics, step=point.checkpoint.step)
            headline = point.geometry[headline_layer(settings.probe.layers)]
            if not headline.finite:
                nonfinite.append(f"step {point.checkpoint.step} ({point.checkpoint.revision})")
                log.tags({TAG_NONFINITE: "non-finite representations at " + ", ".join(nonfinite)})
            if len(headline.eigs) < settings.probe.fit_end and not points:
                log.tags({TAG_ALPHA_FIT: no_fit_reason(len(headline.eigs), settings.probe)})
            for path, table in point.tables.items():
                log.json_table(table, path)
            for path, document in point.documents.items():
                log.document(document, path)
            if point.memorized is not None:
                log.table(point.memorized, f"{M.MEMORIZATION_ITEMS_TABLE}{point.checkpoint.step}.csv")
            points.append(point)
    if sampling is not None and sampling.curves:
        log.figure(plots.pass_at_k(sampling.curves, sampling.settings.n, log.name), "plots/pass_at_k.png")
        log.table(sampling.interval_table(), INTERVALS)
    layer, probe = headline_layer(settings.probe.layers), settings.probe
    steps = [p.checkpoint.step for p in points]
    stages = [p.checkpoint.stage for p in points] if settings.model.stages else None
    if stages:
        log.tags({f"{TAG_STAGE_PREFIX}{step}": stage for step, stage in zip(steps, stages)})
    summary = artifacts.summarize_trace(
        steps,
        [p.geometry[layer].rankme for p in points],
        [p.geometry[layer].fit.alpha for p in points],
        [p.loss for p in points] if probe.loss else None,
        settings.phases,
        stages,
        errors(points, layer) if probe.jackknife else None,
        title=log.name,
        accuracy=accuracies(points),
    )
    if summary.phases:
        log.history(summary.phase_history())
        log.tags(summary.phase_tags())
    log.table(artifacts.spectra_table(points, layer), "spectra/eigenspectra.csv")
    by_layer = artifacts.layers_table(points)
    log.table(by_layer, "spectra/metrics_by_layer.csv")
    if by_layer["layer"].nunique() > 1:  # a layer x step heatmap per measure
        for metric in by_layer["metric"].unique():
            if metric != "n_eigs":
                log.figure(plots.layer_heatmap(by_layer, metric, log.name), f"plots/layers_{metric}.png")
    if probe.weights:  # each block matrix's weight spectrum, on the same step axis
        weights = artifacts.weights_table(points)
        log.table(weights, "spectra/weights_by_layer.csv")
        for metric in weights["metric"].unique():
            log.figure(plots.layer_heatmap(weights, metric, log.name, of="block"), f"plots/weights_{metric}.png")
    log.figure(
        plots.eigenspectra(
            {p.checkpoint.step: p.geometry[layer].eigs for p in points},
            {p.checkpoint.step: p.geometry[layer].fit for p in points},
            probe.fit_start,
            probe.fit_end,
            log.name,
        ),
        "plots/eigenspectrum.png",
    )
    if summary.figure is not None:
        log.figure(summary.figure, "plots/trajectory.png")
    log_figure_one(points, summary, settings, log)
    table = artifacts.ablation_table(points, summary.phases)
    if table is not None:
        log.table(table, "ablation/tail_ablation.csv")


def log_figure_one(points, summary, settings: Config, log: RunLogger) -> None:
    """The paper's Figure 1 for this trace, ``plots/trace.png`` (probe loss, RankMe, α-ReQ and every behavioural
    metric against tokens seen, phases shaded), and ``downstream/by_phase.csv``: each behavioural metric's change
    within each phase."""
    if len(points) < 2:
        return
    layer, series = headline_layer(settings.probe.layers), behaviour(points)
    tokens = [p.checkpoint.tokens for p in points]
    known = all(t is not None for t in tokens)
    figure = plots.trajectory(
        tokens if known else [p.checkpoint.step for p in points],
        [p.geometry[layer].rankme for p in points],
        [p.geometry[layer].fit.alpha for p in points],
        loss=[p.loss for p in points] if settings.probe.loss else None,
        phases=summary.phases.labels if summary.phases else None,
        xlabel="tokens seen" if known else "step",
        title=log.name,
        accuracy=series or None,
        accuracy_label="behaviour",
    )
    log.figure(figure, "plots/trace.png")
    if summary.phases and series:
        table = artifacts.by_phase_table(summary.steps, summary.phases.labels, series, paired_errors(points, settings))
        log.table(table, "downstream/by_phase.csv")


def paired_errors(points, settings: Config) -> dict[str, Callable[[int, int], float]]:
    """For each behavioural metric scored on the same items at every checkpoint, the SE of its change between two
    checkpoints (by index): the harness's tasks (sd of per-item differences / sqrt n), memorization (jackknife)."""
    harness = {metric: partial(harness_change_se, points, metric) for p in points for metric in p.items}
    groups = settings.eval.memorization.jackknife
    return harness | {behaviour_label(M.MEMORIZATION): partial(memorization_change_se, points, groups)}


def harness_change_se(points, metric: str, first: int, last: int) -> float:
    before, after = points[first].items.get(metric), points[last].items.get(metric)
    return paired_change(before, after)[1] if before and after and len(before) == len(after) > 1 else float("nan")


def memorization_change_se(points, groups: int, first: int, last: int) -> float:
    before, after = points[first].memorized, points[last].memorized
    if before is None or after is None:
        return float("nan")
    return rho_change(before, after, groups)[M.se(M.change(M.MEMORIZATION))]
