"""Measuring one model: the probe texts through it -> geometry by layer and the probe loss. Shared by traces
(one measurement per checkpoint) and post-training (one every few optimizer steps), with where to run it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from geomsweep.core import processes, suite
from geomsweep.core.definitions import Dtype
from geomsweep.core.extract import accumulate, encode_batches, eval_mode, resolve_layers
from geomsweep.core.spectra import Geometry, StreamingCovariance, jackknife_se, spectral_geometry, with_errors
from geomsweep.core.states import jackknife_groups
from geomsweep.keys import metrics as M


def resolve_device(device: str) -> str:
    """``auto`` is CUDA when there is one; asking for CUDA where there is none is an error, not a fallback."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device={device} but this machine has no CUDA device (torch {torch.__version__}); valid here: auto, cpu"
        )
    return device


def resolve_dtype(dtype: str, device: str, preferred: str | None = None) -> str:
    """``auto``: float32 on a CPU; on a GPU the model's own training dtype (``model.dtype``), else float16."""
    if dtype == "auto":
        return str(preferred or "float16") if device.startswith("cuda") else "float32"
    if dtype not in Dtype.__members__:
        raise ValueError(f"dtype must be {', '.join(Dtype)}; got {dtype!r}")
    return str(dtype)


@dataclass
class Measurement:
    """The geometry of one model's probe representations, by layer, and the probe loss of the same passes."""

    geometry: dict[int, Geometry]
    loss: float  # NaN when probe.loss is off
    covariances: dict[int, StreamingCovariance]  # kept for the spectral-tail ablation and for merging

    def metrics(self, layer: int, with_loss: bool = True) -> dict[str, float]:
        """The headline metrics of ``layer``: ``geometry/*`` and ``eval/probe_loss``."""
        return self.geometry[layer].metrics() | ({M.PROBE_LOSS: self.loss} if with_loss else {})


def measure_model(
    model, tokenizer, texts: list[str], probe, progress: bool = True, documents: Sequence | None = None
) -> Measurement:
    """Every probe layer's spectral geometry of ``texts`` under ``model`` (``probe``: a ProbeConfig). ``documents``:
    the document each text was cut from, where the source knows it (block jackknife groups keep documents whole).
    Under torch.distributed each process measures its share and every process gets the whole set's figures."""
    context = getattr(model.config, "max_position_embeddings", None)
    if context and probe.max_length > context:  # longer inputs would index past the position table, or crawl
        raise ValueError(
            f"probe.max_length={probe.max_length} exceeds this model's context of {context} tokens "
            f"(config.max_position_embeddings); valid: 1..{context}"
        )
    start, stop = processes.share(len(texts), probe.batch_size)
    k = max(probe.jackknife, 1)
    assignment = jackknife_groups(len(texts), k, probe.jackknife_groups, documents) if k > 1 else None
    with eval_mode(model, tokenizer):
        mine = texts[start:stop]  # none when there are more processes than batches
        size = probe.batch_size
        batches = encode_batches(tokenizer, mine, size, probe.max_length, probe.padding_side) if mine else []
        reps = accumulate(
            model,
            batches,
            resolve_layers(model, probe.layers),
            probe.norm,
            progress=progress,
            total=-(-len(mine) // size),
            with_loss=probe.loss,
            groups=assignment,
            start=start,
            directions="anisotropy" in probe.metrics,
            reservoir=probe.reservoir if "twonn" in probe.metrics else 0,
        )
    reps = processes.merged(reps)
    args = {"rankme_variant": probe.rankme, "fit_start": probe.fit_start, "fit_end": probe.fit_end}
    args["max_eigs"] = probe.max_eigs
    covariances = reps.covariances
    geometry = {layer: spectral_geometry(cov, **args) for layer, cov in covariances.items()}
    for layer, g in geometry.items():  # the suite's other measures (probe.metrics), from the states kept
        geometry[layer] = replace(g, measures=suite_measures(reps, layer, covariances[layer], g, probe.metrics))
    for layer, groups in reps.groups.items():  # probe.jackknife=K: error bars from K disjoint groups
        if geometry[layer].finite:
            geometry[layer] = with_errors(geometry[layer], groups, list(probe.metrics), **args)
            if layer in reps.directions:
                replicates = [suite.anisotropy(*rest) for rest in reps.directions[layer].leave_one_out()]
                se = float(jackknife_se(torch.tensor(replicates, dtype=torch.float64)[:, None])[0])
                errors = geometry[layer].errors | {M.se(M.geometry("anisotropy")): se}
                geometry[layer] = replace(geometry[layer], errors=errors)
            if layer in reps.reservoirs:  # TwoNN of the kept rows outside each group in turn
                kept = reps.reservoirs[layer]
                kept_groups = assignment[kept.indices]
                replicates = [suite.two_nn(kept.rows[kept_groups != g]) for g in range(len(groups))]
                se = float(jackknife_se(torch.tensor(replicates, dtype=torch.float64)[:, None])[0])
                geometry[layer] = replace(
                    geometry[layer], errors=geometry[layer].errors | {M.se(M.geometry("twonn")): se}
                )
    return Measurement(geometry, reps.loss, covariances)


def suite_measures(reps, layer: int, cov: StreamingCovariance, geometry: Geometry, names) -> dict[str, float]:
    """``geometry/<name>`` of each measure in ``names`` beyond RankMe and alpha-ReQ (core/suite.py)."""
    if not geometry.finite or not names:
        return {}
    values = suite.covariance_measures(cov.compute(), geometry.eigs, cov.count, names)
    if "anisotropy" in names:
        values[M.geometry("anisotropy")] = suite.anisotropy(*reps.directions[layer].compute())
    if "twonn" in names:
        values[M.geometry("twonn")] = suite.two_nn(reps.reservoirs[layer].compute())
    return values
