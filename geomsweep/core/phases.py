"""Segment a (step, RankMe) trajectory into the study's phases.

The study names the phases by eye: **warmup** runs from initialization to RankMe's first minimum,
**entropy-seeking** is a stretch where RankMe rises, **compression-seeking** one where it falls after having
risen. Continued training can repeat entropy -> compression cycles.

The rule used here: smooth log RankMe with a Gaussian kernel in log(step + 1) (checkpoints are log-spaced and
uneven), then find turning points by a *zigzag*. A minimum or maximum counts only once the curve has moved
away from it by at least ``min_change`` (a relative change of RankMe). Noise smaller than that, a flat curve and
a monotone curve therefore give no boundaries. A run that starts by rising has no warmup.

The kernel's width adapts to the grid (``smooth_log``): where the checkpoints are dense (late in training on an
every-k-steps grid, or a dense log grid) it averages a few neighbours against noise; where they are as far apart
as the bandwidth (a purely log-spaced grid late in a long run), it narrows below their spacing, so a cycle that
only one or two checkpoints sample is not blurred away.
A narrow kernel also lets noise through: on a log grid, 5% noise at a trough can zigzag by more than
``min_change`` between two neighbouring checkpoints. So a leg between two turns that is both *short* (it spans
less than ``bandwidth`` in log(step + 1)) and *weak* (its swing is under 1.5 times ``min_change``) is not a phase: its
two turns are dropped and the legs on either side, which run the same way, merge (``merge_short_legs``). A real
cycle sampled by one or two checkpoints is still kept, as its swing is large.
Points that are not positive finite numbers (NaN, inf, 0) cannot be placed on a log scale: they are dropped
with a warning naming their steps and labelled "none".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from geomsweep.core.definitions import PhaseRule

WARMUP, ENTROPY, COMPRESSION, NO_PHASE = 0, 1, 2, -1
# How fast the kernel narrows below the checkpoint spacing as the grid thins out (see smooth_log)
SPARSE_SHRINK = 4.0
NAMES = {WARMUP: "warmup", ENTROPY: "entropy-seeking", COMPRESSION: "compression-seeking", NO_PHASE: "none"}


@dataclass(frozen=True)
class Phases:
    labels: list[int]  # one per checkpoint: 0 warmup, 1 entropy-seeking, 2 compression-seeking, -1 none
    boundaries: list[int]  # steps where a phase ends (the turning checkpoints)
    smoothed: list[float]  # the smoothed RankMe the segmentation was read from

    def describe(self) -> str:
        """``warmup until 13, entropy-seeking until 420, compression-seeking`` ("" for an empty trace)."""
        labels = [label for label in self.labels if label != NO_PHASE] or self.labels  # dropped points: no phase
        if not labels:
            return ""
        runs = [label for i, label in enumerate(labels) if i == 0 or labels[i - 1] != label]
        parts = [f"{NAMES[label]} until {end}" for label, end in zip(runs, self.boundaries)]
        return ", ".join([*parts, NAMES[runs[-1]]])


def local_spacing(x: torch.Tensor) -> torch.Tensor:
    """Mean distance from each point to its neighbours (one neighbour at either end)."""
    if len(x) < 2:
        return torch.full_like(x, math.inf)
    gaps = x.diff()
    return torch.cat([gaps[:1], (gaps[1:] + gaps[:-1]) / 2, gaps[-1:]])


def smooth_log(steps: Sequence[float], values: Sequence[float], bandwidth: float) -> torch.Tensor:
    """Nadaraya-Watson smoothing of log(values) against log(step + 1) with a Gaussian kernel whose width at each
    point is the local checkpoint spacing s, narrowed to s / (1 + 4 (s / bandwidth)^2) and at most ``bandwidth``:
    on a dense grid (s << bandwidth) it averages a few neighbours against noise; where checkpoints are as far
    apart as the bandwidth (48 log-spaced checkpoints of a 143k-step run), a neighbour weighs e^-4.5 and a
    turn one checkpoint wide survives."""
    x = torch.tensor([math.log1p(s) for s in steps], dtype=torch.float64)
    y = torch.tensor(values, dtype=torch.float64).log()
    if bandwidth <= 0 or len(x) < 2:
        return y
    spacing = local_spacing(x)
    width = (spacing / (1 + SPARSE_SHRINK * (spacing / bandwidth) ** 2)).clamp(max=bandwidth)[:, None]
    weights = torch.exp(-0.5 * ((x[:, None] - x[None, :]) / width) ** 2)
    return (weights @ y) / weights.sum(dim=1)


def turning_points(y: Sequence[float], threshold: float) -> list[int]:
    """Indices of extrema that the curve later leaves by at least ``threshold`` (the zigzag indicator)."""
    points: list[int] = []
    direction = 0  # +1 rising, -1 falling, 0 not yet known
    extreme = 0  # index of the running extreme of the current leg
    for i in range(1, len(y)):
        if direction == 0:
            if abs(y[i] - y[0]) >= threshold:
                direction = 1 if y[i] > y[0] else -1
                extreme = max(range(i + 1), key=lambda j: direction * y[j])  # the leg's extreme so far
            continue
        if direction * (y[i] - y[extreme]) > 0:
            extreme = i
        elif direction * (y[extreme] - y[i]) >= threshold:
            points.append(extreme)
            direction, extreme = -direction, i
    return points


def merge_short_legs(x: Sequence[float], y: Sequence[float], turns: list[int], threshold: float, span: float):
    """``turns`` without the legs that are both shorter than ``span`` in x and swing less than 1.5 times
    ``threshold`` (noise, not a phase): each such inner leg's two turns go, and the merged leg's turn moves to
    its extreme; a short, weak last leg loses its one turn."""
    turns = list(turns)

    def weak(a: int, b: int) -> bool:
        return x[b] - x[a] < span and abs(y[b] - y[a]) < 1.5 * threshold

    while True:
        inner = [k for k in range(len(turns) - 1) if weak(turns[k], turns[k + 1])]
        if not inner:
            break
        k = min(inner, key=lambda k: abs(y[turns[k + 1]] - y[turns[k]]))  # the weakest first
        del turns[k : k + 2]
        if k < len(turns):  # the merged leg ends at turns[k]: its turn is the leg's extreme
            start = turns[k - 1] if k > 0 else 0
            rising = y[turns[k]] > y[start]
            stop = turns[k + 1] if k + 1 < len(turns) else len(y)
            turns[k] = max(range(start + 1, stop), key=lambda j: y[j] if rising else -y[j])
    if turns and weak(turns[-1], len(y) - 1):
        turns.pop()
    return turns


def detect(
    steps: Sequence[int],
    rankme: Sequence[float],
    min_change: float = PhaseRule.min_change,
    bandwidth: float = PhaseRule.bandwidth,
) -> Phases:
    """Phase label per checkpoint and the steps where phases end. ``min_change`` is the relative RankMe
    change a swing must reach to count; ``bandwidth`` the smoothing width in log(step + 1)."""
    if len(steps) != len(rankme):
        raise ValueError(f"{len(steps)} steps but {len(rankme)} RankMe values")
    if list(steps) != sorted(steps):
        raise ValueError("steps must be in increasing order")
    if min_change <= 0:
        raise ValueError(f"min_change must be positive, got {min_change}")
    usable = [i for i, value in enumerate(rankme) if math.isfinite(value) and value > 0]
    if len(usable) < len(steps):
        dropped = [steps[i] for i in range(len(steps)) if i not in set(usable)]
        warnings.warn(
            f"RankMe at steps {dropped} is not a positive finite number: those checkpoints are left out "
            f"of phase detection (labelled none)",
            stacklevel=2,
        )
        found = _segment([steps[i] for i in usable], [rankme[i] for i in usable], min_change, bandwidth)
        labels, smoothed = [NO_PHASE] * len(steps), [math.nan] * len(steps)
        for i, label, value in zip(usable, found.labels, found.smoothed):
            labels[i], smoothed[i] = label, value
        return Phases(labels, found.boundaries, smoothed)
    return _segment(list(steps), list(rankme), min_change, bandwidth)


def _segment(steps: list[int], rankme: list[float], min_change: float, bandwidth: float) -> Phases:
    """The zigzag segmentation of a trace whose RankMe values are all positive and finite."""
    if len(steps) < 2:
        return Phases([NO_PHASE] * len(steps), [], list(rankme))
    y = smooth_log(steps, rankme, bandwidth)
    x = [math.log1p(s) for s in steps]
    threshold = math.log1p(min_change)
    turns = merge_short_legs(x, y.tolist(), turning_points(y.tolist(), threshold), threshold, bandwidth)
    if not turns:
        total = float(y[-1] - y[0]) if len(y) else 0.0
        label = NO_PHASE if abs(total) < math.log1p(min_change) else (ENTROPY if total > 0 else WARMUP)
        return Phases([label] * len(steps), [], y.exp().tolist())
    labels, start = [], 0
    rising_first = y[turns[0]] > y[0]
    for leg, end in enumerate([*turns, len(steps) - 1]):
        rising = rising_first if leg % 2 == 0 else not rising_first
        label = ENTROPY if rising else (WARMUP if leg == 0 else COMPRESSION)
        count = end - start + 1 if leg == 0 else end - start
        labels += [label] * count
        start = end
    return Phases(labels, [steps[i] for i in turns], y.exp().tolist())
