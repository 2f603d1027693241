"""method=none: measure the geometry of every selected pretraining checkpoint, stepped by pretraining step."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from geomsweep import checkpoints as ckpts
from geomsweep.behavior.sample_eval import sampling_probe
from geomsweep.extract import accumulate, encode_batches
from geomsweep.spectra import Geometry, measure


@dataclass
class Point:
    """One checkpoint's measurements."""

    checkpoint: ckpts.Checkpoint
    geometry: dict[int, Geometry]  # by layer
    loss: float
    ablation: dict[str, float] | None = None  # spectral-tail ablation results (geomsweep/ablation.py)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:<n>, got {device!r}")
    return device


def resolve_dtype(dtype: str, device: str, preferred: str | None = None) -> str:
    """``auto``: float32 on a CPU; on a GPU the model's own training dtype (``model.dtype``), else float16."""
    if dtype == "auto":
        return (preferred or "float16") if device.startswith("cuda") else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    return dtype


def measure_model(model, tokenizer, texts: list[str], probe, progress: bool = True):
    """(geometry by layer, probe loss, covariance accumulators by layer) of the probe texts under ``model``."""
    batches = encode_batches(tokenizer, texts, probe.batch_size, probe.max_length, probe.padding_side)
    reps = accumulate(model, batches, list(probe.layers), probe.norm, progress=progress,
                      total=-(-len(texts) // probe.batch_size), with_loss=probe.loss)
    geometry = {
        layer: measure(cov, rankme_variant=probe.rankme, fit_start=probe.fit_start, fit_end=probe.fit_end,
                       max_eigs=probe.max_eigs)
        for layer, cov in reps.covariances.items()
    }
    return geometry, reps.loss, reps.covariances


def measure_checkpoint(checkpoint: ckpts.Checkpoint, model, tokenizer, texts: list[str], probe,
                       progress: bool = True) -> tuple[Point, dict]:
    """The checkpoint's Point, and its per-layer covariance accumulators (for the ablation; not kept)."""
    geometry, loss, covariances = measure_model(model, tokenizer, texts, probe, progress)
    return Point(checkpoint, geometry, loss), covariances


def toy_evaluation(cfg):
    """The toy world's behavior probes, when the model speaks the toy language (else None)."""
    if cfg.model.source != "toy" or not cfg.eval.toy_n_docs:
        return None
    from geomsweep.toy.pretrain import ToyConfig
    from geomsweep.toy.probes import ToyEvaluation

    return ToyEvaluation(ToyConfig.from_cfg(cfg.model.toy), cfg.eval.toy_n_docs, cfg.eval.ngram_order,
                         seed=cfg.seed + 7)


def ablation_ks(cfg, log) -> list[int]:
    """The ablation's K list; empty (with the reason as a run tag) when the probe does not measure the
    unembedding's input, e.g. a sweep over probe.norm, where the other cells still run their ablation."""
    ks = list(cfg.eval.ablation_k or [])
    if ks and (-1 not in cfg.probe.layers or cfg.probe.norm != "post"):
        reason = (f"skipped: eval.ablation_k={ks} projects the unembedding's input, measured only with "
                  f"probe.norm=post and -1 in probe.layers (got norm={cfg.probe.norm}, "
                  f"layers={list(cfg.probe.layers)})")
        warnings.warn(reason)
        log.tags({"geomsweep.ablation": reason})
        return []
    return ks


def device_map(cfg):
    """``device_map`` as transformers takes it (a string such as ``auto``, or a dict), or None."""
    value = cfg.get("device_map")
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def resolve_prefetch(prefetch, device: str) -> bool:
    """``auto`` prefetches only when measuring on a GPU: on CPU cores the background load competes with the
    measurement for the same cores (``make bench`` (e) measures about 1.0x on the toy) and doubles model memory."""
    if prefetch == "auto":
        return device.startswith("cuda")
    if isinstance(prefetch, bool):
        return prefetch
    raise ValueError(f"prefetch={prefetch!r}; valid: auto, true, false")


def run_trace(cfg, texts: list[str], log) -> list[Point]:
    """Measure each checkpoint in step order, logging its metrics as soon as it is done (a crash keeps them)."""
    available = ckpts.available(cfg.model, cfg.cache_dir, cfg.progress)
    selected = ckpts.select(available, cfg.checkpoint.select, cfg.checkpoint.get("steps"), cfg.checkpoint.get("num"),
                            cfg.checkpoint.get("every"))
    selected = ckpts.shard(selected, cfg.checkpoint.get("shard", 0), cfg.checkpoint.get("num_shards", 1))
    if not selected:
        raise ValueError(f"checkpoint.shard={cfg.checkpoint.shard} of {cfg.checkpoint.num_shards} holds no "
                         f"checkpoint: there are fewer checkpoints than shards")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device, cfg.model.get("dtype"))
    toy = toy_evaluation(cfg)
    ablation_k = ablation_ks(cfg, log) if toy is not None else []
    sampling = sampling_probe(cfg)
    sample_at = {c.step for c in selected} if cfg.sampler.at == "all" else {selected[-1].step}
    points = []
    stream = ckpts.loaded(selected, device, dtype, prefetch=resolve_prefetch(cfg.get("prefetch", "auto"), device),
                          device_map=device_map(cfg))
    for checkpoint, model, tokenizer in tqdm(stream, total=len(selected), desc="checkpoints", unit="ckpt",
                                             disable=not cfg.progress):
        point, covariances = measure_checkpoint(checkpoint, model, tokenizer, texts, cfg.probe, progress=cfg.progress)
        metrics = point.geometry[cfg.probe.layers[0]].metrics()
        if cfg.probe.loss:
            metrics["eval/probe_loss"] = point.loss
        if checkpoint.tokens is not None:
            metrics["tokens_seen"] = float(checkpoint.tokens)
        if toy is not None:
            metrics.update(toy.behavior(model, tokenizer))
        if ablation_k:
            from geomsweep.ablation import tail_ablation

            point.ablation = tail_ablation(model, covariances[-1], ablation_k, lambda: toy.tasks(model, tokenizer))
            metrics.update({f"ablation/{key}": value for key, value in point.ablation.items()
                            if not key.startswith("full/")})
        if sampling is not None and checkpoint.step in sample_at:
            metrics.update(sampling.update(model, tokenizer, checkpoint.step, log))
        log.metrics(metrics, step=checkpoint.step)
        points.append(point)
    if sampling is not None:
        sampling.log_plot(log)
    return points
