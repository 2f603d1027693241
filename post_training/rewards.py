"""Verifiable rewards for RLVR (GRPO): 1 when the completion's answer equals the reference answer, else 0.

TRL calls a reward function with the completions and every other dataset column as keyword lists."""

from __future__ import annotations

from post_training.data import final_number


def first_number(text: str) -> str | None:
    """The number a short completion opens with (``" 7 ."`` -> ``"7"``): the toy model states its answer first."""
    for token in text.split():
        token = token.strip(".,")
        if token.lstrip("-").isdigit():
            return token
        if token:
            return None
    return None


def answer_of(completion: str, extractor: str) -> str | None:
    if extractor == "first_number":
        return first_number(completion)
    if extractor == "final_number":
        return final_number(completion)
    raise ValueError(f"unknown answer extractor {extractor!r}; valid: first_number, final_number")


def exact_answer(extractor: str = "first_number"):
    """A TRL reward function: ``reward(completions, answer, **columns) -> list[float]``."""
    def reward(completions: list, answer: list[str], **_) -> list[float]:
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        return [float(answer_of(t, extractor) == str(a)) for t, a in zip(texts, answer)]

    reward.__name__ = f"exact_answer_{extractor}"
    return reward
