"""Revision names and which of them a job measures.

A model is a set of *revisions* named like Pythia's (``step{N}``) or OLMo's (``step{N}-tokens{M}B``,
``stage1-step{N}-tokens{M}B``): on the hub, or in a local directory with one sub-directory per revision (a directory
that is itself a model is one revision, ``final``). ``checkpoint.select`` then picks from them, and
``checkpoint.shard`` splits the pick between jobs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from huggingface_hub import list_repo_refs

from geomsweep.config.choices import Selection
from geomsweep.sources.checkpoints import Checkpoint

REVISION_RE = re.compile(r"^(?:(?P<stage>stage\d+)-)?step(?P<step>\d+)(?:-tokens(?P<tokens>\d+)B)?$")


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


def select(
    available: list[Checkpoint],
    selection: str,
    steps: list[int] | None = None,
    num: int | None = None,
    every: int | None = None,
) -> list[Checkpoint]:
    """Apply ``checkpoint.select``: every revision, the last one, an explicit list of steps, ``num`` checkpoints
    log-spaced in step (the phases are log-step phenomena), or every step divisible by ``every`` plus the last.
    ``num`` and ``every`` were checked with the config (config/measurement.py)."""
    if selection == "all":
        return available
    if selection == "final":
        return available[-1:]
    if selection == "steps":
        by_step = {c.step: c for c in available}
        missing = [s for s in steps or [] if s not in by_step]
        if missing or not steps:
            raise ValueError(
                f"checkpoint.steps {list(steps or [])} has steps {missing or '[]'} that are not "
                f"available; valid steps: {sorted(by_step)}"
            )
        return [by_step[s] for s in steps]
    if selection == "log":
        return log_spaced(available, num)
    if selection == "every":
        chosen = [c for c in available if c.step % every == 0]
        return chosen + available[-1:] if available and available[-1] not in chosen else chosen
    raise ValueError(f"unknown checkpoint.select {selection!r}; valid: {', '.join(Selection)}")


def log_spaced(available: list[Checkpoint], num: int) -> list[Checkpoint]:
    """The checkpoints nearest to ``num`` points evenly spaced in log(1 + step) from the first to the last
    (fewer when the available steps are sparser than that)."""
    if not available:
        return []
    log_steps = torch.tensor([c.step for c in available], dtype=torch.float64).log1p()
    targets = torch.linspace(float(log_steps[0]), float(log_steps[-1]), num, dtype=torch.float64)
    nearest = (log_steps[None, :] - targets[:, None]).abs().argmin(dim=1)
    return [available[i] for i in sorted(set(nearest.tolist()))]


def shard(selected: list[Checkpoint], index: int, count: int) -> list[Checkpoint]:
    """Shard ``index`` of ``count``: every count-th checkpoint from ``index`` on, so each job gets early and late
    (cheap and dear) checkpoints alike (the schema has checked ``index`` and ``count``). Shards of one trace are
    rolled up into one trace run (results/rollup.py)."""
    return selected[index::count]


def pythia_revisions() -> list[str]:
    """Pythia's 154 checkpoints: step0, log-spaced step1 ... step512, then every 1000 steps to step143000."""
    return ["step0", *(f"step{2**i}" for i in range(10)), *(f"step{k * 1000}" for k in range(1, 144))]


def hub_revisions(model_cfg, cache_dir: str) -> list[str]:
    """A hub model's revision names: ``pythia`` (the Pythia list), ``refs`` (the repository's branches,
    listed once and cached so a second resolution works offline), or an explicit list."""
    spec = model_cfg.revisions or ["main"]
    if spec == "pythia":
        return pythia_revisions()
    if spec == "refs":
        return cached_refs(model_cfg.hub_id, cache_dir)
    if isinstance(spec, str):
        raise ValueError(f"model.revisions={spec!r}: use pythia, refs or a list of revision names")
    return list(spec)


def refs_cache(hub_id: str, cache_dir: str) -> Path:
    return Path(cache_dir).expanduser() / "hub-refs" / (hub_id.replace("/", "__") + ".json")


def cached_refs(hub_id: str, cache_dir: str) -> list[str]:
    """Branches of ``hub_id`` named like checkpoints, by step: from the cache, else listed on the hub."""
    path = refs_cache(hub_id, cache_dir)
    if not path.exists():
        try:
            branches = [b.name for b in list_repo_refs(hub_id).branches]
        except Exception as err:
            raise RuntimeError(
                f"cannot list the revisions of {hub_id!r} ({type(err).__name__}): the hub is not "
                f"reachable and they are not cached in {path}. Give them explicitly with "
                f"model.revisions=[...], or use a local copy: model=local model.path=<dir>"
            ) from None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(branches))
    names = [n for n in json.loads(path.read_text()) if REVISION_RE.match(n)]
    return sorted(names, key=lambda n: (parse_revision(n)[0], n))
