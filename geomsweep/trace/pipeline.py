"""method=none: measure the geometry (and behavior) of each selected pretraining checkpoint, in step order.

``trace`` yields one Point per checkpoint as soon as it is measured, so the caller can log it at once (a crash
keeps what was measured); it logs nothing itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import pandas as pd
from tqdm.auto import tqdm

from geomsweep.behavior.harness import harness_for
from geomsweep.behavior.memorization import memorization_for
from geomsweep.behavior.sample_eval import SamplingProbe
from geomsweep.behavior.toy_eval import ToyEvaluation
from geomsweep.config.toy import ToyConfig
from geomsweep.core.ablation import tail_ablation
from geomsweep.core.definitions import ALL_LAYERS, headline_layer
from geomsweep.core.measure import measure_model, resolve_device, resolve_dtype
from geomsweep.core.spectra import Geometry
from geomsweep.core.weights import MatrixSpectrum, weight_metrics, weight_spectra
from geomsweep.estimate.memory import BYTES, model_shape
from geomsweep.keys import metrics as M
from geomsweep.sources import checkpoints as ckpts
from geomsweep.sources.data import ProbeSet
from geomsweep.sources.hub_cache import RevisionCache, evicts
from geomsweep.sources.models import model_source


@dataclass
class Point:
    """One checkpoint's measurements: what is logged at its step, and what goes into the run's artifacts."""

    checkpoint: ckpts.Checkpoint
    geometry: dict[int, Geometry]  # by layer
    loss: float
    metrics: dict[str, float] = field(default_factory=dict)  # every metric logged at this step
    tables: dict[str, dict[str, list]] = field(default_factory=dict)  # MLflow tables by artifact path (samples)
    ablation: dict[str, float] | None = None  # spectral-tail ablation results (core/ablation.py)
    weights: list[MatrixSpectrum] = field(default_factory=list)  # probe.weights: each block matrix's spectrum
    documents: dict[str, object] = field(default_factory=dict)  # JSON artifacts by path (the harness's results)
    items: dict[str, list[float]] = field(default_factory=dict)  # the harness's per-item scores, by task/metric
    memorized: pd.DataFrame | None = None  # memorization's per-item table


def toy_evaluation(settings) -> ToyEvaluation | None:
    """The toy world's behavior probes, when the model speaks the toy language (else None)."""
    if not model_source(settings.model).toy_world or not settings.eval.toy_n_docs:
        return None
    return ToyEvaluation(
        ToyConfig.from_cfg(settings.model.toy),
        settings.eval.toy_n_docs,
        seed=settings.seed + 7,
    )


def ablation_plan(settings) -> tuple[list[int], str | None]:
    """The ablation's K list (empty without tasks to score: the toy's own, or the harness's with
    ``eval.harness.ablate``), or ([], the reason) when the probe does not measure the unembedding's input, e.g. in
    a sweep over probe.norm, where the other cells still run theirs."""
    toy_tasks = model_source(settings.model).toy_world and settings.eval.toy_n_docs
    if not toy_tasks and not (settings.eval.harness.ablate and harness_for(settings) is not None):
        return [], None
    ks = list(settings.eval.ablation_k)
    final = settings.probe.layers == ALL_LAYERS or -1 in settings.probe.layers
    if ks and (not final or settings.probe.norm != "post"):
        reason = (
            f"skipped: eval.ablation_k={ks} projects the unembedding's input, measured only with "
            f"probe.norm=post and -1 in probe.layers (got norm={settings.probe.norm}, "
            f"layers={list(settings.probe.layers)})"
        )
        warnings.warn(reason, stacklevel=2)
        return [], reason
    return ks, None


def task_scores(downstream: dict[str, float]) -> dict[str, float]:
    """The harness's scores as the ablation's tasks: ``<task>/<metric>``, stderrs left out."""
    return {
        key.removeprefix(M.DOWNSTREAM): value
        for key, value in downstream.items()
        if "_stderr" not in key.rsplit("/")[-1]
    }


def ablation_scorer(toy: ToyEvaluation | None, harness, model, tokenizer):
    """What the ablation scores under each projection: the toy's own tasks and the harness's, as configured."""

    def score() -> dict[str, float]:
        scores = toy.tasks(model, tokenizer) if toy is not None else {}
        if harness is not None:
            scores |= task_scores(harness.evaluate(model, tokenizer).metrics)
        return scores

    return score


