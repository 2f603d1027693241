"""pass@k: the chance that at least one of k samples drawn (without replacement) from n is correct.

The unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k), computed as a product of ratios
(1 - k/i for i = n-c+1 .. n) so that n in the hundreds neither overflows nor loses precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats


def pass_at_k(n: int, c: int, k: int) -> float:
    """pass@k of one problem with ``c`` correct samples out of ``n``."""
    if not 0 <= c <= n:
        raise ValueError(f"correct samples c={c} must lie in 0..n={n}")
    if not 1 <= k <= n:
        raise ValueError(
            f"pass@k needs 1 <= k <= n (the samples per problem); got k={k}, n={n}: "
            f"raise sampler.n or drop k from sampler.ks"
        )
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    return sorted({*(2**i for i in range(n.bit_length()) if 2**i <= n), n}) if n > 0 else []


def per_problem_pass_at_k(n: int, correct: Sequence[int], ks: Sequence[int]) -> dict[int, np.ndarray]:
    """Each problem's pass@k, for each k (what the bootstrap resamples)."""
    return {k: np.array([pass_at_k(n, c, k) for c in correct]) for k in ks}


def bootstrap_interval(
    values: np.ndarray, draws: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """A percentile bootstrap interval (scipy's) of the mean of ``values`` over problems, resampled with
    replacement ``draws`` times. Given per-problem differences of paired runs (the same problems before and after
    training), it is the interval of the mean change. One problem has no spread to resample: its interval is its
    value."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("a bootstrap interval needs at least one problem")
    if values.size == 1:
        return float(values[0]), float(values[0])
    found = stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=draws,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(found.confidence_interval.low), float(found.confidence_interval.high)
