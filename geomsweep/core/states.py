"""What a pass over the probe set accumulates, as declared states shaped like torchmetrics metrics: ``update`` per
batch, ``compute`` at the end, ``merge`` to fold in the state of other sequences (another batch range, process,
job or shard). Merging states in any split gives the state of one pass over all the sequences."""

from __future__ import annotations

import torch

from geomsweep.core.spectra import StreamingCovariance


class LastTokenCovariance:
    """The streaming covariance of one layer's last-token representations, held as K disjoint groups (the sequence
    with probe index i in group i mod K) so delete-one-group jackknife errors come from the same pass."""

    def __init__(self, groups: int = 1):
        self.groups = [StreamingCovariance() for _ in range(groups)]

    def update(self, rows: torch.Tensor, first_index: int) -> None:
        """``rows``: one representation per sequence, the first being probe sequence ``first_index``."""
        if len(self.groups) == 1:
            self.groups[0].update(rows)
            return
        group = (torch.arange(len(rows), device=rows.device) + first_index) % len(self.groups)
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