def resolve_prefetch(prefetch, device: str) -> bool:
    """``auto`` prefetches only when measuring on a GPU: on CPU cores the background load competes with the
    measurement for the same cores (``make bench`` (e)) and doubles model memory. The schema has checked the value."""
    return device.startswith("cuda") if prefetch == "auto" else bool(prefetch)


def trace(
    settings, selected: list[ckpts.Checkpoint], probe: ProbeSet, sampling: SamplingProbe | None, ablation_k: list[int]
) -> Iterator[Point]:
    """Measure each checkpoint of ``selected`` in order: geometry and probe loss, the toy's tasks and the tail
    ablation, the harness's tasks, memorization, sampled behavior at the last (or every) checkpoint."""
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device, settings.model.dtype)
    toy = toy_evaluation(settings)
    harness = harness_for(settings)
    memorization = memorization_for(settings)
    sample_at = {c.step for c in selected} if settings.sampler.at == "all" else {selected[-1].step}
    layer = headline_layer(settings.probe.layers)
    cache = revision_cache(settings)
    stream = ckpts.loaded(
        selected,
        device,
        dtype,
        prefetch=resolve_prefetch(settings.prefetch, device),
        device_map=settings.device_map,
        trust_remote_code=settings.model.trust_remote_code,
        before=(lambda checkpoint: cache.check_room(checkpoint.hub_revision)) if cache else None,
    )
    for checkpoint, model, tokenizer in tqdm(
        stream, total=len(selected), desc="checkpoints", unit="ckpt", disable=not settings.progress
    ):
        measured = measure_model(
            model, tokenizer, probe.texts, settings.probe, settings.progress, documents=probe.documents
        )
        point = Point(checkpoint, measured.geometry, measured.loss, measured.metrics(layer, settings.probe.loss))
        if checkpoint.tokens is not None:
            point.metrics["tokens_seen"] = float(checkpoint.tokens)
        if settings.probe.weights:
            point.weights = weight_spectra(model)
            point.metrics.update(weight_metrics(point.weights))
        intact = {}  # the intact model's task scores, measured once for behaviour and the ablation
        if toy is not None:
            intact = toy.tasks(model, tokenizer)
            point.metrics.update({M.EVAL + name: value for name, value in intact.items()})
        if memorization is not None:
            scored = memorization.measure(model, tokenizer)
            point.metrics.update(scored.metrics)
            point.memorized = scored.table
        if harness is not None:
            scored = harness.evaluate(model, tokenizer)
            point.metrics.update(scored.metrics)
            point.documents[f"downstream/results_step{checkpoint.step}.json"] = scored.results
            point.items = scored.item_scores()
            if settings.eval.harness.log_samples:
                for task, rows in scored.samples.items():
                    point.documents[f"downstream/samples_step{checkpoint.step}_{task}.json"] = rows
            if settings.eval.harness.ablate:
                intact |= task_scores(scored.metrics)
        if ablation_k:
            score = ablation_scorer(toy, harness if settings.eval.harness.ablate else None, model, tokenizer)
            point.ablation = tail_ablation(model, measured.covariances[-1], ablation_k, score, intact)
            point.metrics.update(
                {M.ablation(key): value for key, value in point.ablation.items() if not key.startswith("full/")}
            )
        if sampling is not None and checkpoint.step in sample_at:
            values, point.tables = sampling.update(model, tokenizer, checkpoint.step)
            point.metrics.update(values)
        yield point
        if cache is not None:  # measured and logged: its files may go
            cache.measured(checkpoint.hub_revision)


def revision_cache(settings) -> RevisionCache | None:
    """A hub trace's use of the Hugging Face cache (``cache.evict``: auto is on), made before anything downloads."""
    model = settings.model
    if not model_source(model).downloads or model.stages:
        return None
    shape = model_shape(model, settings.cache_dir, settings.method.lora)
    size = shape.parameters * BYTES[str(model.dtype or "float32")] if shape else None
    return RevisionCache(model.hub_id, evicts(settings), size, settings.cache.reserve_gib)
