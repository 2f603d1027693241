"""Spectral geometry of a set of representations: streaming covariance, eigenspectrum, RankMe, alpha-ReQ.

Pure torch. Definitions follow the NeurIPS 2025 study (see README, "What the metrics mean"):
RankMe is the exponentiated entropy of the normalized eigenspectrum; alpha-ReQ is the slope of a 1/k-weighted
least-squares fit of log(lambda_k) against log(k) over a fixed rank window.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace

import torch

from geomsweep.core.definitions import REFERENCE_FIT, REFERENCE_MAX_EIGS, RankMeVariant
from geomsweep.core.suite import COVARIANCE_MEASURES, covariance_measures
from geomsweep.keys import metrics as M

RANKME_EPS = 1e-7
R2_WIDE_LAST = 500  # the wide R^2 window ends at rank 500 when 512 or more eigenvalues are kept, else at kept - 10


def wide_window_last(kept: int) -> int:
    """The last 1-based rank of the reference's wide R^2 window: its ``500 if len >= 512 else len - 10`` (so 501 at
    511 eigenvalues, 500 again at 512), len being the eigenvalues kept (its PCA's are all positive, round-off
    included)."""
    return R2_WIDE_LAST if kept >= R2_WIDE_LAST + 12 else kept - 10


class StreamingCovariance:
    """Covariance of rows seen batch by batch, in float64, without ever holding the N x D matrix.

    Batches are merged with Chan et al.'s pairwise update of (count, mean, centered scatter), which stays exact
    when the mean is large relative to the spread, unlike a running sum of x x^T.
    Shaped like a torchmetrics metric: ``update(batch)`` per batch, ``compute()`` at the end, ``merge(other)`` to
    combine the states of disjoint shards (processes, jobs, jackknife groups) into the state of their union.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Back to the empty state."""
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.scatter: torch.Tensor | None = None

    @property
    def dim(self) -> int | None:
        return None if self.mean is None else self.mean.numel()

    def update(self, batch: torch.Tensor) -> None:
        if batch.ndim != 2:
            raise ValueError(f"expected a (batch, dim) matrix, got shape {tuple(batch.shape)}")
        if batch.shape[0] == 0:
            return
        x = batch.detach().to(device="cpu", dtype=torch.float64)
        mean = x.mean(dim=0)
        centered = x - mean
        self._combine(x.shape[0], mean, centered.T @ centered)

    def merge(self, other: StreamingCovariance) -> StreamingCovariance:
        """Fold in the state of ``other`` (rows disjoint from this one's); returns self. Exact: merging the
        states of K shards equals one pass over all their rows, up to round-off."""
        if other.count:
            self._combine(other.count, other.mean.clone(), other.scatter.clone())
        return self

    def _combine(self, n_b: int, mean_b: torch.Tensor, scatter_b: torch.Tensor) -> None:
        """Chan et al.'s pairwise combination of (count, mean, scatter) states."""
        if self.mean is None:
            self.count, self.mean, self.scatter = n_b, mean_b, scatter_b
            return
        if mean_b.numel() != self.dim:
            raise ValueError(f"batch has dim {mean_b.numel()}, earlier batches had dim {self.dim}")
        n_a, total = self.count, self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / total)
        self.scatter = self.scatter + scatter_b + torch.outer(delta, delta) * (n_a * n_b / total)
        self.count = total

    def compute(self) -> torch.Tensor:
        """Unbiased covariance (divides by N - 1)."""
        if self.scatter is None or self.count < 2:
            raise ValueError(f"need at least 2 representations for a covariance, got {self.count}")
        return self.scatter / (self.count - 1)


def eigenspectrum(covariance: torch.Tensor, max_eigs: int | None = None) -> torch.Tensor:
    """Eigenvalues of a symmetric PSD matrix in descending order, tiny negative round-off clamped to 0.

    ``max_eigs`` keeps only the largest ones (the reference code caps at 2048); None keeps all.
    """
    eigs = torch.linalg.eigvalsh(covariance.to(torch.float64)).flip(0).clamp(min=0.0)
    if max_eigs is not None:
        if max_eigs < 1:
            raise ValueError(f"max_eigs must be a positive integer or None, got {max_eigs}")
        eigs = eigs[:max_eigs]
    return eigs


