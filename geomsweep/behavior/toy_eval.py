"""Behavioral probes that the toy grammar makes exact: next-word accuracy where the answer depends on a
long-range dependency (the subject recalled after ``so``, dozens of tokens back) and where it depends on the
previous word alone (the fixed pairs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from geomsweep.config.toy import ToyConfig
from geomsweep.core.extract import eval_mode, last_token_index
from geomsweep.sources.toy.corpus import RECALL_MARKER
from geomsweep.sources.toy.pretrain import documents, language


@dataclass(frozen=True)
class NextWordItems:
    prefixes: list[str]
    targets: list[str]


MAX_EVAL_WORDS = 30  # held-out documents short enough to fit the context the model was trained with


def held_out_documents(toy: ToyConfig, n_docs: int, seed: int, **kwargs) -> list[str]:
    lengths = {"min_words": min(toy.min_words, MAX_EVAL_WORDS), "max_words": min(toy.max_words, MAX_EVAL_WORDS)}
    return documents(toy, n_docs, seed=seed, **lengths, **kwargs)


def dependency_items(toy: ToyConfig, n_docs: int, seed: int) -> tuple[NextWordItems, NextWordItems]:
    """(long-range, short-range) items from held-out documents: a prefix and the word that must follow."""
    lang = language(toy)
    triggers = {lang.words[t] for t in lang.fixed_pairs}
    long_p, long_t, short_p, short_t = [], [], [], []
    for doc in held_out_documents(toy, n_docs, seed=seed, arithmetic_fraction=0.0):
        words = doc.split()
        for i, word in enumerate(words[:-1]):
            if word == RECALL_MARKER and i > 0:
                long_p.append(" ".join(words[: i + 1]))
                long_t.append(words[i + 1])
            elif word in triggers:
                short_p.append(" ".join(words[: i + 1]))
                short_t.append(words[i + 1])
    return NextWordItems(long_p, long_t), NextWordItems(short_p, short_t)


@dataclass(frozen=True)
class EncodedItems:
    """Items tokenized once for every checkpoint that shares the tokenizer: right-padded batches and the first
    token of each target word."""

    batches: list
    firsts: torch.Tensor


def encode_items(tokenizer, items: NextWordItems, batch_size: int = 64) -> EncodedItems:
    firsts = [ids[0] for ids in tokenizer(items.targets, add_special_tokens=False)["input_ids"]]
    batches = [
        tokenizer(items.prefixes[i : i + batch_size], padding=True, padding_side="right", return_tensors="pt")
        for i in range(0, len(items.prefixes), batch_size)
    ]
    return EncodedItems(batches, torch.tensor(firsts, dtype=torch.long))


@torch.inference_mode()
def next_word_accuracy(model, encoded: EncodedItems) -> float:
    """Fraction of items whose greedy next token is the first token of the target word. Only the last position
    of each prefix is scored, so the unembedding runs on those rows alone (the width-16 toy spends most of a
    full forward on its vocabulary-wide logits)."""
    if not encoded.batches:
        return float("nan")
    device = next(model.parameters()).device
    head, correct, start = model.get_output_embeddings(), 0, 0
    with eval_mode(model):
        for batch in encoded.batches:
            batch = batch.to(device)
            hidden = model.base_model(**batch).last_hidden_state
            last = last_token_index(batch["attention_mask"])
            predicted = head(hidden[torch.arange(len(last), device=device), last]).argmax(-1).cpu()
            correct += int((predicted == encoded.firsts[start : start + len(last)]).sum())
            start += len(last)
    return correct / start


class ToyEvaluation:
    """The toy's own tasks, built once per job and scored on every checkpoint (and by the spectral-tail ablation)."""

    def __init__(self, toy: ToyConfig, n_docs: int, seed: int):
        self.toy = toy
        self.long_range, self.short_range = dependency_items(toy, n_docs, seed=seed)
        self._encoded: dict[str, dict[str, EncodedItems]] = {}

    def tasks(self, model, tokenizer) -> dict[str, float]:
        return {name: next_word_accuracy(model, items) for name, items in self._items(tokenizer).items()}

    def _items(self, tokenizer) -> dict[str, EncodedItems]:
        """The task items in this tokenizer's tokens, encoded on first use (every checkpoint of a toy world
        shares its tokenizer: one encoding serves the whole trace and every ablation)."""
        key = tokenizer.backend_tokenizer.to_str()
        if key not in self._encoded:
            self._encoded[key] = {
                "long_range_acc": encode_items(tokenizer, self.long_range),
                "short_range_acc": encode_items(tokenizer, self.short_range),
            }
        return self._encoded[key]
