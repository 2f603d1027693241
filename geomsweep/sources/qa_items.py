"""Question/answer items for the memorization measure: TriviaQA as the paper, a local JSONL file, or the toy's own.

Each item is the text a model reads (``prompt``) and the answer scored after it and a space (``answer``); ``group``
names the document it came from, so the jackknife leaves a document's items out together.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from geomsweep.config.choices import MemorizationItems
from geomsweep.config.toy import ToyConfig
from geomsweep.sources.toy.pretrain import documents

TRIVIAQA = ("mandarjoshi/trivia_qa", "rc.nocontext")  # rc's questions and answers without its evidence documents
TOY_ITEMS_SEED_OFFSET = 5_000  # a seed stream of the toy language no other use draws from
TOY_ITEM_WORDS = 30  # held-out documents short enough for the toy's context


@dataclass(frozen=True)
class QAItem:
    prompt: str
    answer: str
    group: int


def paper_prompt(question: str) -> str:
    """The paper's prompt, ``Question: {q}? Answer:`` (a question mark added where the question has none)."""
    question = question.strip()
    return f"Question: {question if question.endswith('?') else question + '?'} Answer:"


def triviaqa_items(limit: int | None) -> list[QAItem]:
    """TriviaQA's rc validation questions, in order, with each one's canonical answer."""
    from datasets import load_dataset  # noqa: PLC0415  only where the hub's items are asked for

    split = "validation" if limit is None else f"validation[:{limit}]"
    rows = load_dataset(*TRIVIAQA, split=split)
    return [QAItem(paper_prompt(r["question"]), r["answer"]["value"], i) for i, r in enumerate(rows)]


def jsonl_items(path: str | os.PathLike, limit: int | None) -> list[QAItem]:
    """One item per line of a JSON Lines file with ``question`` and ``answer`` strings, in the paper's prompt."""
    items = []
    for number, line in enumerate(Path(path).expanduser().read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number} is not JSON ({err.msg})") from None
        if not isinstance(record, dict) or not all(
            isinstance(record.get(key), str) and record[key].strip() for key in ("question", "answer")
        ):
            raise ValueError(f"{path}:{number} needs non-empty string fields 'question' and 'answer'")
        items.append(QAItem(paper_prompt(record["question"]), record["answer"].strip(), len(items)))
        if len(items) == limit:
            break
    return items


def toy_items(toy: ToyConfig, limit: int | None, start: str, n_docs: int = 200) -> list[QAItem]:
    """Every word of held-out toy documents as the answer to its prefix (the document start ``start`` first, as in
    pretraining): ``sum 3 plus 4 is`` -> ``7``, and the recalled subject after ``so``, among them."""
    items = []
    lengths = {"min_words": min(toy.min_words, TOY_ITEM_WORDS), "max_words": min(toy.max_words, TOY_ITEM_WORDS)}
    docs = documents(toy, n_docs, seed=toy.seed + TOY_ITEMS_SEED_OFFSET, **lengths)
    for number, doc in enumerate(docs):
        words = doc.split()
        for cut in range(1, len(words)):
            items.append(QAItem(start + " ".join(words[:cut]), words[cut], number))
            if len(items) == limit:
                return items
    return items


def load_items(items: str, limit: int | None, toy: ToyConfig | None = None, start: str = "") -> list[QAItem]:
    """The item set ``eval.memorization.items`` names (``toy`` needs the toy world and its document start)."""
    if items == MemorizationItems.toy:
        if toy is None:
            raise ValueError("eval.memorization.items=toy needs the toy model (model=tiny)")
        return toy_items(toy, limit, start)
    if items == MemorizationItems.triviaqa:
        return triviaqa_items(limit)
    return jsonl_items(items, limit)
