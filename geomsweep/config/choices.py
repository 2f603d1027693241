"""Every closed set of choices the config offers (model sources, selections, data and task sources, samplers), defined
once at the bottom of the config layer: pure Python, so the schema and every layer below it take typed values
without loading torch."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


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


class Backend(StrEnum):
    hf = "hf"
    vllm = "vllm"


class SampleAt(StrEnum):
    last = "last"
    all = "all"


class Split(StrEnum):
    id = "id"
    ood = "ood"


# vllm.LLM(...) arguments by the platform vLLM runs on (sampler.engine.<platform>.<argument> overrides one).
VLLM_ENGINES: dict[str, dict[str, Any]] = {
    # leave room for the model geomsweep itself holds on the same GPU
    "cuda": {"gpu_memory_utilization": 0.4},
    # no graph compilation (it adds ~25 s to each engine start on 2 cores for short samples); a 1 GiB KV cache
    "cpu": {"enforce_eager": True, "kv_cache_memory_bytes": 1 << 30},
}


class NgramEngine(StrEnum):  # where eval.memorization's ∞-gram probabilities come from
    local = "local"  # infini-gram's engine over an index folder on this machine
    api = "api"  # the public infini-gram API (the paper's index)


class MemorizationItems(StrEnum):  # named item sets; anything else is a JSONL path
    toy = "toy"  # the toy's held-out documents: each word after its prefix
    triviaqa = "triviaqa"  # TriviaQA rc validation, as the paper
