"""A deterministic synthetic language with the statistics that drive the geometry phases.

- **Skewed frequencies**: word unigrams follow a Zipf law, so a few tokens dominate (as in natural text).
- **Short-range structure**: every word has a few preferred successors (a sparse bigram chain), and a set of
  *fixed pairs* whose second word always follows the first: predictable from one token of context.
- **Long-range dependency**: each document opens with a subject name and closes with ``so <subject> .``, so the
  token after ``so`` is predictable only from the document's first token, dozens of tokens back.
- **Arithmetic lines** (``sum 3 plus 4 is 7 .``): machine-checkable answers for post-training with rewards.

Everything is a pure function of the seed, so the corpus, and the model pretrained on it, are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
RECALL_MARKER = "so"
ARITH_TEMPLATE = "sum {a} plus {b} is {c} ."


@dataclass(frozen=True)
class Language:
    """The fixed grammar of the toy world (a function of ``seed`` and sizes only)."""

    words: list[str]
    unigram: np.ndarray  # Zipfian probabilities over words
    successors: np.ndarray  # (n_words, n_successors) preferred next words
    fixed_pairs: dict[int, int]  # trigger word -> the word that always follows it
    subjects: list[str]  # names that open documents and are recalled at their end
    follow_prob: float  # how often the next word is a preferred successor rather than a fresh Zipf draw


def make_language(
    n_words: int = 600,
    n_subjects: int = 40,
    zipf_exponent: float = 1.1,
    n_successors: int = 4,
    n_fixed_pairs: int = 40,
    follow_prob: float = 0.7,
    seed: int = 0,
) -> Language:
    rng = np.random.default_rng(seed)
    names: set[str] = set()
    while len(names) < n_words + n_subjects:
        names.add("".join(rng.choice(SYLLABLES, size=rng.integers(1, 4))))
    names.discard(RECALL_MARKER)
    ordered = sorted(names)
    rng.shuffle(ordered)
    words, subjects = ordered[:n_words], [s.capitalize() for s in ordered[n_words : n_words + n_subjects]]
    ranks = np.arange(1, n_words + 1, dtype=np.float64)
    unigram = ranks**-zipf_exponent
    unigram /= unigram.sum()
    successors = rng.choice(n_words, size=(n_words, n_successors), p=unigram)
    triggers = rng.choice(np.arange(n_words // 4, n_words), size=n_fixed_pairs, replace=False)
    fixed_pairs = {int(t): int(rng.integers(0, n_words)) for t in triggers}
    return Language(words, unigram, successors, fixed_pairs, subjects, follow_prob)


def generate_documents(
    language: Language,
    n_docs: int,
    seed: int,
    min_words: int = 12,
    max_words: int = 40,
    arithmetic_fraction: float = 0.15,
    max_operand: int = 9,
) -> list[str]:
    """Sample documents; different seeds give disjoint samples of the same language (train vs held out)."""
    rng = np.random.default_rng(seed)
    n_words, n_succ = language.successors.shape
    docs = []
    for _ in range(n_docs):
        if rng.random() < arithmetic_fraction:
            a, b = rng.integers(0, max_operand + 1, size=2)
            docs.append(ARITH_TEMPLATE.format(a=a, b=b, c=a + b))
            continue
        length = int(rng.integers(min_words, max_words + 1))
        follow = rng.random(length) < language.follow_prob
        succ_pick = rng.integers(0, n_succ, size=length)
        fresh = rng.choice(n_words, size=length, p=language.unigram)
        ids = [int(fresh[0])]
        for i in range(1, length):
            prev = ids[-1]
            if prev in language.fixed_pairs:
                ids.append(language.fixed_pairs[prev])
            elif follow[i]:
                ids.append(int(language.successors[prev, succ_pick[i]]))
            else:
                ids.append(int(fresh[i]))
        subject = language.subjects[int(rng.integers(0, len(language.subjects)))]
        body = " ".join(language.words[i] for i in ids)
        docs.append(f"{subject} {body} {RECALL_MARKER} {subject} .")
    return docs
