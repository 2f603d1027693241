"""Tasks: a train split plus in-distribution (ID) and out-of-distribution (OOD) evaluation splits, and how an
answer is read from a completion. Post-training trains on them; sampling and evaluation score against them.

Every split is a `datasets.Dataset` in TRL's standard (string) formats, with whichever columns the task offers:
``prompt`` + ``completion`` (SFT), ``prompt`` + ``chosen`` + ``rejected`` (DPO), ``prompt`` + ``answer``
(RLVR: a machine-checkable answer for the reward). A method asks for the columns it needs.

- ``source: arithmetic`` — offline, in the toy language the embedded model was pretrained on (``sum 3 plus 4 is
  7 .``): ID problems are held-out operand pairs of the pretraining range, OOD problems use larger operands.
- ``source: files`` / ``hub`` — real data through `datasets`, read with a ``schema``: ``gsm8k`` (question,
  answer ending ``#### N``), ``hh`` (Anthropic-HH chosen/rejected dialogues) or ``ultrafeedback`` (prompt and
  chosen/rejected message lists). ``ood`` names a second dataset the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, load_dataset
from omegaconf import OmegaConf

from geomsweep.config.choices import Extractor, TaskSchema, TaskSource
from geomsweep.sources.files import check_file

COLUMNS = {"sft": ("prompt", "completion"), "dpo": ("prompt", "chosen", "rejected"), "rlvr": ("prompt", "answer")}
EMPTY_MEANS = {  # what a row with an empty column would do to training
    "sft": "they cannot be split into a prompt and a completion, and would train on empty completions",
    "dpo": "they cannot be split into a prompt and two replies",
    "rlvr": "no answer the reward can check (no number in the reference answer): its reward would be 0 for every "
    "completion",
}


@dataclass
class Task:
    name: str
    train: Dataset
    id_eval: Dataset
    ood_eval: Dataset | None

    def for_method(self, method: str) -> Dataset:
        """The train split with just the columns the method's trainer reads, or a clear error."""
        needed = COLUMNS[method]
        missing = [c for c in needed if c not in self.train.column_names]
        if missing:
            raise ValueError(
                f"method={method} needs task columns {list(needed)}, but task {self.name!r} lacks "
                f"{missing} (it has {self.train.column_names})"
            )
        rows = self.train.select_columns(list(needed))
        empty = [i for i, row in enumerate(rows) if any(row[c] is None or not str(row[c]).strip() for c in needed)]
        if empty:
            why = EMPTY_MEANS.get(method, "the trainer would learn from nothing")
            raise ValueError(
                f"method={method}: {len(empty)} of {len(rows)} rows of task {self.name!r} have an empty "
                f"{' or '.join(needed)} (rows {', '.join(map(str, empty[:5]))}{', ...' if len(empty) > 5 else ''}): "
                f"{why}; fix or drop those rows"
            )
        return rows


# --- the offline arithmetic task -------------------------------------------------------------------------------


def arithmetic_prompt(a: int, b: int) -> str:
    return f"sum {a} plus {b} is"


def arithmetic_rows(pairs, rng: np.random.Generator) -> dict[str, list]:
    rows = {"prompt": [], "completion": [], "chosen": [], "rejected": [], "answer": []}
    for a, b in pairs:
        wrong = a + b + int(rng.choice([-2, -1, 1, 2]))
        wrong = wrong if wrong >= 0 else a + b + 1
        rows["prompt"].append(arithmetic_prompt(a, b))
        rows["completion"].append(f" {a + b} .")
        rows["chosen"].append(f" {a + b} .")
        rows["rejected"].append(f" {wrong} .")
        rows["answer"].append(str(a + b))
    return rows


def arithmetic_task(max_operand: int = 9, ood_max_operand: int = 19, id_fraction: float = 0.3, seed: int = 0) -> Task:
    """ID: operand pairs from the pretraining range 0..max_operand, split train / held out. OOD: at least one
    operand in max_operand+1..ood_max_operand, never seen in pretraining or post-training."""
    rng = np.random.default_rng(seed)
    pairs = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    order = rng.permutation(len(pairs))
    n_id = max(1, int(round(id_fraction * len(pairs))))
    held_out, train = [pairs[i] for i in order[:n_id]], [pairs[i] for i in order[n_id:]]
    ood = [(a, b) for a in range(ood_max_operand + 1) for b in range(ood_max_operand + 1) if max(a, b) > max_operand]
    ood = [ood[i] for i in rng.permutation(len(ood))[:n_id]]
    return Task(
        "arithmetic",
        Dataset.from_dict(arithmetic_rows(train, rng)),
        Dataset.from_dict(arithmetic_rows(held_out, rng)),
        Dataset.from_dict(arithmetic_rows(ood, rng)),
    )


# --- answers ------------------------------------------------------------------------------------------------


