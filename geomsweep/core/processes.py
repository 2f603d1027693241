"""Measuring in several processes at once (torch.distributed: a ``method.processes=N`` post-training job, or GPUs
sharing one probe set): each process measures its own share of the probe set's batches, and the states are merged
across processes, so every process holds the result of one pass over all of it.

Shares are whole batches of the single-process batching, so each sequence is padded and computed exactly as it
would be in one process, and the merged figures equal one process's up to float64 round-off.
"""

from __future__ import annotations

import torch.distributed as dist

from geomsweep.core.extract import Representations


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, the number of processes); (0, 1) outside torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    """Whether this process logs and samples: rank 0, or the only process."""
    return rank_and_world()[0] == 0


def share(n_texts: int, batch_size: int) -> tuple[int, int]:
    """The [start, stop) of the probe texts this process measures: a contiguous run of whole batches (empty
    when there are more processes than batches)."""
    rank, world = rank_and_world()
    batches = -(-n_texts // batch_size)
    first, last = rank * batches // world, (rank + 1) * batches // world
    return min(first * batch_size, n_texts), min(last * batch_size, n_texts)


def merged(representations: Representations) -> Representations:
    """Every process's representations merged in rank order (a collective: all processes call it); the input
    itself outside torch.distributed."""
    rank, world = rank_and_world()
    if world == 1:
        return representations
    shares: list[Representations | None] = [None] * world
    dist.all_gather_object(shares, representations)
    total = shares[0]
    for other in shares[1:]:
        total.merge(other)
    return total
