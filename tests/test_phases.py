"""Phase segmentation on synthetic trajectories: finds real phases, invents none."""

import math

import numpy as np
import pytest

from geomsweep.core.phases import COMPRESSION, ENTROPY, NO_PHASE, WARMUP, detect

STEPS = sorted({0, *np.unique(np.geomspace(1, 10_000, 40).round().astype(int)).tolist()})


def piecewise(steps, knots):
    """log RankMe linear in log(step + 1) between (step, RankMe) knots."""
    xs = [math.log1p(s) for s, _ in knots]
    ys = [math.log(r) for _, r in knots]
    return [math.exp(np.interp(math.log1p(s), xs, ys)) for s in steps]


def runs(labels):
    """Collapse labels into the sequence of phases, e.g. [0, 0, 1, 1, 2] -> [0, 1, 2]."""
    return [label for i, label in enumerate(labels) if i == 0 or labels[i - 1] != label]


THREE_PHASES = [(0, 400), (30, 40), (2000, 800), (10_000, 300)]


def test_clean_three_phases():
    phases = detect(STEPS, piecewise(STEPS, THREE_PHASES))
    assert runs(phases.labels) == [WARMUP, ENTROPY, COMPRESSION]
    assert len(phases.boundaries) == 2
    assert 20 <= phases.boundaries[0] <= 45 and 1300 <= phases.boundaries[1] <= 3000
    assert phases.describe().startswith("warmup until ")


@pytest.mark.parametrize("seed", range(5))
def test_noisy_three_phases(seed):
    rng = np.random.default_rng(seed)
    noisy = [r * math.exp(rng.normal(0, 0.05)) for r in piecewise(STEPS, THREE_PHASES)]
    phases = detect(STEPS, noisy)
    assert runs(phases.labels) == [WARMUP, ENTROPY, COMPRESSION]


@pytest.mark.parametrize(
    "knots, expected",
    [
        ([(0, 50), (10_000, 900)], [ENTROPY]),  # monotone up
        ([(0, 900), (10_000, 50)], [WARMUP]),  # monotone down
        ([(0, 300), (10_000, 300)], [NO_PHASE]),  # flat
    ],
)
def test_monotone_and_flat_get_no_boundaries(knots, expected):
    rng = np.random.default_rng(0)
    values = [r * math.exp(rng.normal(0, 0.03)) for r in piecewise(STEPS, knots)]
    phases = detect(STEPS, values)
    assert phases.boundaries == [] and runs(phases.labels) == expected


def test_missing_warmup():
    phases = detect(STEPS, piecewise(STEPS, [(0, 40), (2000, 800), (10_000, 300)]))
    assert runs(phases.labels) == [ENTROPY, COMPRESSION] and len(phases.boundaries) == 1


def test_repeated_cycles():
    knots = [(0, 400), (10, 40), (200, 600), (1000, 200), (4000, 700), (10_000, 250)]
    phases = detect(STEPS, piecewise(STEPS, knots))
    assert runs(phases.labels) == [WARMUP, ENTROPY, COMPRESSION, ENTROPY, COMPRESSION]
    assert len(phases.boundaries) == 4


def test_uneven_step_spacing():
    rng = np.random.default_rng(3)
    steps = sorted({0, *rng.integers(1, 10_000, 25).tolist()})
    phases = detect(steps, piecewise(steps, THREE_PHASES))
    assert runs(phases.labels) == [WARMUP, ENTROPY, COMPRESSION]
    assert len(phases.labels) == len(steps)


def test_bad_inputs():
    with pytest.raises(ValueError, match="3 steps but 2 RankMe values"):
        detect([0, 1, 2], [1.0, 2.0])
    with pytest.raises(ValueError, match="increasing order"):
        detect([2, 1], [1.0, 2.0])


# Continued training brings further entropy -> compression cycles (the paper, with OLMo): after the first
# compression, RankMe peaks again at 45% and at 65% of training.
LATE_CYCLES = [(0, 400), (30, 40), (2000, 800), (3500, 400), (4500, 800), (5500, 400), (6500, 800), (10_000, 300)]
DENSE_LOG_GRID = sorted({0, *np.unique(np.geomspace(1, 10_000, 160).round().astype(int)).tolist()})
EVERY_100_GRID = list(range(0, 10_001, 100))


@pytest.mark.parametrize("grid", [DENSE_LOG_GRID, EVERY_100_GRID], ids=["log-spaced", "every-100-steps"])
@pytest.mark.parametrize("seed", range(5))
def test_late_repeated_cycles_are_found_on_both_grids_with_noise(grid, seed):
    rng = np.random.default_rng(seed)
    noisy = [r * math.exp(rng.normal(0, 0.05)) for r in piecewise(grid, LATE_CYCLES)]
    phases = detect(grid, noisy)
    assert runs(phases.labels) == [WARMUP, ENTROPY, COMPRESSION, ENTROPY, COMPRESSION, ENTROPY, COMPRESSION]
    peaks = phases.boundaries[1::2]  # the ends of the entropy-seeking legs
    assert [round(p / 500) * 500 for p in peaks] == [2000, 4500, 6500]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0, -1.0])
