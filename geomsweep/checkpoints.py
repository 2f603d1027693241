"""Which checkpoints a job measures, and how each one is loaded.

A model is a set of *revisions* named like Pythia's (``step{N}``) or OLMo's (``step{N}-tokens{M}B``,
``stage1-step{N}-tokens{M}B``). They live either on the hub (``model.source=hub``), in a local directory with one
sub-directory per revision (``model.source=local``, also how the embedded toy model is cached), or a local
directory that is a single model (its one revision is called ``final``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REVISION_RE = re.compile(r"^(?:(?P<stage>stage\d+)-)?step(?P<step>\d+)(?:-tokens(?P<tokens>\d+)B)?$")
SELECTIONS = ("all", "final", "steps")
SOURCES = ("toy", "local", "hub")


@dataclass(frozen=True)
class Checkpoint:
    revision: str  # the revision name, "final" for a single-model directory
    step: int  # pretraining step (the MLflow step of its metrics)
    tokens: int | None  # tokens seen at this step, when known
    location: str  # a local directory or a hub id
    hub_revision: str | None = None  # the git revision to ask the hub for

    def load(self, device: str = "cpu", dtype: str = "float32"):
        """(model, tokenizer) with transformers' Auto classes; fails fast when a hub model is not cached."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one bar per weight file per checkpoint is noise in a trace
        kwargs = {"revision": self.hub_revision} if self.hub_revision else {}
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.location, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(self.location, dtype=getattr(torch, dtype), **kwargs)
        except OSError as err:
            raise RuntimeError(
                f"cannot load model {self.location!r} revision {self.revision!r}: {err}. Without hub access, "
                f"download it elsewhere and point model.source=local model.path=<dir> at the copy"
            ) from err
        return model.to(device), tokenizer


def parse_revision(name: str) -> tuple[int, int | None]:
    """``step143000`` -> (143000, None); ``stage1-step5000-tokens21B`` -> (5000, 21e9)."""
    match = REVISION_RE.match(name)
    if match is None:
        raise ValueError(f"cannot read a step from revision {name!r}; expected step<N>[-tokens<M>B]")
    tokens = match["tokens"]
    return int(match["step"]), (int(tokens) * 10**9 if tokens else None)


def local_revisions(root: Path, tokens_per_step: int | None) -> list[Checkpoint]:
    """Every revision sub-directory of a local mirror (or the directory itself as ``final``), by step."""
    if not root.is_dir():
        raise FileNotFoundError(f"model.path {str(root)!r} does not exist or is not a directory")
    if (root / "config.json").exists():
        return [Checkpoint("final", 0, None, str(root))]
    found = []
    for sub in root.iterdir():
        if sub.is_dir() and REVISION_RE.match(sub.name) and (sub / "config.json").exists():
            step, tokens = parse_revision(sub.name)
            if tokens is None and tokens_per_step:
                tokens = step * tokens_per_step
            found.append(Checkpoint(sub.name, step, tokens, str(sub)))
    if not found:
        raise FileNotFoundError(
            f"model.path {str(root)!r} holds neither a model (config.json) nor revision directories like step1000/"
        )
    return sorted(found, key=lambda c: c.step)


def select(available: list[Checkpoint], selection: str, steps: list[int] | None = None) -> list[Checkpoint]:
    """Apply ``checkpoint.select``: every revision, the last one, or an explicit list of steps."""
    if selection == "all":
        return available
    if selection == "final":
        return available[-1:]
    if selection == "steps":
        by_step = {c.step: c for c in available}
        missing = [s for s in steps or [] if s not in by_step]
        if missing or not steps:
            raise ValueError(f"checkpoint.steps {list(steps or [])} has steps {missing or '[]'} that are not "
                             f"available; valid steps: {sorted(by_step)}")
        return [by_step[s] for s in steps]
    raise ValueError(f"unknown checkpoint.select {selection!r}; valid: {', '.join(SELECTIONS)}")


def available(model_cfg, cache_dir: str, progress: bool = True) -> list[Checkpoint]:
    """Every checkpoint the model config can offer (the toy model is pretrained on first use)."""
    source = model_cfg.source
    tokens_per_step = model_cfg.get("tokens_per_step")
    if source == "toy":
        from geomsweep.toy.pretrain import ToyConfig, ensure_pretrained

        toy = ToyConfig.from_cfg(model_cfg.toy)
        return local_revisions(ensure_pretrained(toy, cache_dir, progress), toy.tokens_per_step)
    if source == "local":
        return local_revisions(Path(str(model_cfg.path)).expanduser(), tokens_per_step)
    if source == "hub":
        found = []
        for name in model_cfg.get("revisions") or ["main"]:
            step, tokens = parse_revision(name) if name != "main" else (0, None)
            if tokens is None and tokens_per_step:
                tokens = step * tokens_per_step
            found.append(Checkpoint(name, step, tokens, model_cfg.hub_id, hub_revision=name))
        return sorted(found, key=lambda c: c.step)
    raise ValueError(f"unknown model.source {source!r}; valid: {', '.join(SOURCES)}")
