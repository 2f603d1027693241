"""n-gram memorization and the spectral-tail ablation: closed-form values on tiny inputs, real models."""

import math
import random

import pytest
import torch

from geomsweep.behavior.ngram import KneserNeyLM, NgramReference, ngram_alignment, spearman
from geomsweep.core.ablation import projected, tail_ablation, top_directions
from geomsweep.core.spectra import StreamingCovariance


def random_corpus(n_docs=40, length=25, vocab=7, seed=0):
    rng = random.Random(seed)
    return [[0] + [rng.randrange(1, vocab) for _ in range(length)] for _ in range(n_docs)]


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_kneser_ney_is_a_distribution_for_seen_and_unseen_contexts(order):
    lm = KneserNeyLM(order, vocab_size=9).fit(random_corpus())
    for context in [(), (1,), (1, 2), (3, 4, 5), (8, 8, 8)]:  # 8 never occurs
        probs = [lm.prob(context, w) for w in range(9)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-12)
        assert min(probs) > 0


def test_kneser_ney_golden_values():
    # Corpus "0 a b a b" with a=1, b=2, order 2, D=0.5, vocab 4 (token 3 never occurs).
    lm = KneserNeyLM(2, vocab_size=4, discount=0.5).fit([[0, 1, 2, 1, 2]])
    # Unigram adjusted counts: 0 starts the document -> raw 1; 1 follows {0, 2} -> 2; 2 follows {1} -> 1. Total 4,
    # 3 types, interpolated with the uniform 1/4.
    p_uni = [(c - 0.5) / 4 + 0.5 * 3 / 4 / 4 if c else 0.5 * 3 / 4 / 4 for c in (1, 2, 1, 0)]
    assert sum(p_uni) == pytest.approx(1.0)
    assert [lm.prob((), w) for w in range(4)] == pytest.approx(p_uni)
    # Context 1: "1 2" seen twice, one type.
    assert lm.prob((1,), 2) == pytest.approx((2 - 0.5) / 2 + 0.5 * 1 / 2 * p_uni[2])
    assert lm.prob((1,), 0) == pytest.approx(0.5 * 1 / 2 * p_uni[0])
    # Only the last order-1 tokens are context: (0, 2) is context (2,), where "2 1" was seen once.
    assert lm.prob((0, 2), 1) == pytest.approx((1 - 0.5) / 1 + 0.5 * 1 / 1 * p_uni[1])
    # An unseen context backs off entirely.
    assert lm.prob((3,), 1) == pytest.approx(p_uni[1])
    assert lm.logprobs([0, 1, 2]) == pytest.approx([math.log(lm.prob((0,), 1)), math.log(lm.prob((1,), 2))])


def test_kneser_ney_rejects_bad_settings():
    with pytest.raises(ValueError, match="order must be >= 1, got 0"):
        KneserNeyLM(0)
    with pytest.raises(ValueError, match="discount must lie in"):
        KneserNeyLM(3, discount=1.5)
    with pytest.raises(ValueError, match="token id 9 is outside vocab_size=5"):
        KneserNeyLM(2, vocab_size=5).fit([[0, 9]])


def test_spearman_is_rank_correlation():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="got 2 and 3"):
        spearman([1, 2], [1, 2, 3])


class BigramModel(torch.nn.Module):
    """A causal LM whose next-token log-probabilities are a fixed table: the n-gram model in disguise."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(table.log())

    def forward(self, input_ids, attention_mask=None):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.logits[input_ids])


def test_ngram_alignment_is_one_for_a_model_that_is_the_ngram():
    corpus = random_corpus(vocab=6)
    lm = KneserNeyLM(2, vocab_size=6).fit(corpus)
    table = torch.tensor([[lm.prob((a,), b) for b in range(6)] for a in range(6)], dtype=torch.float64)
    held_out = random_corpus(n_docs=5, length=12, vocab=6, seed=1)
    reference = NgramReference.of(lm, held_out)
    assert reference.logprobs == [v for seq in held_out for v in lm.logprobs(seq)]
    assert ngram_alignment(BigramModel(table), reference, pad_id=0) == pytest.approx(1.0)
    anti = torch.softmax(-table.log(), -1)  # ranks every token the other way round
    assert ngram_alignment(BigramModel(anti), reference, pad_id=0) < -0.5


class LinearHead(torch.nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.head.weight.data = weight

    def get_output_embeddings(self):
        return self.head

    def forward(self, hidden):
        return self.head(hidden)


def covariance_of(x):
    cov = StreamingCovariance()
    cov.update(x)
    return cov


def test_projection_keeps_or_removes_the_top_directions():
    # The 8 sign patterns of (2, 1, 3) around the mean (1, 1, 1): a diagonal covariance, largest along axis 2,
    # then 0, then 1, so the top-2 directions are exactly axes 2 and 0.
    signs = torch.tensor([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], dtype=torch.float64)
    x = signs * torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64) + 1
    cov = covariance_of(x)
    basis = top_directions(cov, 2)
    assert basis[:, 0].abs().argmax() == 2 and basis[:, 1].abs().argmax() == 0
    model = LinearHead(torch.eye(3, dtype=torch.float64))
    h = torch.tensor([[5.0, 7.0, -3.0]], dtype=torch.float64)
    with torch.no_grad(), projected(model, cov.mean, basis, keep=True):
        kept = model(h)
    with torch.no_grad(), projected(model, cov.mean, basis, keep=False):
        removed = model(h)
    with torch.no_grad():
        assert torch.allclose(model(h), h)  # the hook is gone after the block
    assert kept[0].tolist() == pytest.approx([5.0, 1.0, -3.0])  # axis 1 falls back to the mean
    assert removed[0].tolist() == pytest.approx([1.0, 7.0, 1.0])  # axes 2 and 0 fall back to the mean


def test_tail_ablation_reports_every_variant_and_rejects_bad_k():
    x = torch.randn(500, 4, dtype=torch.float64)
    model = LinearHead(torch.eye(4, dtype=torch.float64))
    probe = torch.tensor([[3.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    results = tail_ablation(model, covariance_of(x), [1, 4], lambda: {"argmax0": float(model(probe).argmax() == 0)})
    assert results["full/argmax0"] == 1.0 and results["top4_only/argmax0"] == 1.0  # K = D changes nothing
    assert set(results) == {
        "full/argmax0",
        "top1_only/argmax0",
        "without_top1/argmax0",
        "top4_only/argmax0",
        "without_top4/argmax0",
    }
    with pytest.raises(ValueError, match="ablation K=5 must lie in 1..4"):
        tail_ablation(model, covariance_of(x), [5], lambda: {})