def final_number(text: str) -> str | None:
    """The answer a completion commits to: after ``####`` when present, else the last number in the text."""
    text = text.replace(",", "")
    marked = re.search(r"####\s*(-?\d+(?:\.\d+)?)", text)
    if marked:
        return marked.group(1)
    numbers = re.findall(r"-?\d+(?:\.\d+)?", text)
    return numbers[-1] if numbers else None


def first_number(text: str) -> str | None:
    """The number a short completion opens with (``" 7 ."`` -> ``"7"``): the toy model states its answer first."""
    for token in text.split():
        token = token.strip(".,")
        if token.lstrip("-").isdigit():
            return token
        if token:
            return None
    return None


EXTRACTORS = {Extractor.first_number: first_number, Extractor.final_number: final_number}


def answer_of(completion: str, extractor: str) -> str | None:
    if extractor not in EXTRACTORS:
        raise ValueError(f"unknown answer extractor {extractor!r}; valid: {', '.join(EXTRACTORS)}")
    return EXTRACTORS[extractor](completion)


# --- real datasets ----------------------------------------------------------------------------------------------


def _gsm8k(row: dict) -> dict:
    return {
        "prompt": f"Question: {row['question']}\nAnswer:",
        "completion": " " + row["answer"],
        "answer": final_number(row["answer"]),
    }


HH_TURN = "\n\nAssistant:"


def _hh(row: dict) -> dict:
    """Anthropic-HH stores whole dialogues; the prompt is everything up to the last assistant turn."""

    def split(dialogue: str) -> tuple[str, str]:
        if HH_TURN not in dialogue:  # no assistant turn: no prompt and reply (Task.for_method counts such rows)
            return "", ""
        cut = dialogue.rfind(HH_TURN) + len(HH_TURN)
        return dialogue[:cut], dialogue[cut:]

    prompt, chosen = split(row["chosen"])
    return {"prompt": prompt, "chosen": chosen, "rejected": split(row["rejected"])[1], "completion": chosen}


def _last_message(value) -> str:
    return value[-1]["content"] if isinstance(value, list) else str(value)


def _ultrafeedback(row: dict) -> dict:
    chosen = _last_message(row["chosen"])
    return {"prompt": row["prompt"], "chosen": chosen, "rejected": _last_message(row["rejected"]), "completion": chosen}


CONVERTERS = {"gsm8k": _gsm8k, "hh": _hh, "ultrafeedback": _ultrafeedback}
REQUIRED = {
    "gsm8k": ("question", "answer"),
    "hh": ("chosen", "rejected"),
    "ultrafeedback": ("prompt", "chosen", "rejected"),
}


def load_split(spec, default_split: str = "train") -> Dataset:
    """One dataset from ``spec`` (a TaskConfig, or a mapping such as ``task.ood``: source files|hub, path or name,
    schema, split, limit), in TRL's columns."""
    if isinstance(spec, dict) or not hasattr(spec, "source"):
        spec = OmegaConf.create(dict(spec))
    schema = getattr(spec, "schema", None)
    if schema not in CONVERTERS:
        raise ValueError(f"unknown task schema {schema!r}; valid: {', '.join(TaskSchema)}")
    if spec.source == "files":
        path = Path(str(spec.path)).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"task path {str(path)!r} does not exist")
        kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(path.suffix)
        if kind is None:
            raise ValueError(f"task path {str(path)!r}: valid file types are .jsonl, .json, .parquet, .csv")
        check_file(path, key="task.path")
        dataset = load_dataset(kind, data_files=str(path), split="train")
    elif spec.source == "hub":
        dataset = load_dataset(
            spec.name, getattr(spec, "config", None), split=getattr(spec, "split", None) or default_split
        )
    else:
        raise ValueError(f"unknown task source {spec.source!r}; valid: {', '.join(TaskSource)}")
    missing = [c for c in REQUIRED[schema] if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"task schema {schema!r} needs columns {list(REQUIRED[schema])}; the dataset lacks "
            f"{missing} (it has {dataset.column_names})"
        )
    if getattr(spec, "limit", None):
        dataset = dataset.select(range(min(int(spec.limit), len(dataset))))
    return dataset.map(CONVERTERS[schema], remove_columns=dataset.column_names)


def load_task(task_cfg, seed: int = 0) -> Task:
    """The task of ``task_cfg`` (a TaskConfig, or any mapping with its fields)."""
    if isinstance(task_cfg, dict):
        task_cfg = OmegaConf.create(task_cfg)
    if task_cfg.source == "arithmetic":
        return arithmetic_task(task_cfg.max_operand, task_cfg.ood_max_operand, task_cfg.id_fraction, seed)
    data = load_split(task_cfg)
    if len(data) < 2:
        where = getattr(task_cfg, "path", None) or getattr(task_cfg, "name", None)
        raise ValueError(f"task {where!r} has {len(data)} rows; need >= 2")
    split = data.train_test_split(test_size=getattr(task_cfg, "id_fraction", None) or 0.1, seed=seed)
    ood = load_split(task_cfg.ood) if getattr(task_cfg, "ood", None) else None
    return Task(str(task_cfg.schema), split["train"], split["test"], ood)
