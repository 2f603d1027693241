"""Behavioral probes that the toy grammar makes exact: next-word accuracy where the answer depends on a
long-range dependency (the subject recalled after ``so``, dozens of tokens back) and where it depends on the
previous word alone (the fixed pairs); and n-gram memorization against the pretraining corpus."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from geomsweep.behavior.ngram import KneserNeyLM, ngram_alignment
from geomsweep.core.extract import eval_mode, last_token_index
from geomsweep.sources.toy.config import ToyConfig
from geomsweep.sources.toy.corpus import RECALL_MARKER, generate_documents
from geomsweep.sources.toy.pretrain import language, train_documents


@dataclass(frozen=True)
class NextWordItems:
    prefixes: list[str]
    targets: list[str]


def dependency_items(language, n_docs: int, seed: int) -> tuple[NextWordItems, NextWordItems]:
    """(long-range, short-range) items from held-out documents: a prefix and the word that must follow.
    Documents are kept short enough (<= 30 words) to fit the context the model was trained with."""
    triggers = {language.words[t] for t in language.fixed_pairs}
    long_p, long_t, short_p, short_t = [], [], [], []
    for doc in generate_documents(language, n_docs, seed=seed, arithmetic_fraction=0.0, max_words=30):
        words = doc.split()
        for i, word in enumerate(words[:-1]):
            if word == RECALL_MARKER and i > 0:
                long_p.append(" ".join(words[: i + 1]))
                long_t.append(words[i + 1])
            elif word in triggers:
                short_p.append(" ".join(words[: i + 1]))
                short_t.append(words[i + 1])
    return NextWordItems(long_p, long_t), NextWordItems(short_p, short_t)


@torch.inference_mode()
def next_word_accuracy(model, tokenizer, items: NextWordItems, batch_size: int = 64) -> float:
    """Fraction of items whose greedy next token is the first token of the target word."""
    if not items.prefixes:
        return float("nan")
    device = next(model.parameters()).device
    firsts = torch.tensor([ids[0] for ids in tokenizer(items.targets, add_special_tokens=False)["input_ids"]])
    correct = 0
    with eval_mode(model, tokenizer, padding_side="right"):
        for i in range(0, len(items.prefixes), batch_size):
            batch = tokenizer(items.prefixes[i : i + batch_size], padding=True, return_tensors="pt").to(device)
            logits = model(**batch).logits
            last = last_token_index(batch["attention_mask"])
            predicted = logits[torch.arange(len(last), device=device), last].argmax(-1).cpu()
            correct += int((predicted == firsts[i : i + batch_size]).sum())
    return correct / len(items.prefixes)


class ToyEvaluation:
    """Everything a toy checkpoint is scored on, built once per job: ``tasks`` (the accuracies, also used by the
    spectral-tail ablation) and ``behavior`` (tasks plus n-gram alignment)."""

    def __init__(self, toy: ToyConfig, n_docs: int, ngram_order: int, seed: int):
        self.toy, self.ngram_order = toy, ngram_order
        self.long_range, self.short_range = dependency_items(language(toy), n_docs, seed=seed)
        self.held_out = generate_documents(language(toy), n_docs, seed=seed + 1, max_words=30)
        self._ngram = None

    def tasks(self, model, tokenizer) -> dict[str, float]:
        return {
            "long_range_acc": next_word_accuracy(model, tokenizer, self.long_range),
            "short_range_acc": next_word_accuracy(model, tokenizer, self.short_range),
        }

    def behavior(self, model, tokenizer) -> dict[str, float]:
        metrics = {f"eval/{name}": value for name, value in self.tasks(model, tokenizer).items()}
        if self.ngram_order:
            ngram = self._ngram_model(tokenizer)
            metrics["behavior/ngram_alignment"] = ngram_alignment(
                model, ngram, self._encode(tokenizer, self.held_out), tokenizer.pad_token_id
            )
        return metrics

    @staticmethod
    def _encode(tokenizer, docs: list[str]) -> list[list[int]]:
        """Each document as the model saw it in pretraining: after an EOS, the corpus's document separator."""
        return [[tokenizer.eos_token_id, *ids] for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]]

    def _ngram_model(self, tokenizer):
        """Kneser-Ney over the exact pretraining documents, in the checkpoints' own tokens (shared by all)."""
        if self._ngram is None:
            corpus = self._encode(tokenizer, train_documents(self.toy))
            self._ngram = KneserNeyLM(self.ngram_order, vocab_size=len(tokenizer)).fit(corpus)
        return self._ngram
