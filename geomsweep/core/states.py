"""What a pass over the probe set accumulates, as declared states shaped like torchmetrics metrics: ``update`` per
batch, ``compute`` at the end, ``merge`` to fold in the state of other sequences (another batch range, process,
job or shard). Merging states in any split gives the state of one pass over all the sequences."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, Self

import torch

from geomsweep.core.definitions import JackknifeGroups
from geomsweep.core.spectra import StreamingCovariance


class MergeableState(Protocol):
    """The contract every state here keeps (torchmetrics' ``Metric``, without its syncing machinery).

    - ``update(rows, first_index)`` adds a batch of probe sequences; ``first_index`` is the first one's index in the
      whole probe set, so jackknife groups and reservoir keys are the same however the set is split.
    - ``merge(other)`` folds in the state of *disjoint* sequences (another batch range, process, job or shard) built
      with the same settings, in place, and returns ``self``: merging the states of any split equals one pass over
      all the sequences, up to round-off, in any order.
    - ``compute()`` reads the result; it changes nothing, so it may be called at any point and again after more
      updates.
    """

    def update(self, *args: Any, **kwargs: Any) -> None: ...

    def merge(self, other: Self) -> Self: ...

    def compute(self) -> Any: ...


def jackknife_groups(
    n_sequences: int, groups: int, rule: str = JackknifeGroups.block, documents: Sequence | None = None
) -> torch.Tensor:
    """The jackknife group of each of the N probe sequences, as K groups (a LongTensor of N). ``block``: contiguous
    runs of the probe order (sequence i in group i * K // N); where ``documents`` names the document each text was
    cut from, each boundary moves onto the document start nearest it, within a quarter of a group, so a document's
    windows leave together unless the document is too long for any start to be near. ``interleaved``: i mod K."""
    if rule not in JackknifeGroups.__members__:
        raise ValueError(f"probe.jackknife_groups must be one of {', '.join(JackknifeGroups)}, got {rule!r}")
    if not 1 <= groups <= n_sequences:
        raise ValueError(f"probe.jackknife={groups} groups of {n_sequences} probe sequences; valid: 1..{n_sequences}")
    index = torch.arange(n_sequences)
    if rule == JackknifeGroups.interleaved:
        return index % groups
    if documents is None:
        return index * groups // n_sequences
    if len(documents) != n_sequences:
        raise ValueError(f"{len(documents)} document names for {n_sequences} probe sequences: one each is needed")
    starts = torch.tensor([0] + [i for i in range(1, n_sequences) if documents[i] != documents[i - 1]])
    cuts, size = [0], n_sequences / groups
    for k in range(1, groups):
        ideal = k * size
        near = starts[((starts - ideal).abs() <= size / 4) & (starts > cuts[-1])]
        cuts.append(int(near[(near - ideal).abs().argmin()]) if len(near) else max(round(ideal), cuts[-1] + 1))
    return torch.bucketize(index, torch.tensor(cuts[1:]), right=True)


class LastTokenCovariance:
    """The streaming covariance of one layer's last-token representations, held as K disjoint groups so
    delete-one-group jackknife errors come from the same pass. Which sequence is in which group is fixed for the
    whole probe set before the pass (``jackknife_groups``), so every share of it (a batch range, a process) fills
    the same global groups."""

    def __init__(self, groups: torch.Tensor | None = None):
        """``groups``: the jackknife group of each probe sequence (``jackknife_groups``); None: one group."""
        self.assignment = groups
        self.groups = [StreamingCovariance() for _ in range(1 if groups is None else int(groups.max()) + 1)]

    def update(self, rows: torch.Tensor, first_index: int) -> None:
        """``rows``: one representation per sequence, the first being probe sequence ``first_index``."""
        if len(self.groups) == 1:
            self.groups[0].update(rows)
            return
        group = self.assignment[first_index : first_index + len(rows)].to(rows.device)
        for g, part in enumerate(self.groups):
            part.update(rows[group == g])

    def compute(self) -> StreamingCovariance:
        """The covariance state of every sequence seen (the groups merged in order)."""
        total = StreamingCovariance()
        for part in self.groups:
            total.merge(part)
        return total

    def merge(self, other: LastTokenCovariance) -> LastTokenCovariance:
        """Each group's covariance merged with the same group of ``other`` (MergeableState)."""
        for part, theirs in zip(self.groups, other.groups):
            part.merge(theirs)
        return self


class NextTokenLoss:
    """The mean cross-entropy of next-token predictions where both the token and its target are real (not
    padding), as a (sum, count) state."""

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> None:
        # Shift the targets, not the logits: flattening a sliced logits tensor would copy it.
        both_real = torch.cat([(mask[:, 1:] * mask[:, :-1]) == 1, torch.zeros_like(mask[:, :1], dtype=torch.bool)], 1)
        targets = input_ids.roll(-1, dims=1).masked_fill(~both_real, -100).to(logits.device)
        self.total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum"))
        self.count += int(both_real.sum())

    def compute(self) -> float:
        return self.total / self.count if self.count else float("nan")

    def merge(self, other: NextTokenLoss) -> NextTokenLoss:
        """Sums and counts added (MergeableState)."""
        self.total += other.total
        self.count += other.count
        return self


class DirectionSum:
    """The sum of the unit vectors of one layer's raw last-token representations and their count, per jackknife
    group (as ``LastTokenCovariance`` groups them): what the mean pairwise cosine similarity (anisotropy,
    core/suite.py) needs, exactly and in O(K D), with its delete-one-group replicates."""

    def __init__(self, groups: torch.Tensor | None = None):
        self.assignment = groups  # the group of each probe sequence (jackknife_groups), or None: one group
        self.totals: torch.Tensor | None = None  # (K, D), made at the first update
        self.counts = torch.zeros(1 if groups is None else int(groups.max()) + 1, dtype=torch.long)

    def update(self, rows: torch.Tensor, first_index: int = 0) -> None:
        x = rows.detach().to(device="cpu", dtype=torch.float64)
        norms = x.norm(dim=1, keepdim=True)
        keep = norms[:, 0] > 0
        index = torch.arange(first_index, first_index + len(x))[keep]
        k = len(self.counts)
        group = torch.zeros_like(index) if self.assignment is None else self.assignment[index]
        if self.totals is None:
            self.totals = torch.zeros(k, x.shape[1], dtype=torch.float64)
        self.totals.index_add_(0, group, x[keep] / norms[keep])
        self.counts += torch.bincount(group, minlength=k)

    def compute(self) -> tuple[torch.Tensor | None, int]:
        """(the sum of every unit vector seen, their count)."""
        return (None if self.totals is None else self.totals.sum(dim=0)), int(self.counts.sum())

    def leave_one_out(self) -> list[tuple[torch.Tensor, int]]:
        """(sum, count) of every group but i, for each group i."""
        total, count = self.compute()
        return [(total - part, count - int(n)) for part, n in zip(self.totals, self.counts, strict=True)]

    def merge(self, other: DirectionSum) -> DirectionSum:
        """Each group's sum and count added (MergeableState)."""
        if other.totals is not None:
            self.totals = other.totals.clone() if self.totals is None else self.totals + other.totals
        self.counts += other.counts
        return self


def reservoir_keys(index: torch.Tensor, seed: int) -> torch.Tensor:
    """A pseudo-random key in [0, 1) for each probe index, fixed by the index and the seed alone: the reservoir
    keeps the rows of smallest keys, so any split of the probe set keeps the same rows."""
    x = (index.to(torch.float64) + 1.0) * 12.9898 + (seed + 1) * 78.233
    return torch.frac(torch.sin(x) * 43758.5453).abs()


class Reservoir:
    """A seeded uniform sample of at most ``capacity`` of one layer's representations (priority sampling by
    ``reservoir_keys``), with their probe indices: bounded memory for measures that need points, not moments
    (TwoNN), and the indices that place each kept row in its jackknife group. Merging shards keeps exactly the
    rows one pass would have kept."""

    def __init__(self, capacity: int, seed: int = 0):
        if capacity < 3:
            raise ValueError(f"probe.reservoir={capacity} must be >= 3 representations")
        self.capacity, self.seed = capacity, seed
        self.keys = torch.empty(0, dtype=torch.float64)
        self.indices = torch.empty(0, dtype=torch.long)
        self.rows: torch.Tensor | None = None

    def update(self, rows: torch.Tensor, first_index: int) -> None:
        index = torch.arange(first_index, first_index + len(rows))
        self._keep(reservoir_keys(index, self.seed), index, rows.detach().to(device="cpu", dtype=torch.float32))

    def _keep(self, keys: torch.Tensor, indices: torch.Tensor, rows: torch.Tensor) -> None:
        keys, indices = torch.cat([self.keys, keys]), torch.cat([self.indices, indices])
        rows = rows if self.rows is None else torch.cat([self.rows, rows])
        order = keys.argsort()[: self.capacity]
        self.keys, self.indices, self.rows = keys[order], indices[order], rows[order]

    def compute(self) -> torch.Tensor:
        return self.rows

    def merge(self, other: Reservoir) -> Reservoir:
        """The rows of smallest keys among both kept: what one pass would have kept (MergeableState)."""
        if other.rows is not None:
            self._keep(other.keys, other.indices, other.rows)
        return self
