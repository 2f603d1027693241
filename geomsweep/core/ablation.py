"""Spectral-tail ablation (the paper's Table 1): which part of the final-layer spectrum carries task accuracy?

The final representations (the unembedding's input) are replaced, before the unembedding, by their projection
onto the top-K eigendirections of the probe covariance ("top-K only") or by what is left once those directions are
removed ("without top-K"); both act on the centred representation and add the probe mean back. Accuracy under
each variant is compared with the unablated model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from geomsweep.core.spectra import StreamingCovariance

KEEP, REMOVE = "top{k}_only", "without_top{k}"


def top_directions(cov: StreamingCovariance, k: int) -> torch.Tensor:
    """The k leading eigenvectors of the covariance, as columns (D, k)."""
    if not 1 <= k <= cov.dim:
        raise ValueError(f"ablation K={k} must lie in 1..{cov.dim} (the representation width)")
    _, vectors = torch.linalg.eigh(cov.compute())
    return vectors[:, -k:].flip(-1)


@contextmanager
def projected(model, mean: torch.Tensor, basis: torch.Tensor, keep: bool) -> Iterator[None]:
    """Inside the block, the unembedding sees ``mean + P(h - mean)`` (keep) or ``h - P(h - mean)`` (remove)."""
    head = model.get_output_embeddings()
    param = head.weight
    mean, basis = mean.to(param.device, param.dtype), basis.to(param.device, param.dtype)

    def hook(module, args):
        hidden = args[0]
        projection = ((hidden - mean) @ basis) @ basis.T
        return ((mean + projection) if keep else (hidden - projection),)

    handle = head.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def tail_ablation(
    model,
    cov: StreamingCovariance,
    ks: list[int],
    evaluate: Callable[[], dict[str, float]],
    full: dict[str, float] | None = None,
) -> dict[str, float]:
    """``evaluate()`` (task -> accuracy) with the model intact (or ``full``, where already measured) and under
    each ablation; keys like ``full/long_range_acc``, ``top10_only/long_range_acc`` and ``without_top10/...``."""
    results = {f"full/{task}": value for task, value in (evaluate() if full is None else full).items()}
    for k in ks:
        basis = top_directions(cov, k)
        for keep, label in ((True, KEEP), (False, REMOVE)):
            with projected(model, cov.mean, basis, keep):
                results.update({f"{label.format(k=k)}/{task}": v for task, v in evaluate().items()})
    return results