def rankme(eigs: torch.Tensor, variant: str = "eigen") -> float:
    """Effective rank exp(H(p)), p_i = s_i / sum|s| + 1e-7, with s = eigenvalues ("eigen", the study's
    definition) or their square roots, the singular values of the centered data ("singular", Garrido et al.)."""
    if variant not in RankMeVariant.__members__:
        raise ValueError(f"unknown RankMe variant {variant!r}; valid: {', '.join(RankMeVariant)}")
    s = eigs.to(torch.float64)
    if variant == "singular":
        s = s.clamp(min=0).sqrt()
    total = s.abs().sum()
    if total <= 0:
        raise ValueError("the spectrum is all zeros: the representations do not vary")
    p = s / total + RANKME_EPS
    return float(torch.exp(-(p * p.log()).sum()))


@dataclass(frozen=True)
class PowerLawFit:
    alpha: float  # decay exponent: lambda_k ~ k^-alpha
    intercept: float  # log-lambda at k = 1 of the fitted line
    r2: float  # R^2 of log-lambda vs the fit over ranks fit_start + 1 .. fit_end (the reference's window)
    r2_wide: float  # R^2 over ranks fit_start + 1 .. wide_window_last(kept) (the reference's wide window)


def _r2(log_eigs: torch.Tensor, log_ranks: torch.Tensor, alpha: float, intercept: float) -> float:
    predicted = intercept - alpha * log_ranks
    ss_res = ((log_eigs - predicted) ** 2).sum()
    ss_tot = ((log_eigs - log_eigs.mean()) ** 2).sum()
    return float(1.0 - ss_res / ss_tot) if ss_tot > 0 else float("nan")


def alpha_req(
    eigs: torch.Tensor, fit_start: int = REFERENCE_FIT[0], fit_end: int = REFERENCE_FIT[1], n_samples: int | None = None
) -> PowerLawFit:
    """Fit lambda_k ~ k^-alpha by least squares of log(lambda) on log(k), weights 1/k, over 1-based ranks
    fit_start .. fit_end inclusive (Stringer et al. 2019; 12 .. 100 in the study).

    R^2 is scored over the reference code's windows, which start one rank later than the fit (it increments its
    rank array in place before scoring): ranks fit_start + 1 .. fit_end, and fit_start + 1 .. 500 (kept - 10 when
    fewer than 512 positive eigenvalues are kept).
    A spectrum shorter than the window raises; zero eigenvalues inside the window (fewer samples than ranks)
    give NaN with a warning rather than a number computed from log(0); so does a wide window that reaches past
    rank ``n_samples - 1``, where the eigenvalues are round-off.
    """
    if not 1 <= fit_start < fit_end:
        raise ValueError(f"fit range must satisfy 1 <= fit_start < fit_end, got {fit_start}..{fit_end}")
    n = eigs.numel()
    if n < fit_end:
        raise ValueError(
            f"the spectrum has {n} eigenvalues but the alpha-ReQ fit range {fit_start}..{fit_end} needs at "
            f"least {fit_end}: lower probe.fit_end (<= {n}) or use a wider model / more sequences"
        )
    eigs = eigs.to(torch.float64)
    window = eigs[fit_start - 1 : fit_end]
    if (window <= 0).any():
        zero_from = fit_start + int((window <= 0).nonzero()[0])
        warnings.warn(
            f"eigenvalue {zero_from} is zero inside the alpha-ReQ fit range {fit_start}..{fit_end} (too few "
            f"sequences, or collapsed representations); alpha is NaN",
            stacklevel=2,
        )
        nan = float("nan")
        return PowerLawFit(nan, nan, nan, nan)
    ranks = torch.arange(fit_start, fit_end + 1, dtype=torch.float64)
    x, y, w = ranks.log(), window.log(), 1.0 / ranks
    # Weighted least squares for y = intercept - alpha * x, in closed form.
    xm, ym = (w * x).sum() / w.sum(), (w * y).sum() / w.sum()
    slope = (w * (x - xm) * (y - ym)).sum() / (w * (x - xm) ** 2).sum()
    alpha, intercept = float(-slope), float(ym - slope * xm)

    def r2_over(first: int, last: int) -> float:
        if last <= first or (eigs[first - 1 : last] <= 0).any():
            return float("nan")
        k = torch.arange(first, last + 1, dtype=torch.float64)
        return _r2(eigs[first - 1 : last].log(), k.log(), alpha, intercept)

    wide_last = wide_window_last(n)
    if n_samples is not None and wide_last > n_samples - 1:
        warnings.warn(
            f"the wide R^2 window {fit_start + 1}..{wide_last} reaches past rank {n_samples - 1}, the last non-zero "
            f"eigenvalue of {n_samples} sequences (the rest is round-off): alpha_r2_wide is NaN; keep the cap "
            f"probe.max_eigs (the reference's 2048 keeps at most N) or use more sequences",
            stacklevel=2,
        )
        wide = float("nan")
    else:
        wide = r2_over(fit_start + 1, wide_last)
    return PowerLawFit(alpha, intercept, r2_over(fit_start + 1, fit_end), wide)


