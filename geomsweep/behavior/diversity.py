"""How different the samples of one prompt are from each other (averaged over prompts by the caller).

- ``distinct_<m>``: distinct token m-grams / all token m-grams among the prompt's samples (Li et al., 2016).
- ``unique_answers``: distinct extracted answers / samples (an unreadable answer counts as one answer).
- ``answer_entropy``: Shannon entropy (nats) of the extracted-answer distribution.
- ``self_jaccard``: mean token-set Jaccard similarity over pairs of samples (1: all samples use the same tokens).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch


def distinct_m(samples: Sequence[Sequence[int]], m: int) -> float:
    grams = [tuple(s[i : i + m]) for s in samples for i in range(len(s) - m + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def answer_spread(answers: Sequence[str | None]) -> tuple[float, float]:
    """(unique-answer fraction, answer entropy in nats)."""
    counts = torch.tensor(list(Counter(answers).values()), dtype=torch.float64)
    p = counts / counts.sum()
    return len(counts) / len(answers), float(-(p * p.log()).sum())


def self_jaccard(samples: Sequence[Sequence[int]]) -> float:
    """Mean Jaccard similarity of token sets over all pairs, from one multi-hot matrix product."""
    n = len(samples)
    if n < 2:
        return float("nan")
    vocab = {t: i for i, t in enumerate(sorted({t for s in samples for t in s}))}
    hot = torch.zeros(n, max(len(vocab), 1), dtype=torch.float64)
    for row, s in enumerate(samples):
        hot[row, [vocab[t] for t in s]] = 1.0
    inter = hot @ hot.T
    sizes = hot.sum(1)
    union = sizes[:, None] + sizes[None, :] - inter
    sim = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))  # two empty samples agree
    pairs = torch.triu_indices(n, n, offset=1)
    return float(sim[pairs[0], pairs[1]].mean())


def prompt_diversity(
    samples: Sequence[Sequence[int]], answers: Sequence[str | None], orders: Sequence[int] = (1, 2, 3)
) -> dict[str, float]:
    unique, entropy = answer_spread(answers)
    return {
        **{f"distinct_{m}": distinct_m(samples, m) for m in orders},
        "unique_answers": unique,
        "answer_entropy": entropy,
        "self_jaccard": self_jaccard(samples),
    }
