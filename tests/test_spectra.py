"""Closed-form spectra: the metrics must return what the definitions say, exactly where they can."""

import math

import pytest
import torch

from geomsweep.core.spectra import (
    StreamingCovariance,
    alpha_req,
    change_metrics,
    eigenspectrum,
    jackknife_errors,
    rankme,
    spectral_geometry,
    with_errors,
)


def rotated_covariance(eigs: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Q diag(eigs) Q^T for a random orthogonal Q: a covariance with a known spectrum."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=gen, dtype=torch.float64))
    return q @ torch.diag(eigs.to(torch.float64)) @ q.T


def test_isotropic_gaussian_has_rankme_near_dimension():
    d = 64
    x = torch.randn(20_000, d, generator=torch.Generator().manual_seed(0))
    cov = StreamingCovariance()
    cov.update(x)
    value = rankme(eigenspectrum(cov.compute()))
    assert 0.99 * d < value <= d


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_exact_power_law_is_recovered(alpha):
    k = torch.arange(1, 201, dtype=torch.float64)
    eigs = eigenspectrum(rotated_covariance(k**-alpha))
    fit = alpha_req(eigs)
    assert fit.alpha == pytest.approx(alpha, abs=1e-6)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)
    assert fit.r2_wide == pytest.approx(1.0, abs=1e-9)


def test_power_law_fit_uses_only_the_fit_range():
    # Outside ranks 12..100 the spectrum is garbage; the fit must not see it.
    k = torch.arange(1, 301, dtype=torch.float64)
    eigs = k**-1.3
    eigs[:11] = 50.0
    eigs[100:] = 1e-9
    assert alpha_req(eigs, 12, 100).alpha == pytest.approx(1.3, abs=1e-9)
    assert alpha_req(eigs, 5, 100).alpha != pytest.approx(1.3, abs=1e-3)


def test_rank_r_data_has_rankme_at_most_r():
    gen = torch.Generator().manual_seed(1)
    r, d = 5, 48
    x = torch.randn(2000, r, generator=gen) @ torch.randn(r, d, generator=gen)
    cov = StreamingCovariance()
    cov.update(x)
    value = rankme(eigenspectrum(cov.compute()))
    assert 1.0 < value <= r + 1e-3


