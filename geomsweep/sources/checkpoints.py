"""One checkpoint of a model, and how it is loaded: transformers' Auto classes, safetensors where a copy has them,
pickled weights only through torch's safe loading, and never a model folder's own code unless asked."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging


@dataclass(frozen=True)
class Checkpoint:
    revision: str  # the revision name, "final" for a single-model directory
    step: int  # pretraining step (the MLflow step of its metrics)
    tokens: int | None  # tokens seen at this step, when known
    location: str  # a local directory or a hub id
    hub_revision: str | None = None  # the git revision to ask the hub for
    stage: str | None = None  # the pipeline stage (base, sft, dpo, ...) of a stage trace

    def load_tokenizer(self, trust_remote_code: bool = False):
        """This checkpoint's tokenizer alone (to count tokens before any model loads)."""
        kwargs = {"revision": self.hub_revision} if self.hub_revision else {}
        return AutoTokenizer.from_pretrained(self.location, trust_remote_code=trust_remote_code, **kwargs)

    def load(self, device: str = "cpu", dtype: str = "float32", device_map=None, trust_remote_code: bool = False):
        """(model, tokenizer) with transformers' Auto classes. ``device_map`` (e.g. ``auto``) lets accelerate spread
        a model too large for one GPU over all of them. Safetensors are used where a local copy has them, pickled
        weights only through torch's safe loading; a damaged checkpoint is named with what to do about it."""
        hf_logging.disable_progress_bar()  # one bar per weight file per checkpoint is noise in a trace
        local = Path(self.location).is_dir()
        kwargs = {"trust_remote_code": trust_remote_code}
        if self.hub_revision:
            kwargs["revision"] = self.hub_revision
        weights = {"use_safetensors": True} if local and any(Path(self.location).glob("*.safetensors")) else {}
        placement = {"device_map": device_map} if device_map is not None else {}
        tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
        if local and not any((Path(self.location) / name).exists() for name in tokenizer_files):
            raise RuntimeError(
                f"{self.where} has no tokenizer ({', '.join(tokenizer_files)}): save one beside the weights with "
                f"tokenizer.save_pretrained(<that folder>)"
            )
        if local and not trust_remote_code and "auto_map" in readable_json(Path(self.location) / "config.json"):
            # a class transformers knows would load and the folder's own code be ignored: the folder means its code
            raise RemoteCodeRefused.at(self.where)
        try:
            if not trust_remote_code:
                with no_remote_code(self.where):
                    AutoConfig.from_pretrained(self.location, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(self.location, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                self.location, dtype=getattr(torch, dtype), **placement, **weights, **kwargs
            )
        except pickle.UnpicklingError:
            raise RuntimeError(
                f"refused to load {self.where}: its pickled weights hold objects other than tensors, which could "
                f"run code when unpickled; geomsweep loads plain tensors only. Use a checkpoint in safetensors format"
            ) from None
        except (OSError, ValueError, SafetensorError) as err:
            hint = (
                "the files there are damaged or incomplete: copy the checkpoint again"
                if local
                else "without hub access, download it elsewhere and point model.source=local model.path=<dir> at "
                "the copy; a damaged download is removed with: huggingface-cli delete-cache"
            )
            raise RuntimeError(f"cannot load {self.where}: {type(err).__name__}: {err}. {hint}") from err
        return (model if device_map is not None else model.to(device)), tokenizer

    @property
    def where(self) -> str:
        """``model '<dir or hub id>' revision '<name>'``, for messages."""
        return f"model {self.location!r} revision {self.revision!r}"


def readable_json(path: Path) -> dict:
    """A JSON file's object, or {} when it is missing or unreadable (loading it reports that with the fix)."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


class RemoteCodeRefused(RuntimeError):
    """A model folder that needs its own Python code to load, which geomsweep runs only when asked."""

    @classmethod
    def at(cls, where: str) -> RemoteCodeRefused:
        return cls(
            f"{where} ships Python code of its own (config.json's auto_map), which geomsweep never runs unless "
            f"model.trust_remote_code=true says so; check the code first"
        )


@contextmanager
def no_remote_code(where: str) -> Iterator[None]:
    """Inside the block, transformers' refusal of a folder's own code (``auto_map``; ``trust_remote_code=False`` is
    passed on every call, so nothing asks on the terminal) becomes one line naming the key that allows it."""
    try:
        yield
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise RemoteCodeRefused.at(where) from None


def loaded(
    checkpoints: list[Checkpoint],
    device: str,
    dtype: str,
    prefetch: bool = True,
    device_map=None,
    trust_remote_code: bool = False,
    before: Callable[[Checkpoint], None] | None = None,
):
    """Yield (checkpoint, model, tokenizer) in order. With ``prefetch`` the next checkpoint is loaded in a
    background thread while the caller measures the current one (two models in memory at a time). ``before`` runs
    ahead of each load (a disk check before a download)."""

    def fetch(checkpoint: Checkpoint):
        if before is not None:
            before(checkpoint)
        return checkpoint.load(device, dtype, device_map, trust_remote_code)

    if not prefetch:
        for checkpoint in checkpoints:
            yield (checkpoint, *fetch(checkpoint))
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="geomsweep-prefetch") as pool:

        def load(i: int):
            if i >= len(checkpoints):
                return None
            return pool.submit(fetch, checkpoints[i])

        pending = load(0)
        for i, checkpoint in enumerate(checkpoints):
            model, tokenizer = pending.result()
            pending = load(i + 1)
            yield checkpoint, model, tokenizer
            del model, tokenizer
