"""Task folders geomsweep writes for lm-evaluation-harness (JSON Lines and a task YAML each, readable offline).

The toy world's tasks, generated from the toy language and written once into a folder beside the toy's cache, so one
evaluation path serves the toy and real models:

- ``toy_recall``: the subject a document opened with, recalled after ``so`` dozens of tokens later (the long-range
  dependency), as 4-way multiple choice among the language's subjects.
- ``toy_arithmetic``: ``sum a plus b is`` -> ``a + b`` for every operand pair of the pretraining range, 4-way
  multiple choice among the sum and sums 1 to 3 away.

And ``english_next_word``, for a real model offline: the last word of a window of the English texts every Debian
system has (``sources/data.english_texts``), 4-way.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from geomsweep.behavior.toy_eval import dependency_items
from geomsweep.config.toy import ToyConfig
from geomsweep.sources.data import english_texts
from geomsweep.sources.tasks import arithmetic_prompt
from geomsweep.sources.toy.pretrain import language

TOY_TASKS = ("toy_recall", "toy_arithmetic")
CHOICES = 4
MAX_OPERAND = 9  # the operands of the pretraining corpus's sums (toy/corpus.generate_documents)

TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def recall_items(toy: ToyConfig, n_docs: int, seed: int) -> list[dict]:
    long_range, _ = dependency_items(toy, n_docs, seed=seed)
    subjects = list(language(toy).subjects)
    rng = np.random.default_rng(seed)
    items = []
    for context, target in zip(long_range.prefixes, long_range.targets):
        wrong = rng.choice([s for s in subjects if s != target], CHOICES - 1, replace=False).tolist()
        items.append(shuffled(context, target, wrong, rng))
    return items


def arithmetic_items(seed: int) -> list[dict]:
    rng = np.random.default_rng(seed + 1)
    items = []
    for a in range(MAX_OPERAND + 1):
        for b in range(MAX_OPERAND + 1):
            near = [a + b + d for d in (-2, -1, 1, 2, 3) if a + b + d >= 0]
            wrong = rng.choice(near, CHOICES - 1, replace=False).tolist()
            items.append(shuffled(arithmetic_prompt(a, b), str(a + b), [str(w) for w in wrong], rng))
    return items


def shuffled(context: str, target: str, wrong: list[str], rng: np.random.Generator) -> dict:
    choices = [target, *wrong]
    choices = [choices[i] for i in rng.permutation(len(choices))]
    return {"context": context, "choices": choices, "label": choices.index(target)}


def write_task(folder: Path, task: str, items: list[dict]) -> None:
    data = folder / f"{task}.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    (folder / f"{task}.yaml").write_text(TASK_YAML.format(task=task, data=data.resolve()))


def write_english_next_word(folder: Path, n: int = 100) -> Path:
    """``english_next_word`` in ``folder`` (an ``eval.harness.include_path``): ``n`` windows, 4 choices each."""
    texts, rng = english_texts(), random.Random(0)
    pool = [word for text in texts[n:] for word in text.split()[:25]]
    items = []
    for text in texts[:n]:
        words = text.split()[:25]
        wrong = rng.sample([word for word in pool if word != words[-1]], CHOICES - 1)
        items.append(shuffled(" ".join(words[:-1]), words[-1], wrong, np.random.default_rng(len(items))))
    folder.mkdir(parents=True, exist_ok=True)
    write_task(folder, "english_next_word", items)
    return folder


def write_toy_tasks(toy: ToyConfig, folder: Path, n_docs: int, seed: int) -> Path:
    """The toy's task folder (an ``eval.harness.include_path``), written once per world, item count and seed."""
    target = folder / f"{n_docs}-{seed}"
    if (target / "COMPLETE").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    write_task(target, "toy_recall", recall_items(toy, n_docs, seed))
    write_task(target, "toy_arithmetic", arithmetic_items(seed))
    (target / "COMPLETE").write_text("")
    return target
