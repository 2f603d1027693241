"""Weight spectra, data-free: the heavy-tailed self-regularisation measures of each transformer block's weight
matrices (Martin & Mahoney 2021, the measures WeightWatcher reports), beside the activation geometry of the same
checkpoint.

Each matrix W's empirical spectral density is the squared singular values of W (the eigenvalues of W^T W). Its tail
is fit by a power law p(x) ~ x^-alpha above x_min by the method of Clauset, Shalizi & Newman (2009): for each
candidate x_min the maximum-likelihood alpha = 1 + n / sum log(x_i / x_min), and the x_min kept is the one whose
fit is nearest the data in Kolmogorov-Smirnov distance. That is WeightWatcher's own default fit (for 20 or more
eigenvalues) and ``powerlaw.Fit``'s with its alpha range opened (its default caps alpha at 3); here it is vectorised
in torch, so a matrix takes tens of milliseconds, not the seconds of the library's loop over candidates
(tests/test_weights.py checks the two agree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from geomsweep.keys import metrics as M

CHUNK = 512  # x_min candidates scored at once: CHUNK x len(eigenvalues) doubles of scratch memory


@dataclass(frozen=True)
class TailFit:
    """The power law fit to the tail of a spectrum: p(x) ~ x^-alpha for x >= xmin."""

    alpha: float
    xmin: float
    ks_distance: float  # the fit's Kolmogorov-Smirnov distance to the tail's empirical distribution
    n_tail: int  # eigenvalues at or above xmin


NO_FIT = TailFit(math.nan, math.nan, math.nan, 0)


def power_law_fit(values: torch.Tensor) -> TailFit:
    """The Clauset-Shalizi-Newman fit of ``values`` (non-positive values left out): every distinct value but the
    largest is an x_min candidate; NaN with fewer than three distinct values, as ``powerlaw.Fit``."""
    x = values.detach().to("cpu", torch.float64)
    x = x[x > 0].sort().values
    unique, counts = torch.unique_consecutive(x, return_counts=True)
    if len(unique) < 3:
        return NO_FIT
    first = torch.cumsum(counts, 0) - counts  # where each distinct value first appears
    candidates = first[:-1]
    n, logs = len(x), x.log()
    suffix = torch.flip(torch.cumsum(torch.flip(logs, [0]), 0), [0])  # suffix[j] = sum of logs[j:]
    tail = n - candidates
    alphas = 1 + tail / (suffix[candidates] - tail * logs[candidates])
    distinct = torch.zeros(n, dtype=torch.bool)
    distinct[first] = True  # the empirical CDF is read at each distinct value: the share of the tail below it
    position = torch.arange(n)
    distances = []
    for start, alpha, size in zip(candidates.split(CHUNK), alphas.split(CHUNK), tail.split(CHUNK)):
        offset = position[None, :] - start[:, None]
        fitted = 1 - torch.exp((1 - alpha[:, None]) * (logs[None, :] - logs[start][:, None]))
        gap = (fitted - offset / size[:, None]).abs()
        distances.append(torch.where((offset >= 0) & distinct[None, :], gap, 0.0).amax(dim=1))
    distance = torch.cat(distances)
    distance = torch.where(torch.isfinite(alphas) & (alphas > 1), distance, math.inf)
    best = int(distance.argmin())
    return TailFit(float(alphas[best]), float(x[candidates[best]]), float(distance[best]), int(tail[best]))


@dataclass(frozen=True)
class MatrixSpectrum:
    """One weight matrix's spectrum and the measures read from it."""

    layer: int  # the hidden_states index of its block's output (block i -> i + 1), as probe.layers counts
    matrix: str  # its module's name inside the block, e.g. attention.query_key_value
    shape: tuple[int, int]
    eigs: torch.Tensor  # squared singular values, descending
    fit: TailFit

    def metrics(self) -> dict[str, float]:
        """WeightWatcher's per-matrix measures: alpha; alpha weighted by log10 of the largest eigenvalue; the
        stable rank sum(lambda) / lambda_max; log10 of the spectral norm squared (lambda_max)."""
        top = float(self.eigs[0]) if len(self.eigs) else math.nan
        log_top = math.log10(top) if top > 0 else math.nan
        return {
            "alpha": self.fit.alpha,
            "alpha_weighted": self.fit.alpha * log_top,
            "stable_rank": float(self.eigs.sum()) / top if top > 0 else math.nan,
            "log_spectral_norm": log_top,
        }


def blocks(model: nn.Module) -> nn.ModuleList:
    """The model's stack of transformer blocks: the module list as long as ``config.num_hidden_layers``."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    depth = getattr(config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return module
    raise ValueError(
        f"probe.weights=true: no list of {depth} blocks (config.num_hidden_layers) in {type(model).__name__}; "
        f"valid: a transformers decoder whose blocks sit in one nn.ModuleList"
    )


def matrices(block: nn.Module) -> dict[str, torch.Tensor]:
    """Each 2-D weight of a block's linear maps (nn.Linear, GPT-2's Conv1D), by module name. A peft LoRA layer
    counts once, as its effective weight W + scale * B A, not as three matrices."""
    found: dict[str, torch.Tensor] = {}
    for name, module in block.named_modules():
        if any(name.startswith(f"{seen}.") for seen in found):
            continue  # inside a LoRA layer already taken whole
        if hasattr(module, "base_layer") and hasattr(module, "get_delta_weight"):
            weight = module.base_layer.weight.detach()
            for adapter in getattr(module, "active_adapters", []):
                if adapter in getattr(module, "lora_A", {}):
                    weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
            found[name] = weight
        elif isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            found[name] = module.weight.detach()
    return found


@torch.no_grad()
def weight_spectra(model: nn.Module) -> list[MatrixSpectrum]:
    """Every block matrix's spectrum and power-law fit, in block order (embeddings and the unembedding are not
    blocks: left out, as WeightWatcher leaves out what it cannot place in a layer)."""
    spectra = []
    for index, block in enumerate(blocks(model)):
        for name, weight in matrices(block).items():
            precision = torch.float64 if weight.device.type == "cpu" else torch.float32  # GPUs' float64 is slow
            eigs = torch.linalg.svdvals(weight.to(precision)).to("cpu", torch.float64) ** 2
            spectra.append(MatrixSpectrum(index + 1, name, tuple(weight.shape), eigs, power_law_fit(eigs)))
    return spectra


def weight_metrics(spectra: list[MatrixSpectrum]) -> dict[str, float]:
    """``weights/<measure>``: each measure's mean over all block matrices (WeightWatcher's summary)."""
    if not spectra:
        return {}
    per_matrix = [s.metrics() for s in spectra]
    return {
        M.weights(key): float(torch.tensor([m[key] for m in per_matrix], dtype=torch.float64).nanmean())
        for key in per_matrix[0]
    }
