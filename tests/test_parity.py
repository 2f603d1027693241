"""Metric parity with the study's own pipeline (shared/PAPER.md), independent of geomsweep's code: scikit-learn's PCA
with svd_solver='full' keeping min(2048, N, D) components and its explained_variance_ratio_, as the authors' scripts
call it; then, in numpy as they write it, RankMe with
p = ratio / sum|ratio| + 1e-7, and Stringer's power-law fit over ranks 12..100 with float32 weights 1/k whose
R^2 windows start one rank later (13..100, and 13..500 or 13..kept - 10 when fewer than 512 are kept)."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from geomsweep.core.spectra import StreamingCovariance, spectral_geometry


def reference_metrics(x: np.ndarray) -> dict[str, float]:
    n, d = x.shape
    ratio = PCA(n_components=min(2048, n, d), svd_solver="full").fit(x.astype(np.float64)).explained_variance_ratio_
    p = ratio / np.abs(ratio).sum() + 1e-7
    rankme = float(np.exp(-(p * np.log(p)).sum()))
    ranks = np.arange(11, 100)  # 0-based indices of 1-based ranks 12..100
    y = np.log(np.abs(ratio))[ranks]
    k = ranks + 1
    design = np.stack([-np.log(k), np.ones(len(k))], axis=1)
    w = (1.0 / k.astype(np.float32))[:, None]
    alpha, intercept = np.linalg.solve(design.T @ (design * w), (w * design).T @ y)

    def r2(first: int, last: int) -> float:  # 1-based ranks, inclusive
        kk = np.arange(first, last + 1)
        observed = np.log(ratio[first - 1 : last])
        predicted = intercept - alpha * np.log(kk)
        return float(1 - ((observed - predicted) ** 2).sum() / ((observed - observed.mean()) ** 2).sum())

    return {
        "rankme": rankme,
        "alpha": float(alpha),
        "r2": r2(13, 100),
        "r2_wide": r2(13, 500 if len(ratio) >= 512 else len(ratio) - 10),  # its len: the positive ratios kept
        "n_eigs": len(ratio),
    }


def planted(n: int, d: int, alpha: float, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Rows whose covariance has eigenvalues k^-alpha (axis-aligned, plus a mean far from zero)."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.arange(1, d + 1, dtype=torch.float64) ** (-alpha / 2)
    return (torch.randn(n, d, generator=generator, dtype=torch.float64) * scale + 3.0).to(dtype)


def ours(x: torch.Tensor, **kwargs) -> dict[str, float]:
    cov = StreamingCovariance()
    for rows in torch.split(x, 500):
        cov.update(rows)
    geometry = spectral_geometry(cov, **kwargs)
    return {
        "rankme": geometry.rankme,
        "alpha": geometry.fit.alpha,
        "r2": geometry.fit.r2,
        "r2_wide": geometry.fit.r2_wide,
        "n_eigs": geometry.metrics()["geometry/n_eigs"],
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "n, d, alpha, dtype",
    [
        (2600, 2200, 0.5, torch.float64),  # D > 2048: the reference keeps 2048 of 2200
        (2600, 2200, 1.0, torch.float32),  # float32 representations, as a model in fp16/bf16/fp32 gives them
        (400, 640, 0.8, torch.float64),  # N < D: the reference keeps N
    ],
)
def test_rankme_alpha_and_r2_match_the_reference(n, d, alpha, dtype):
    x = planted(n, d, alpha, seed=n + d, dtype=dtype)
    expected, got = reference_metrics(x.numpy()), ours(x)
    assert got["n_eigs"] == expected["n_eigs"] == min(2048, n, d)
    assert got["rankme"] == pytest.approx(expected["rankme"], rel=1e-9)
    assert got["alpha"] == pytest.approx(expected["alpha"], rel=1e-6)  # float32 weights in the reference
    assert got["r2"] == pytest.approx(expected["r2"], rel=1e-6)
    assert got["r2_wide"] == pytest.approx(expected["r2_wide"], rel=1e-6)


@pytest.mark.parametrize("n", [510, 511, 512, 513])
def test_the_wide_r2_window_ends_where_the_references_does_around_512_eigenvalues(n):
    """The reference ends it at len - 10 below 512 positive eigenvalues and at 500 from 512 on: 501 at 511."""
    x = planted(n, 600, 0.8, seed=n)
    expected, got = reference_metrics(x.numpy()), ours(x)
    assert got["r2_wide"] == pytest.approx(expected["r2_wide"], rel=1e-6)


def test_the_cap_matters_for_wide_models():
    """Uncapped, RankMe of a flat wide spectrum comes out higher than the reference's (the 2048 cap)."""
    x = planted(2300, 2100, 0.5, seed=1)
    capped, uncapped = ours(x), ours(x, max_eigs=None)
    assert capped["n_eigs"] == 2048 and uncapped["n_eigs"] == 2100
    assert uncapped["rankme"] > capped["rankme"]


def test_the_wide_r2_window_past_rank_n_is_nan_with_a_warning():
    x = planted(300, 640, 0.8, seed=2)
    with pytest.warns(UserWarning, match="reaches past rank 299"):
        uncapped = ours(x, max_eigs=None)
    assert np.isnan(uncapped["r2_wide"]) and not np.isnan(uncapped["r2"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not np.isnan(ours(x)["r2_wide"])  # capped at N, as the reference: no warning