@dataclass(frozen=True)
class Geometry:
    """Every spectral measure of one set of representations, plus the definition choices behind them."""

    eigs: torch.Tensor
    rankme: float
    fit: PowerLawFit
    n_samples: int
    errors: dict[str, float] = field(default_factory=dict)  # jackknife standard errors: geometry/<metric>_se
    replicates: torch.Tensor | None = None  # (K, 2): RankMe and alpha of the probe set less each group in turn
    measures: dict[str, float] = field(default_factory=dict)  # the suite's other measures: geometry/<name>

    @property
    def finite(self) -> bool:
        """False when the representations held NaN or inf (every metric is then NaN)."""
        return math.isfinite(self.rankme)

    def metrics(self) -> dict[str, float]:
        return (
            {
                M.RANKME: self.rankme,
                M.ALPHA_REQ: self.fit.alpha,
                M.ALPHA_R2: self.fit.r2,
                M.ALPHA_R2_WIDE: self.fit.r2_wide,
                M.N_EIGS: float(len(self.eigs)),
            }
            | self.measures
            | self.errors
        )


def spectral_geometry(
    cov: StreamingCovariance,
    *,
    rankme_variant: str = "eigen",
    fit_start: int = REFERENCE_FIT[0],
    fit_end: int = REFERENCE_FIT[1],
    max_eigs: int | None = REFERENCE_MAX_EIGS,
) -> Geometry:
    """Covariance accumulator -> eigenspectrum -> RankMe and alpha-ReQ, refusing too few samples up front.

    Like the reference's PCA, it keeps the largest min(max_eigs, N, D) eigenvalues (max_eigs=None keeps all D,
    round-off included): with 2048 this matters for every model wider than 2048 and whenever N < D. A model
    narrower than the fit range (D < fit_end) gets its RankMe, with alpha-ReQ and R^2 NaN and a warning."""
    if cov.count < fit_end + 1:
        raise ValueError(
            f"{cov.count} sequences give at most {max(cov.count - 1, 0)} non-zero eigenvalues, but the alpha-ReQ "
            f"fit range {fit_start}..{fit_end} needs at least {fit_end + 1} sequences: raise probe.n_sequences "
            f"or lower probe.fit_end"
        )
    kept = min(max_eigs, cov.count, cov.dim) if max_eigs is not None else cov.dim
    covariance = cov.compute()
    if not torch.isfinite(covariance).all():  # NaN or inf representations (NaN weights, a diverged run)
        warnings.warn("the representations hold NaN or inf values: every spectral metric is NaN", stacklevel=2)
        nan = float("nan")
        return Geometry(torch.full((kept,), nan, dtype=torch.float64), nan, PowerLawFit(nan, nan, nan, nan), cov.count)
    eigs = eigenspectrum(covariance, kept)
    if kept < fit_end:  # a model narrower than the fit range: RankMe is defined, alpha-ReQ is not
        warnings.warn(
            f"the spectrum has {kept} eigenvalues, fewer than the alpha-ReQ fit range {fit_start}..{fit_end} "
            f"needs: alpha-ReQ and its R^2 are NaN (lower probe.fit_end to <= {kept} to fit one)",
            stacklevel=2,
        )
        nan = float("nan")
        return Geometry(eigs, rankme(eigs, rankme_variant), PowerLawFit(nan, nan, nan, nan), cov.count)
    fit = alpha_req(eigs, fit_start, fit_end, n_samples=cov.count)
    return Geometry(eigs, rankme(eigs, rankme_variant), fit, cov.count)


