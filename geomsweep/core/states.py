"""What a pass over the probe set accumulates, as declared states shaped like torchmetrics metrics: ``update`` per
batch, ``compute`` at the end, ``merge`` to fold in the state of other sequences (another batch range, process,
job or shard). Merging states in any split gives the state of one pass over all the sequences."""

from __future__ import annotations

import torch

from geomsweep.core.definitions import JackknifeGroups
from geomsweep.core.spectra import StreamingCovariance


class LastTokenCovariance:
    """The streaming covariance of one layer's last-token representations, held as K disjoint groups so
    delete-one-group jackknife errors come from the same pass. ``block`` groups are contiguous runs of the probe
    order (sequence i of N in group i * K // N), so texts that overlap or neighbour each other (windows of one
    document) leave together and the errors count their correlation; ``interleaved`` puts sequence i in group
    i mod K, which understates errors unless neighbouring texts are independent."""

    def __init__(self, groups: int = 1, n_sequences: int | None = None, rule: str = JackknifeGroups.block):
        if rule not in JackknifeGroups.__members__:
            raise ValueError(f"probe.jackknife_groups must be one of {', '.join(JackknifeGroups)}, got {rule!r}")
        if groups > 1 and rule == JackknifeGroups.block and not n_sequences:
            raise ValueError("block jackknife groups need the number of probe sequences (n_sequences)")
        self.groups = [StreamingCovariance() for _ in range(groups)]
        self.n_sequences, self.rule = n_sequences, rule

    def group_of(self, index: torch.Tensor) -> torch.Tensor:
        """The group of each probe index."""
        k = len(self.groups)
        return index * k // self.n_sequences if self.rule == JackknifeGroups.block else index % k

    def update(self, rows: torch.Tensor, first_index: int) -> None:
        """``rows``: one representation per sequence, the first being probe sequence ``first_index``."""
        if len(self.groups) == 1:
            self.groups[0].update(rows)
            return
        group = self.group_of(torch.arange(len(rows), device=rows.device) + first_index)
        for g, part in enumerate(self.groups):
            part.update(rows[group == g])

    def compute(self) -> StreamingCovariance:
        """The covariance state of every sequence seen (the groups merged in order)."""
        total = StreamingCovariance()
        for part in self.groups:
            total.merge(part)
        return total

    def merge(self, other: LastTokenCovariance) -> LastTokenCovariance:
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
        self.total += other.total
        self.count += other.count
        return self