def test_metrics_are_scale_invariant():
    k = torch.arange(1, 151, dtype=torch.float64)
    eigs = k**-0.9 + 0.01 * torch.rand(150, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    eigs = eigs.sort(descending=True).values
    for scale in (1e-6, 3.0, 1e6):
        assert rankme(scale * eigs) == pytest.approx(rankme(eigs), rel=1e-6)
        assert alpha_req(scale * eigs).alpha == pytest.approx(alpha_req(eigs).alpha, abs=1e-9)


def test_rankme_golden_values():
    # eigen: p = (0.8, 0.2); singular: sqrt -> (2, 1) -> p = (2/3, 1/3); epsilon 1e-7 is negligible here.
    eigs = torch.tensor([4.0, 1.0], dtype=torch.float64)
    assert rankme(eigs, "eigen") == pytest.approx(math.exp(-(0.8 * math.log(0.8) + 0.2 * math.log(0.2))), rel=1e-5)
    assert rankme(eigs, "singular") == pytest.approx(1.8898815748, rel=1e-5)
    assert rankme(torch.ones(10, dtype=torch.float64)) == pytest.approx(10.0, rel=1e-5)
    with pytest.raises(ValueError, match="unknown RankMe variant 'svd'.*eigen, singular"):
        rankme(eigs, "svd")


def test_streaming_covariance_equals_one_shot():
    gen = torch.Generator().manual_seed(3)
    x = 1000.0 + torch.randn(3001, 40, generator=gen, dtype=torch.float64) * torch.linspace(0.1, 5, 40)
    cov = StreamingCovariance()
    start = 0
    for size in (1, 7, 500, 1, 1200, 1292):  # uneven batches, including single rows
        cov.update(x[start : start + size])
        start += size
    assert start == len(x) and cov.count == len(x)
    torch.testing.assert_close(cov.compute(), torch.cov(x.T), rtol=0, atol=1e-10)


def test_eigenspectrum_is_descending_nonnegative_and_capped():
    eigs = eigenspectrum(rotated_covariance(torch.tensor([0.0, 0.0, 1.0, 3.0, 2.0])))
    assert (eigs >= 0).all()
    assert torch.all(eigs[:-1] >= eigs[1:])
    torch.testing.assert_close(eigs[:3], torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    assert len(eigenspectrum(rotated_covariance(torch.arange(1.0, 11.0)), max_eigs=4)) == 4


def test_short_spectrum_error_names_both_sizes():
    with pytest.raises(ValueError, match=r"has 64 eigenvalues.*fit range 12\.\.100"):
        alpha_req(torch.linspace(1, 0.1, 64))


def test_zero_eigenvalues_in_fit_range_give_nan_with_warning():
    eigs = torch.cat([torch.arange(1, 51, dtype=torch.float64) ** -1.0, torch.zeros(60, dtype=torch.float64)])
    with pytest.warns(UserWarning, match="eigenvalue 51 is zero"):
        assert math.isnan(alpha_req(eigs).alpha)


def test_measure_refuses_too_few_sequences():
    cov = StreamingCovariance()
    cov.update(torch.randn(50, 128))
    with pytest.raises(ValueError, match=r"50 sequences.*fit range 12\.\.100 needs at least 101"):
        spectral_geometry(cov)


def test_merging_shard_states_equals_one_pass_over_all_rows():
    """torchmetrics' merge_state shape: K disjoint shards (processes, jobs) combine into the exact whole."""
    torch.manual_seed(3)
    x = torch.randn(1000, 24, dtype=torch.float64) * torch.linspace(0.1, 3.0, 24) + 50.0  # a mean far from 0
    whole = StreamingCovariance()
    whole.update(x)
    shards = [StreamingCovariance() for _ in range(5)]
    for i, rows in enumerate(torch.tensor_split(x, [10, 11, 400, 700])):  # uneven shards, one of a single row
        shards[i].update(rows)
    merged = StreamingCovariance().merge(shards[0])
    for shard in shards[1:]:
        merged.merge(shard)
    merged.merge(StreamingCovariance())  # an empty state changes nothing
    assert merged.count == whole.count == 1000
    assert torch.allclose(merged.mean, whole.mean, rtol=0, atol=1e-12)
    assert torch.allclose(merged.compute(), whole.compute(), rtol=0, atol=1e-12)
    merged.reset()
    assert merged.count == 0 and merged.mean is None
    with pytest.raises(ValueError, match="need at least 2 representations"):
        merged.compute()


def test_jackknife_standard_errors_match_the_spread_over_independent_redraws():
    """On a planted power-law spectrum (eigenvalues k^-1, d=32), the delete-one-group jackknife SE of RankMe and
    alpha from one draw of n=512 matches, on average over draws, the standard deviation of the metric over
    independent draws, within a factor of 1.5."""
    torch.manual_seed(0)
    d, n, k = 32, 512, 10
    scale = torch.arange(1, d + 1, dtype=torch.float64) ** -0.5
    args = {"fit_start": 2, "fit_end": 20, "max_eigs": None}

    def groups_of(x):
        parts = [StreamingCovariance() for _ in range(k)]
        for g, part in enumerate(parts):
            part.update(x[g::k])
        return parts

    redraws, errors = [], []
    for i in range(200):
        parts = groups_of(torch.randn(n, d, dtype=torch.float64) * scale)
        whole = StreamingCovariance()
        for part in parts:
            whole.merge(part)
        geometry = spectral_geometry(whole, **args)
        redraws.append((geometry.rankme, geometry.fit.alpha))
        if i < 40:
            errors.append(list(jackknife_errors(parts, **args).values()))
    spread = torch.tensor(redraws).std(dim=0)
    jackknife = torch.tensor(errors).mean(dim=0)
    ratio = jackknife / spread
    assert ((ratio > 1 / 1.5) & (ratio < 1.5)).all(), (jackknife, spread)


def test_the_paired_jackknife_of_a_change_matches_its_spread_over_probe_sets_where_quadrature_does_not():
    """A model change that stretches one direction of a planted spectrum by 15%, measured before and after on the
    same n=512 texts in the same 10 groups: the paired jackknife SE of the RankMe change (change_metrics) matches
    the change's spread over independent probe sets within 1.5x; the two SEs in quadrature overstate it."""
    torch.manual_seed(1)
    d, n, k = 32, 512, 10
    scale = torch.arange(1, d + 1, dtype=torch.float64) ** -0.5
    stretch = torch.ones(d, dtype=torch.float64)
    stretch[3] = 1.15
    args = {"fit_start": 2, "fit_end": 20, "max_eigs": None}

    def measured(x):
        parts = [StreamingCovariance() for _ in range(k)]
        for g, part in enumerate(parts):
            part.update(x[g::k])
        whole = StreamingCovariance()
        for part in parts:
            whole.merge(part)
        return with_errors(spectral_geometry(whole, **args), parts, **args)

    changes, paired, quadrature = [], [], []
    for i in range(150):
        x = torch.randn(n, d, dtype=torch.float64) * scale
        before, after = measured(x), measured(x * stretch)
        change = change_metrics(before, after)
        changes.append(change["geometry/rankme_change"])
        if i < 30:
            paired.append(change["geometry/rankme_change_se"])
            quadrature.append(math.hypot(before.errors["geometry/rankme_se"], after.errors["geometry/rankme_se"]))
    spread = torch.tensor(changes).std()
    assert 1 / 1.5 < torch.tensor(paired).mean() / spread < 1.5, (paired, spread)
    assert torch.tensor(quadrature).mean() / spread > 3


D, WINDOW = 48, 24
SCALES = torch.arange(1, D + 1, dtype=torch.float64) ** -0.6


def windows_of(draws: torch.Tensor) -> torch.Tensor:
    """Row i: the mean of draws i .. i + WINDOW - 1 of the planted process, scaled to unit variance."""
    sums = torch.cat([torch.zeros(1, D, dtype=torch.float64), (draws * SCALES).cumsum(0)])
    return (sums[WINDOW:] - sums[:-WINDOW]) / WINDOW**0.5


def se_over_spread(draw, seeds: int, n: int = 1024, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """(block, interleaved): the mean jackknife SE of RankMe and alpha over the spread of their values, across
    ``seeds`` independent probe sets ``draw(seed) -> (rows, documents)``, each streamed in batches of 64."""
    from geomsweep.core.states import LastTokenCovariance, jackknife_groups

    args = {"fit_start": 2, "fit_end": 20}
    values, errors = [], {"block": [], "interleaved": []}
    for seed in range(seeds):
        rows, documents = draw(seed)
        for rule in errors:
            state = LastTokenCovariance(jackknife_groups(n, k, rule, documents))
            for first in range(0, n, 64):  # in batches, as a pass over the probe set streams them
                state.update(rows[first : first + 64], first)
            errors[rule].append(list(jackknife_errors(state.groups, **args).values()))
        geometry = spectral_geometry(state.compute(), **args)
        values.append((geometry.rankme, geometry.fit.alpha))
    spread = torch.tensor(values).std(dim=0)
    return tuple(torch.tensor(errors[rule]).mean(dim=0) / spread for rule in ("block", "interleaved"))


def test_block_jackknife_errors_count_the_correlation_of_overlapping_windows_where_interleaved_do_not():
    """Probe texts that are overlapping windows of one process (as chunks of long documents are): each row is the
    mean of 24 consecutive draws of a planted power-law process, so neighbours share most of their draws. Over 60
    independent redraws, the block jackknife SE (contiguous groups, the default) matches the spread of RankMe and
    alpha within 1.5x; the interleaved one (i mod K) is at least 2x too small."""

    def draw(seed):
        generator = torch.Generator().manual_seed(seed)
        return windows_of(torch.randn(1024 + WINDOW - 1, D, generator=generator, dtype=torch.float64)), None

    block, interleaved = se_over_spread(draw, seeds=60)
    assert ((block > 1 / 1.5) & (block < 1.5)).all(), block
    assert (interleaved < 1 / 2).all(), interleaved


def test_block_groups_that_keep_documents_whole_stay_calibrated_when_documents_differ():
    """Probe texts cut from documents of 5 to 60 overlapping windows, each document with its own planted offset
    (a topic shared by its windows): with the documents named, block groups keep each whole, and their SE of
    RankMe and alpha matches the spread over 40 independent redraws within 1.5x; interleaved groups are at least
    5x too small."""

    def draw(seed):
        generator = torch.Generator().manual_seed(seed)
        rows, documents = [], []
        while len(documents) < 1024:
            size = int(torch.randint(5, 60, (), generator=generator))
            topic = 2 * SCALES * torch.randn(D, generator=generator, dtype=torch.float64)
            rows.append(windows_of(torch.randn(size + WINDOW - 1, D, generator=generator, dtype=torch.float64)) + topic)
            documents += [len(rows)] * size
        return torch.cat(rows)[:1024], documents[:1024]

    block, interleaved = se_over_spread(draw, seeds=40)
    assert ((block > 1 / 1.5) & (block < 1.5)).all(), block
    assert (interleaved < 1 / 5).all(), interleaved
