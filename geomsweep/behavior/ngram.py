"""n-gram memorization: how closely a model's token probabilities track an n-gram model of its pretraining data.

The paper measures memorization as the Spearman correlation between the model's log-probabilities of held-out
tokens and an (infinite-)gram model's built on the pretraining corpus; it peaks late in entropy-seeking. The
``infini-gram`` package can only index text with hub tokenizers (gpt2/llama/olmo), which are not available
offline, so the toy corpus gets a small interpolated Kneser-Ney model over the model's own token ids.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from scipy.stats import spearmanr
from torch.nn.utils.rnn import pad_sequence

from geomsweep.core.extract import next_token_logprobs


class KneserNeyLM:
    """Interpolated Kneser-Ney over token ids (Chen & Goodman 1998, one discount per order), normalized over
    ``vocab_size`` tokens: every context, seen or not, gets a proper distribution with no zero probabilities."""

    def __init__(self, order: int = 3, vocab_size: int | None = None, discount: float = 0.75):
        if order < 1:
            raise ValueError(f"n-gram order must be >= 1, got {order}")
        if not 0.0 < discount < 1.0:
            raise ValueError(f"Kneser-Ney discount must lie in (0, 1), got {discount}")
        self.order, self.vocab_size, self.discount = order, vocab_size, discount
        # counts[k][(context, token)] for k = order (raw counts) and k < order (continuation counts).
        self.counts: list[Counter] = [Counter() for _ in range(order + 1)]
        self.totals: list[Counter] = [Counter() for _ in range(order + 1)]  # sum over tokens, per context
        self.types: list[Counter] = [Counter() for _ in range(order + 1)]  # distinct tokens, per context

    def fit(self, sequences: Iterable[Sequence[int]]) -> KneserNeyLM:
        """Count every n-gram of every sequence (one document each, starting with its BOS/EOS token).

        Adjusted counts as in KenLM: highest-order grams and grams at a document start keep their raw counts;
        every other lower-order gram counts its distinct left neighbours (how many contexts it continues)."""
        raw: Counter = Counter()
        lefts: defaultdict = defaultdict(set)
        max_id = -1
        for seq in map(list, sequences):
            max_id = max([max_id, *seq])
            for i in range(len(seq)):
                for k in range(1, min(self.order, i + 1) + 1):
                    gram, start = tuple(seq[i - k + 1 : i + 1]), i - k + 1
                    if k == self.order or start == 0:
                        raw[gram] += 1
                    else:
                        lefts[gram].add(seq[start - 1])
        self.vocab_size = self.vocab_size or max_id + 1
        if max_id >= self.vocab_size:
            raise ValueError(f"token id {max_id} is outside vocab_size={self.vocab_size}")
        for gram, n in [*raw.items(), *((g, len(ws)) for g, ws in lefts.items())]:
            self.counts[len(gram)][gram] += n
        for k in range(1, self.order + 1):
            for gram, n in self.counts[k].items():
                self.totals[k][gram[:-1]] += n
                self.types[k][gram[:-1]] += 1
        return self

    def prob(self, context: Sequence[int], token: int) -> float:
        context = tuple(context)[-(self.order - 1) :] if self.order > 1 else ()
        return self._prob(context, token)

    def _prob(self, context: tuple, token: int) -> float:
        k = len(context) + 1
        lower = self._prob(context[1:], token) if k > 1 else 1.0 / self.vocab_size
        total = self.totals[k].get(context, 0)
        if total == 0:
            return lower
        count = self.counts[k].get((*context, token), 0)
        backoff = self.discount * self.types[k][context] / total
        return max(count - self.discount, 0.0) / total + backoff * lower

    def logprobs(self, sequence: Sequence[int]) -> list[float]:
        """log P(token_i | previous tokens) for i >= 1 (the first token is context only)."""
        return [
            math.log(self.prob(sequence[max(0, i - self.order + 1) : i], sequence[i])) for i in range(1, len(sequence))
        ]


@torch.inference_mode()
def model_logprobs(model, sequences: list[list[int]], pad_id: int, batch_size: int = 32) -> list[list[float]]:
    """The model's log P(token_i | previous tokens), i >= 1, for each sequence (right-padded batches)."""
    out = []
    for start in range(0, len(sequences), batch_size):
        chunk = [torch.tensor(seq) for seq in sequences[start : start + batch_size]]
        ids = pad_sequence(chunk, batch_first=True, padding_value=pad_id)
        mask = pad_sequence([torch.ones_like(seq) for seq in chunk], batch_first=True)
        picked = next_token_logprobs(model, ids, mask)
        out.extend(picked[row, : len(seq) - 1].tolist() for row, seq in enumerate(chunk))
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    if len(x) != len(y) or len(x) < 3:
        raise ValueError(f"Spearman needs two equally long series of >= 3 values, got {len(x)} and {len(y)}")
    return float(spearmanr(x, y).statistic)


@dataclass(frozen=True)
class NgramReference:
    """Held-out sequences and the n-gram model's log-probabilities of their tokens: the same for every checkpoint
    that shares a tokenizer, so computed once and compared with each."""

    sequences: list[list[int]]
    logprobs: list[float]

    @classmethod
    def of(cls, ngram: KneserNeyLM, sequences: list[list[int]]) -> NgramReference:
        return cls(sequences, [v for seq in sequences for v in ngram.logprobs(seq)])


def ngram_alignment(model, reference: NgramReference, pad_id: int) -> float:
    """Spearman correlation, over all held-out token positions, of model and n-gram log-probabilities."""
    by_model = [v for row in model_logprobs(model, reference.sequences, pad_id) for v in row]
    return spearman(by_model, reference.logprobs)