def test_non_finite_or_zero_points_are_dropped_with_a_warning_naming_their_steps(bad):
    values = piecewise(STEPS, THREE_PHASES)
    values[5], values[20] = bad, bad
    with pytest.warns(UserWarning, match=rf"RankMe at steps \[{STEPS[5]}, {STEPS[20]}\] is not a positive finite"):
        phases = detect(STEPS, values)
    assert phases.labels[5] == phases.labels[20] == NO_PHASE
    kept = [label for i, label in enumerate(phases.labels) if i not in (5, 20)]
    assert runs(kept) == [WARMUP, ENTROPY, COMPRESSION]


def test_empty_and_single_point_traces():
    assert detect([], []).labels == [] and detect([], []).describe() == ""
    assert detect([10], [5.0]).labels == [NO_PHASE]


# Two late entropy -> compression cycles of a long run, smooth in log step (PCHIP through the knots: a warmup
# collapse to a minimum at step 1000, peaks at the given fractions of 143,000 steps, a trough at 40% of their
# RankMe between them), on Pythia's grid (log-spaced to step 512, then every 1000) and on the 48 log-spaced
# checkpoints that `checkpoint=log checkpoint.num=48` picks from it (29 distinct), where the trough between the
# peaks is sampled by one or two checkpoints.
PYTHIA_GRID = [0] + [2**i for i in range(10)] + list(range(1000, 143_001, 1000))
LOG_48 = sorted(
    {min(PYTHIA_GRID, key=lambda s: abs(math.log1p(s) - t)) for t in np.linspace(0, math.log1p(143_000), 48)}
)


def two_late_cycles(steps, peaks):
    from scipy.interpolate import PchipInterpolator

    first, second = (p * 143_000 for p in peaks)
    knots = [(0, 400), (128, 45), (1000, 30), (first, 800), ((first + second) / 2, 320), (second, 800), (143_000, 350)]
    curve = PchipInterpolator([math.log1p(s) for s, _ in knots], [math.log(r) for _, r in knots])
    return [math.exp(float(curve(math.log1p(s)))) for s in steps]


@pytest.mark.parametrize("peaks", [(0.45, 0.65), (0.3, 0.6), (0.4, 0.7), (0.5, 0.75)])
@pytest.mark.parametrize("grid", [PYTHIA_GRID, LOG_48], ids=["pythia-grid", "log-48"])
@pytest.mark.parametrize("seed", [None, *range(5)])
def test_two_late_cycles_of_a_long_run_are_found_on_a_purely_log_spaced_grid(peaks, grid, seed):
    values = two_late_cycles(grid, peaks)
    if seed is not None:
        rng = np.random.default_rng(seed)
        values = [r * math.exp(rng.normal(0, 0.05)) for r in values]
    phases = detect(grid, values)
    assert runs(phases.labels) == [WARMUP, ENTROPY, COMPRESSION, ENTROPY, COMPRESSION], phases.describe()


# Two cycles after warmup on a 10,000-step run, smooth in log step, under 5% multiplicative noise: on a log grid,
# a log-then-every-k grid (Pythia's shape) and a uniform grid, no draw of the noise may add or lose a phase. A
# log grid's narrow kernel used to let a noisy trough zigzag into two extra phases on some draws.
TWO_CYCLES = {
    "late": [(0, 400), (30, 40), (2000, 800), (4000, 400), (6000, 800), (10_000, 300)],
    "mid": [(0, 400), (30, 40), (1000, 800), (3000, 450), (6000, 800), (10_000, 350)],
}
GRIDS = {
    "log-40": sorted({0, *np.unique(np.geomspace(1, 10_000, 40).round().astype(int)).tolist()}),
    "log-then-every-50": sorted({0, *(2**i for i in range(10)), *range(50, 10_001, 50)}),
    "log-then-every-250": sorted({0, *(2**i for i in range(10)), *range(250, 10_001, 250)}),
    "uniform-100": list(range(0, 10_001, 100)),
}


@pytest.mark.parametrize("grid", GRIDS, ids=list(GRIDS))
@pytest.mark.parametrize("shape", TWO_CYCLES)
def test_two_cycles_under_noise_are_never_over_segmented(grid, shape):
    from scipy.interpolate import PchipInterpolator

    steps, knots = GRIDS[grid], TWO_CYCLES[shape]
    curve = PchipInterpolator([math.log1p(s) for s, _ in knots], [math.log(r) for _, r in knots])
    clean = [math.exp(float(curve(math.log1p(s)))) for s in steps]
    found = []
    for seed in range(25):
        rng = np.random.default_rng(seed)
        found.append(runs(detect(steps, [r * math.exp(rng.normal(0, 0.05)) for r in clean]).labels))
    assert all(r == [WARMUP, ENTROPY, COMPRESSION, ENTROPY, COMPRESSION] for r in found), found


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0])
@pytest.mark.parametrize("where", [[3], [15, 30], [0, len(STEPS) - 1]])
def test_describe_names_the_phases_when_points_are_not_finite(bad, where):
    values = piecewise(STEPS, THREE_PHASES)
    for i in where:
        values[i] = bad
    with pytest.warns(UserWarning, match="not a positive finite number"):
        phases = detect(STEPS, values)
    text = phases.describe()
    assert text.startswith("warmup until ") and ", entropy-seeking until " in text
    assert text.endswith(", compression-seeking") and "none" not in text


def test_describe_of_a_trace_with_no_usable_point():
    with pytest.warns(UserWarning):
        assert detect([1, 2], [float("nan"), 0.0]).describe() == "none"
