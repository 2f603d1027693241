"""Verifiable rewards for RLVR (GRPO): 1 when the completion's answer equals the reference answer, else 0.

TRL calls a reward function with the completions and every other dataset column as keyword lists."""

from __future__ import annotations

from geomsweep.sources.tasks import answer_of


def exact_answer(extractor: str = "first_number"):
    """A TRL reward function: ``reward(completions, answer, **columns) -> list[float]``."""

    def reward(completions: list, answer: list[str], **_) -> list[float]:
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        return [float(answer_of(t, extractor) == str(a)) for t, a in zip(texts, answer)]

    reward.__name__ = f"exact_answer_{extractor}"
    return reward
