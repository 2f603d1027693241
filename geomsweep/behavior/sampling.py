"""n sampled completions per prompt, from one of two backends with the same result structure.

- ``hf``: transformers ``generate`` (batched prompts, ``num_return_sequences=n``, seeded); the CPU default.
- ``vllm``: vLLM's ``LLM`` with ``SamplingParams(n=...)``, one request per prompt (prompts are never
  duplicated); imported lazily, CUDA only. It serves a saved copy of the model, so a model changed in memory
  by post-training is sampled as it is now.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from transformers import set_seed

from geomsweep.extract import eval_mode

BACKENDS = ("hf", "vllm")


@dataclass(frozen=True)
class SampleSettings:
    n: int
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    seed: int = 0
    batch_size: int = 8  # prompts per generate call (hf), each expanded to n sequences

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"sampler.n must be >= 1, got {self.n}")
        if not self.temperature > 0:
            raise ValueError(
                f"sampler.temperature must be > 0 (pass@k needs random samples; greedy accuracy is "
                f"eval/*_acc), got {self.temperature}"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampler.top_p must lie in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"sampler.max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class Samples:
    """``texts[i][j]`` and ``token_ids[i][j]``: the j-th completion of prompt i (special tokens removed)."""

    prompts: list[str]
    texts: list[list[str]]
    token_ids: list[list[list[int]]]


class Sampler(Protocol):
    def sample(self, model, tokenizer, prompts: list[str]) -> Samples: ...


def _strip(ids: list[int], stop: set[int]) -> list[int]:
    """Tokens up to the first end-of-sequence or padding token."""
    for i, token in enumerate(ids):
        if token in stop:
            return ids[:i]
    return ids


class HFSampler:
    def __init__(self, settings: SampleSettings):
        self.settings = settings

    @torch.inference_mode()
    def sample(self, model, tokenizer, prompts: list[str]) -> Samples:
        s = self.settings
        set_seed(s.seed)
        device = next(model.parameters()).device
        stop = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        texts, token_ids = [], []
        with eval_mode(model, tokenizer, padding_side="left"):
            for i in range(0, len(prompts), s.batch_size):
                batch = tokenizer(
                    prompts[i : i + s.batch_size], return_tensors="pt", padding=True, add_special_tokens=False
                ).to(device)
                out = model.generate(
                    **batch,
                    do_sample=True,
                    temperature=s.temperature,
                    top_p=s.top_p,
                    top_k=0,
                    max_new_tokens=s.max_tokens,
                    num_return_sequences=s.n,
                    pad_token_id=pad,
                )
                generated = out[:, batch["input_ids"].shape[1] :].tolist()
                for p in range(len(generated) // s.n):
                    ids = [_strip(row, stop) for row in generated[p * s.n : (p + 1) * s.n]]
                    token_ids.append(ids)
                    texts.append(tokenizer.batch_decode(ids, skip_special_tokens=True))
        return Samples(list(prompts), texts, token_ids)


def vllm_sampling_kwargs(settings: SampleSettings, prompt_index: int) -> dict:
    """``vllm.SamplingParams`` arguments for one prompt: n samples per request, never n copies of a prompt.
    Each request gets its own seed, derived from (sampler.seed, prompt index): one seed shared by every request
    would make every prompt draw the same random stream, so samples of different prompts would be correlated."""
    seed = int(np.random.SeedSequence([settings.seed, prompt_index]).generate_state(1)[0])
    return {
        "n": settings.n,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_tokens": settings.max_tokens,
        "seed": seed,
    }


class VLLMSampler:
    def __init__(self, settings: SampleSettings, engine_args: dict | None = None):
        try:
            import vllm  # noqa: F401, PLC0415  (optional and heavy: CUDA machines with the vllm extra only)
        except ImportError as err:
            raise RuntimeError(
                "sampler=vllm needs the vllm package (pip install -e '.[vllm]', CUDA only); "
                "on a machine without it use sampler=hf"
            ) from err
        if not torch.cuda.is_available():
            raise RuntimeError("sampler=vllm needs a CUDA GPU, and torch sees none; use sampler=hf")
        self.settings, self.engine_args = settings, dict(engine_args or {})

    def sample(self, model, tokenizer, prompts: list[str]) -> Samples:
        from vllm import LLM, SamplingParams  # noqa: PLC0415  (optional, as above)

        with tempfile.TemporaryDirectory(prefix="geomsweep-vllm-") as path:
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
            llm = LLM(model=path, seed=self.settings.seed, **self.engine_args)
            try:
                params = [SamplingParams(**vllm_sampling_kwargs(self.settings, i)) for i in range(len(prompts))]
                outputs = llm.generate(list(prompts), params, use_tqdm=False)
            finally:
                del llm
                torch.cuda.empty_cache()
        stop = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
        return Samples(
            list(prompts),
            [[c.text for c in o.outputs] for o in outputs],
            [[_strip(list(c.token_ids), stop) for c in o.outputs] for o in outputs],
        )


def make_sampler(name: str, settings: SampleSettings, engine_args: dict | None = None) -> Sampler:
    if name == "hf":
        return HFSampler(settings)
    if name == "vllm":
        return VLLMSampler(settings, engine_args)
    raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(BACKENDS)}")
