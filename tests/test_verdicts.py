"""The seed verdicts' calibration: over many synthetic sweeps whose true change is zero, measured through the real
jackknife on planted spectra, the rule calls "up" or "down" at most as often as its 95% level allows; a planted
change it finds. Closed-form cases pin the rule itself (app/compare.py's noise rule)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from geomsweep.core.spectra import StreamingCovariance, change_metrics, spectral_geometry, with_errors
from geomsweep.results.compare import seed_change

D, N, GROUPS = 12, 240, 8
FIT = {"fit_start": 2, "fit_end": 10, "max_eigs": None}
SPECTRUM = torch.arange(1, D + 1, dtype=torch.float64) ** -1.0


def measured(rows: torch.Tensor):
    """RankMe and alpha-ReQ of ``rows`` with their jackknife replicates over GROUPS contiguous groups."""
    groups = []
    for part in rows.chunk(GROUPS):
        cov = StreamingCovariance()
        cov.update(part)
        groups.append(cov)
    whole = StreamingCovariance()
    for group in groups:
        whole.merge(group)
    return with_errors(spectral_geometry(whole, **FIT), groups, **FIT)


def sweep(rng: torch.Generator, seeds: int, shared_probe: bool, after_spectrum=SPECTRUM, spread=0.3):
    """One synthetic sweep: a base model and ``seeds`` post-trained ones whose spectrum is ``after_spectrum`` (the
    base's: a true change of zero), each seed's model turned by its own rotation of the input (the training
    noise); the probe texts shared by the seeds or drawn per seed. Returns each seed's (change, paired SE)."""
    shared = torch.randn(N, D, generator=rng, dtype=torch.float64)
    out = []
    for _ in range(seeds):
        probe = shared if shared_probe else torch.randn(N, D, generator=rng, dtype=torch.float64)
        skew = torch.randn(D, D, generator=rng, dtype=torch.float64)
        turn = torch.linalg.matrix_exp(spread * (skew - skew.T) / 2)
        before, after = measured(probe * SPECTRUM.sqrt()), measured(probe @ turn * after_spectrum.sqrt())
        change = change_metrics(before, after)
        out.append((change["geometry/rankme_change"], change["geometry/rankme_change_se"]))
    return out


def claims(results, shared_probe: bool) -> list[str]:
    return [seed_change(*zip(*cells), shared_probe).verdict.split(" ")[0] for cells in results]


@pytest.mark.slow
@pytest.mark.parametrize("shared_probe", [True, False], ids=["shared-probe", "probe-per-seed"])
@pytest.mark.parametrize("seeds", [2, 3, 5])
def test_with_no_true_change_the_verdict_claims_a_direction_at_most_at_its_level(seeds, shared_probe):
    rng = torch.Generator().manual_seed(1000 * seeds + shared_probe)
    sweeps = 150
    verdicts = claims([sweep(rng, seeds, shared_probe) for _ in range(sweeps)], shared_probe)
    false = sum(v in ("up", "down") for v in verdicts) / sweeps
    # 5% nominal; the allowance is the binomial's 95% upper excursion at 150 sweeps (a rule at 5% passes)
    assert false <= 0.05 + 1.645 * math.sqrt(0.05 * 0.95 / sweeps), (false, verdicts)


@pytest.mark.slow
@pytest.mark.parametrize("seeds", [3, 5])
def test_a_planted_change_is_found(seeds):
    rng = torch.Generator().manual_seed(seeds)
    flatter = torch.arange(1, D + 1, dtype=torch.float64) ** -0.6  # a higher RankMe after training
    verdicts = claims([sweep(rng, seeds, True, after_spectrum=flatter) for _ in range(20)], True)
    assert sum(v == "up" for v in verdicts) >= 18, verdicts


def test_two_seeds_are_indicative_and_one_degree_of_freedom_is_paid_for():
    # the DPO alpha change: each seed within noise by itself, the seeds agreeing closely
    judged = seed_change([-0.0206, -0.0292], [0.0125, 0.040], shared_probe=True)
    assert judged.mean == pytest.approx(-0.0249)
    spread = np.var([-0.0206, -0.0292], ddof=1) / 2
    assert judged.uncertainty == pytest.approx(math.sqrt(spread + (0.0125**2 + 0.040**2) / 2))
    assert judged.halfwidth == pytest.approx(stats.t.ppf(0.975, 1) * judged.uncertainty)
    assert judged.verdict == "within noise (indicative: 2 seeds)"
    # a change far outside even t(1)'s interval is still named, and still marked indicative
    assert seed_change([1.0, 1.01], [0.01, 0.01], True).verdict == "up (indicative: 2 seeds)"


def test_probe_noise_shared_by_the_seeds_does_not_average_away():
    changes, ses = [0.20, 0.21, 0.22], [0.05, 0.05, 0.05]
    shared, independent = seed_change(changes, ses, True), seed_change(changes, ses, False)
    assert shared.uncertainty == pytest.approx(math.sqrt(0.01**2 / 3 + 0.05**2))
    assert independent.uncertainty == pytest.approx(0.05 / math.sqrt(3))  # the run SEs, above the spread
    assert shared.verdict == "within noise" and independent.verdict == "up"
    # one seed: its own SE against the normal's 95% quantile, and indicative
    assert seed_change([0.1], [0.04], True).verdict == "up (indicative: 1 seed)"
    assert seed_change([0.07], [0.04], True).verdict == "within noise (indicative: 1 seed)"
    # runs written without an SE: the spread over seeds alone
    assert seed_change([0.1, 0.2, 0.3], [math.nan] * 3, True).uncertainty == pytest.approx(0.1 / math.sqrt(3))
    assert seed_change([math.nan], [0.1], True).verdict == "unknown"