def leave_one_out(groups: list[StreamingCovariance], measures=(), **geometry_args) -> torch.Tensor:
    """(K, 2 + M): RankMe, alpha-ReQ and the covariance ``measures`` of the suite (core/suite.py) of every group
    but i, for each of the K disjoint groups of the probe set. Each comes from merged covariance states, so the
    probe set is passed over only once."""
    estimates = []
    for left_out in range(len(groups)):
        rest = StreamingCovariance()
        for i, group in enumerate(groups):
            if i != left_out:
                rest.merge(group)
        geometry = spectral_geometry(rest, **geometry_args)
        extra = covariance_measures(rest.compute(), geometry.eigs, rest.count, measures)
        estimates.append((geometry.rankme, geometry.fit.alpha, *extra.values()))
    return torch.tensor(estimates, dtype=torch.float64)


def jackknife_se(replicates: torch.Tensor) -> torch.Tensor:
    """Delete-one-group jackknife standard errors, per column: sqrt((K - 1) / K * sum_i (theta_i - mean)^2)."""
    k = replicates.shape[0]
    return ((k - 1) / k * ((replicates - replicates.mean(dim=0)) ** 2).sum(dim=0)).sqrt()


def _errors(se: torch.Tensor, what: str = "se") -> dict[str, float]:
    return {f"{M.RANKME}_{what}": float(se[0]), f"{M.ALPHA_REQ}_{what}": float(se[1])}


def jackknife_errors(groups: list[StreamingCovariance], **geometry_args) -> dict[str, float]:
    """Jackknife standard errors of RankMe and alpha-ReQ over K disjoint groups of the probe set."""
    return _errors(jackknife_se(leave_one_out(groups, **geometry_args)))


def with_errors(geometry: Geometry, groups: list[StreamingCovariance], measures=(), **geometry_args) -> Geometry:
    """``geometry`` (of the groups' union) with its jackknife standard errors and the replicates behind them,
    for RankMe, alpha-ReQ and the suite's covariance ``measures``."""
    replicates = leave_one_out(groups, measures, **geometry_args)
    se = jackknife_se(replicates)
    names = [name for name in measures if name in COVARIANCE_MEASURES]
    errors = _errors(se) | {M.se(M.geometry(name)): float(value) for name, value in zip(names, se[2:])}
    return replace(geometry, errors=errors, replicates=replicates[:, :2])


def change_metrics(before: Geometry, after: Geometry) -> dict[str, float]:
    """RankMe's and alpha's change from ``before`` to ``after``, two measurements of the same probe texts in the
    same groups (a base model and the model it was trained into), with jackknife standard errors of the paired
    differences of their replicates: what the two share, the probe set's own sampling noise, cancels (adding
    their SEs in quadrature would count it twice)."""
    change = {
        M.RANKME_CHANGE: after.rankme - before.rankme,
        M.ALPHA_CHANGE: after.fit.alpha - before.fit.alpha,
    }
    if before.replicates is None or after.replicates is None:
        return change
    return change | _errors(jackknife_se(after.replicates - before.replicates), "change_se")
