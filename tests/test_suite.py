"""The geometry suite (core/suite.py) and its states (core/states.py): closed forms, estimators against what they
estimate, and every state merged over shards equal to one pass."""

import math

import pytest
import torch

from geomsweep.core import suite
from geomsweep.core.spectra import StreamingCovariance, eigenspectrum
from geomsweep.core.states import DirectionSum, Reservoir, jackknife_groups
from geomsweep.sources.checkpoints import Checkpoint
from geomsweep.sources.toy.pretrain import ToyConfig, probe_documents
from tests.conftest import TINY_TOY


@pytest.fixture(scope="module")
def lm(tiny_checkpoints):
    model, tokenizer = Checkpoint("final", 40, None, str(tiny_checkpoints / "step40")).load()
    return model, tokenizer, probe_documents(ToyConfig(**TINY_TOY), 24)


def planted_covariance(eigs: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A covariance with exactly these eigenvalues, in a random basis."""
    basis = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=torch.Generator().manual_seed(seed)).double())[
        0
    ]
    return basis @ torch.diag(eigs) @ basis.T


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_covariance_measures_equal_their_formulas_on_planted_spectra(alpha):
    lam = torch.arange(1, 65, dtype=torch.float64) ** -alpha
    cov = planted_covariance(lam)
    eigs = eigenspectrum(cov)
    values = suite.covariance_measures(cov, eigs, 10_000, ["participation_ratio", "stable_rank", "top10_variance"])
    assert values["geometry/participation_ratio"] == pytest.approx(float(lam.sum() ** 2 / (lam**2).sum()), rel=1e-10)
    assert values["geometry/stable_rank"] == pytest.approx(float(lam.sum() / lam[0]), rel=1e-10)
    assert values["geometry/top10_variance"] == pytest.approx(float(lam[:10].sum() / lam.sum()), rel=1e-10)
    assert suite.covariance_measures(cov, eigs, 10_000, ["rankme", "anisotropy"]) == {}  # not covariance measures


def test_the_corrected_participation_ratio_is_closer_to_the_population_one_when_n_is_close_to_d():
    """D = 64, N = 64 Gaussian draws of a flat-ish spectrum (population PR 52.6), 40 redraws: the plain PR of the
    sample covariance is far too low (its eigenvalues spread out); the corrected one lands near the truth."""
    d = n = 64
    lam = torch.arange(1, d + 1, dtype=torch.float64) ** -0.3
    population = float(lam.sum() ** 2 / (lam**2).sum())
    plain, corrected = [], []
    for seed in range(40):
        x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * lam.sqrt()
        state = StreamingCovariance()
        state.update(x)
        cov = state.compute()
        eigs = eigenspectrum(cov)
        plain.append(suite.participation_ratio(cov, eigs, n))
        corrected.append(suite.participation_ratio_corrected(cov, eigs, n))
    plain_bias = abs(sum(plain) / len(plain) - population)
    corrected_bias = abs(sum(corrected) / len(corrected) - population)
    assert corrected_bias < plain_bias / 4, (population, sum(plain) / 40, sum(corrected) / 40)


@pytest.mark.parametrize("d", [2, 5, 10])
def test_two_nn_recovers_the_dimension_of_points_on_a_d_dimensional_subspace(d):
    """2,000 Gaussian points in a random d-dimensional subspace of 64 dimensions: TwoNN within 10% of d."""
    g = torch.Generator().manual_seed(d)
    basis = torch.linalg.qr(torch.randn(64, d, generator=g, dtype=torch.float64))[0]
    points = torch.randn(2000, d, generator=g, dtype=torch.float64) @ basis.T
    assert suite.two_nn(points) == pytest.approx(d, rel=0.10)


def test_anisotropy_is_the_mean_pairwise_cosine_and_its_state_merges_exactly():
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.7  # a common offset
    units = x / x.norm(dim=1, keepdim=True)
    cosines = units @ units.T
    brute = float((cosines.sum() - cosines.diagonal().sum()) / (300 * 299))
    whole = DirectionSum()
    whole.update(x)
    shards = [DirectionSum(), DirectionSum(), DirectionSum()]
    for shard, rows in zip(shards, (x[:50], x[50:200], x[200:])):
        shard.update(rows)
    merged = shards[0].merge(shards[1]).merge(shards[2])
    assert suite.anisotropy(*whole.compute()) == pytest.approx(brute, abs=1e-12)
    assert suite.anisotropy(*merged.compute()) == pytest.approx(suite.anisotropy(*whole.compute()), abs=1e-12)
    assert brute > 0.25  # the common offset makes them point alike (0.33; about 0 without it)
    # in jackknife groups (contiguous blocks of 100): each group left out is the anisotropy of the other 200 rows
    grouped = DirectionSum(jackknife_groups(300, 3))
    for first in range(0, 300, 64):
        grouped.update(x[first : first + 64], first)
    assert suite.anisotropy(*grouped.compute()) == pytest.approx(brute, abs=1e-12)
    for left_out, rest in enumerate(grouped.leave_one_out()):
        kept = torch.cat([units[: left_out * 100], units[(left_out + 1) * 100 :]])
        pairs = kept @ kept.T
        assert suite.anisotropy(*rest) == pytest.approx(float((pairs.sum() - 200) / (200 * 199)), abs=1e-12)


def test_a_reservoir_keeps_the_same_rows_however_the_probe_set_is_split():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(1))
    whole = Reservoir(64, seed=3)
    for first in range(0, 500, 32):
        whole.update(x[first : first + 32], first)
    shards = [Reservoir(64, seed=3) for _ in range(3)]
    for shard, (start, stop) in zip(shards, ((0, 100), (100, 340), (340, 500))):
        shard.update(x[start:stop], start)
    merged = shards[2].merge(shards[0]).merge(shards[1])  # in any order
    assert whole.compute().shape == (64, 8)
    assert torch.equal(merged.compute(), whole.compute()) and torch.equal(merged.indices, whole.indices)
    assert torch.equal(whole.compute(), x[whole.indices])  # each kept row with its probe index
    other_seed = Reservoir(64, seed=4)
    other_seed.update(x, 0)
    assert not torch.equal(other_seed.compute(), whole.compute())
    with pytest.raises(ValueError, match="probe.reservoir=2 must be >= 3"):
        Reservoir(2)


def test_the_suite_on_a_real_pass_gets_rankmes_value_and_error_bars_for_its_covariance_measures(lm):
    from geomsweep.config.measurement import ProbeConfig
    from geomsweep.core.measure import measure_model

    model, tokenizer, texts = lm
    names = ["rankme", "alpha_req", "participation_ratio", "stable_rank", "anisotropy", "twonn"]
    base = ProbeConfig(n_sequences=len(texts), batch_size=5, max_length=48, fit_start=2, fit_end=5, jackknife=3)
    full = ProbeConfig(**{**base.__dict__, "metrics": names, "reservoir": 16})
    plain = measure_model(model, tokenizer, texts, base, progress=False).metrics(-1)
    measured = measure_model(model, tokenizer, texts, full, progress=False).metrics(-1)
    for key, value in plain.items():
        assert measured[key] == pytest.approx(value, rel=1e-12), key  # the paper's two are untouched
    assert 1 <= measured["geometry/participation_ratio"] <= measured["geometry/stable_rank"] * 10
    assert measured["geometry/participation_ratio_se"] > 0 and measured["geometry/stable_rank_se"] > 0
    assert measured["geometry/anisotropy_se"] > 0 and measured["geometry/twonn_se"] > 0
    assert -1 <= measured["geometry/anisotropy"] <= 1 and math.isfinite(measured["geometry/twonn"])
    assert "geometry/participation_ratio" not in plain


@pytest.mark.parametrize("d", [2, 5, 10])
def test_two_nn_agrees_with_scikit_dimension(d):
    """In an environment with scikit-dimension (a test-only one: pip install scikit-dimension), its TwoNN (a
    linear fit with 10% of the ratios discarded) and ours (maximum likelihood) agree within 3% on the same points."""
    skdim = pytest.importorskip("skdim", reason="a test-only environment with scikit-dimension installed")
    g = torch.Generator().manual_seed(d)
    basis = torch.linalg.qr(torch.randn(64, d, generator=g, dtype=torch.float64))[0]
    points = torch.randn(2000, d, generator=g, dtype=torch.float64) @ basis.T
    theirs = float(skdim.id.TwoNN().fit(points.numpy()).dimension_)
    assert suite.two_nn(points) == pytest.approx(theirs, rel=0.03)
