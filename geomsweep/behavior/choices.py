"""The samplers and where they sample: the valid choices, defined once (pure Python, for the config's schema)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


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
