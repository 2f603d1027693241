"""Geometry beyond RankMe and alpha-ReQ: a declared suite of measures, each computed from one mergeable state.

A measure declares the state it needs, and every state merges across batches, processes and jackknife groups
(``core/states.py``), so a measure needs no pass of its own:

- the streaming **covariance** (the same one RankMe and alpha-ReQ read): participation ratio, its bias-corrected
  form, stable rank, top-10 explained variance;
- the **sum of unit vectors** of the raw representations: anisotropy;
- a bounded, seeded **reservoir** of representations: TwoNN intrinsic dimension.

``probe.metrics`` picks them by name (``METRICS`` in core/definitions.py); each is logged as
``geometry/<name>``, covariance measures with a jackknife SE from the same groups as RankMe's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from geomsweep.keys import metrics as M

TOP_K = 10  # top-k explained variance: the share of the variance in the k largest directions


@dataclass(frozen=True)
class CovarianceMeasure:
    """A function of the covariance matrix of N representations (its eigenvalues, descending, and N)."""

    name: str
    compute: Callable[[torch.Tensor, torch.Tensor, int], float]  # (covariance, eigenvalues, N) -> value


def participation_ratio(covariance: torch.Tensor, eigs: torch.Tensor, n: int) -> float:
    """(sum lambda)^2 / sum lambda^2 = tr(S)^2 / tr(S^2) (Gao et al. 2017): from 1 to D."""
    trace, frobenius = float(torch.trace(covariance)), float((covariance * covariance).sum())
    return trace * trace / frobenius if frobenius > 0 else math.nan


def participation_ratio_corrected(covariance: torch.Tensor, eigs: torch.Tensor, n: int) -> float:
    """The participation ratio with tr(Sigma^2) and tr(Sigma)^2 estimated without their finite-sample bias under a
    Gaussian model: for S the unbiased covariance of n draws, E tr(S^2) = n/(n-1) tr(Sigma^2) + tr(Sigma)^2/(n-1)
    and E tr(S)^2 = tr(Sigma)^2 + 2 tr(Sigma^2)/(n-1), solved for the two population traces. The plain ratio
    underestimates a high-dimensional PR when N is close to D; this one does much less so."""
    if n < 4:
        return math.nan
    t1, t2 = float(torch.trace(covariance)), float((covariance * covariance).sum())
    square = (n - 1) * ((n - 1) * t2 - t1 * t1) / ((n - 2) * (n + 1))
    if square <= 0:
        return math.nan
    return (t1 * t1 - 2 * square / (n - 1)) / square


def stable_rank(covariance: torch.Tensor, eigs: torch.Tensor, n: int) -> float:
    """sum lambda / lambda_1 (Rudelson & Vershynin 2007, on the covariance): from 1 to D."""
    return float(eigs.sum() / eigs[0]) if eigs.numel() and eigs[0] > 0 else math.nan


def top_variance(covariance: torch.Tensor, eigs: torch.Tensor, n: int) -> float:
    """The share of the total variance in the top ``TOP_K`` directions."""
    total = float(torch.trace(covariance))
    return float(eigs[:TOP_K].sum()) / total if total > 0 else math.nan


COVARIANCE_MEASURES = {
    m.name: m
    for m in (
        CovarianceMeasure("participation_ratio", participation_ratio),
        CovarianceMeasure("participation_ratio_corrected", participation_ratio_corrected),
        CovarianceMeasure("stable_rank", stable_rank),
        CovarianceMeasure(f"top{TOP_K}_variance", top_variance),
    )
}


def covariance_measures(covariance: torch.Tensor, eigs: torch.Tensor, n: int, names) -> dict[str, float]:
    """``geometry/<name>`` of each covariance measure in ``names`` (others are skipped)."""
    return {
        M.geometry(name): COVARIANCE_MEASURES[name].compute(covariance, eigs, n)
        for name in names
        if name in COVARIANCE_MEASURES
    }


def anisotropy(direction_sum: torch.Tensor, count: int) -> float:
    """The mean cosine similarity over distinct pairs of representations (Ethayarajh 2019):
    (|sum_i u_i|^2 - N) / (N (N - 1)) with u_i = x_i / |x_i|, exact from the sum of unit vectors."""
    if count < 2:
        return math.nan
    return (float(direction_sum @ direction_sum) - count) / (count * (count - 1))


def two_nn(points: torch.Tensor) -> float:
    """TwoNN intrinsic dimension (Facco et al. 2017), maximum likelihood form: with mu_i = r2 / r1, the ratio of
    each point's second- to first-nearest-neighbour distance, d = (N - 1) / sum_i log mu_i. Duplicate points
    (r1 = 0) are left out. Biased low when the manifold curves on the scale of the neighbours, or when N is
    small for the dimension (a few hundred points per dimension keeps it within a few per cent)."""
    x = points.to(torch.float64)
    if len(x) < 3:
        return math.nan
    distances = torch.cdist(x, x)
    distances.fill_diagonal_(math.inf)
    nearest = distances.topk(2, dim=1, largest=False).values
    r1, r2 = nearest[:, 0], nearest[:, 1]
    keep = r1 > 0
    log_mu = (r2[keep] / r1[keep]).log()
    return float((keep.sum() - 1) / log_mu.sum()) if log_mu.sum() > 0 else math.nan
