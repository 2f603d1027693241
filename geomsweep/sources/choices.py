"""Where models, checkpoints, texts and tasks come from: the valid choices, defined once (pure Python, so the
config's schema imports them without loading torch)."""

from __future__ import annotations

from enum import StrEnum


class Source(StrEnum):
    toy = "toy"
    local = "local"
    hub = "hub"
    gguf = "gguf"
    mlflow = "mlflow"  # a model an earlier post-training run saved (method.save=true)


class Selection(StrEnum):
    all = "all"
    final = "final"
    steps = "steps"
    log = "log"
    every = "every"


class DataSource(StrEnum):
    toy = "toy"
    english = "english"  # English prose every Debian system has offline (sources/data.english_texts)
    files = "files"
    hub = "hub"


class TaskSource(StrEnum):
    arithmetic = "arithmetic"
    files = "files"
    hub = "hub"


class TaskSchema(StrEnum):
    gsm8k = "gsm8k"
    hh = "hh"
    ultrafeedback = "ultrafeedback"


class Extractor(StrEnum):
    first_number = "first_number"
    final_number = "final_number"


class LRScheduler(StrEnum):  # the toy's pretraining schedule (transformers' names)
    constant = "constant"
    constant_with_warmup = "constant_with_warmup"
    cosine = "cosine"
    linear = "linear"
