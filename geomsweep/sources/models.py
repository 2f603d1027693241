"""Where a model comes from (``model.source``): one ``ModelSource`` per source, the one place that knows each.

Every question a job, a plan or a memory estimate asks about a model goes through it: which checkpoints it offers
(``available``; ``offered`` for a plan, with nothing fetched or trained), its transformers config without loading
weights (``config``), what must happen before its checkpoints can load (``prepare``: the toy is pretrained, a model
saved in MLflow downloaded), and whether its checkpoints are downloaded (``downloads``: the hub cache applies).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import urllib.request
from pathlib import Path

import mlflow
from huggingface_hub import constants, try_to_load_from_cache
from mlflow.exceptions import MlflowException
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig

from geomsweep.config.choices import Source
from geomsweep.config.toy import ToyConfig
from geomsweep.sources import gguf
from geomsweep.sources.checkpoints import Checkpoint, no_remote_code
from geomsweep.sources.revisions import hub_revisions, local_revisions, parse_revision, select, shard
from geomsweep.sources.toy.pretrain import ensure_pretrained
from geomsweep.sources.toy.pretrain import model_config as toy_model_config


class ModelSource:
    """A local folder of revisions (or one model): what ``local``, and the folder-backed sources below, share."""

    downloads = False  # checkpoints fetched from the hub as they are measured (disk, eviction)
    toy_world = False  # the model speaks the toy language (its tasks and n-gram model apply)

    def folder(self, model_cfg, cache_dir: str) -> Path:
        return Path(str(model_cfg.path)).expanduser()

    def available(self, model_cfg, cache_dir: str, reachable: bool = True) -> list[Checkpoint]:
        """Every checkpoint the model offers. Never trains or downloads: ``prepare`` does that, as a job's step.
        ``reachable=False`` lists a hub model's revisions without checking the hub or the cache can serve them."""
        if model_cfg.stages:
            return stage_checkpoints(model_cfg)
        return local_revisions(self.folder(model_cfg, cache_dir), model_cfg.tokens_per_step)

    def offered(self, model_cfg, cache_dir: str) -> list[Checkpoint]:
        """The checkpoints, known without the hub, a download or pretraining (a plan)."""
        return self.available(model_cfg, cache_dir, reachable=False)

    def prepare(self, model_cfg, cache_dir: str, progress: bool = True) -> None:
        """Make the checkpoints loadable (nothing to do for a folder that is already there)."""

    def config(self, model_cfg, cache_dir: str):
        """The model's transformers config read without weights, or None when none is on this machine. Code
        shipped in a model folder never runs unless ``model.trust_remote_code=true`` says so."""
        directory = self.folder(model_cfg, cache_dir)
        if directory is None or not directory.is_dir():
            return None
        found = sorted(directory.glob("config.json")) or sorted(directory.glob("*/config.json"))
        if not found:
            return None
        where = f"model.path={found[-1].parent}" if model_cfg.source == Source.local else str(found[-1].parent)
        with no_remote_code(where):
            return AutoConfig.from_pretrained(found[-1].parent, trust_remote_code=bool(model_cfg.trust_remote_code))


class ToySource(ModelSource):
    """The embedded toy world, pretrained on first use and cached by its config's key."""

    toy_world = True

    def folder(self, model_cfg, cache_dir: str) -> Path:
        return ToyConfig.from_cfg(model_cfg.toy).directory(cache_dir)

    def available(self, model_cfg, cache_dir: str, reachable: bool = True) -> list[Checkpoint]:
        toy = ToyConfig.from_cfg(model_cfg.toy)
        if not toy.is_pretrained(cache_dir):
            raise FileNotFoundError(
                f"the toy model {toy.key()} is not pretrained in {cache_dir}: a geomsweep job "
                f"pretrains it first (toy.pretrain.ensure_pretrained)"
            )
        return local_revisions(toy.directory(cache_dir), toy.tokens_per_step)

    def offered(self, model_cfg, cache_dir: str) -> list[Checkpoint]:
        toy = ToyConfig.from_cfg(model_cfg.toy)
        if toy.is_pretrained(cache_dir):
            return self.available(model_cfg, cache_dir)
        return [Checkpoint(f"step{s}", s, s * toy.tokens_per_step, "") for s in toy.checkpoint_steps()]

    def prepare(self, model_cfg, cache_dir: str, progress: bool = True) -> None:
        ensure_pretrained(ToyConfig.from_cfg(model_cfg.toy), cache_dir, progress)

    def config(self, model_cfg, cache_dir: str):
        toy = ToyConfig.from_cfg(model_cfg.toy)
        return toy_model_config(toy, toy.vocab_size)


class GGUFSource(ModelSource):
    """One released model as a GGUF file inside an installed package, converted once into the cache."""

    def folder(self, model_cfg, cache_dir: str) -> Path:
        return gguf.converted_dir(model_cfg, cache_dir)

    def available(self, model_cfg, cache_dir: str, reachable: bool = True) -> list[Checkpoint]:
        return local_revisions(gguf.convert_gguf(model_cfg, cache_dir), model_cfg.tokens_per_step)

    def offered(self, model_cfg, cache_dir: str) -> list[Checkpoint]:
        return [Checkpoint("final", 0, None, "")]  # one released model (converted on first use)

    def config(self, model_cfg, cache_dir: str):
        trust = bool(model_cfg.trust_remote_code)
        converted = self.folder(model_cfg, cache_dir)
        if (converted / "config.json").exists():
            return AutoConfig.from_pretrained(converted, trust_remote_code=trust)
        return copy.deepcopy(gguf.gguf_config(gguf.gguf_path(model_cfg.package, model_cfg.gguf_file), trust))


class MLflowSource(ModelSource):
    """A model an earlier post-training run saved (``runs:/<id>/model``), downloaded into the cache once."""

    def folder(self, model_cfg, cache_dir: str) -> Path:
        return mlflow_model_dir(model_cfg.uri, cache_dir)

    def available(self, model_cfg, cache_dir: str, reachable: bool = True) -> list[Checkpoint]:
        directory = self.folder(model_cfg, cache_dir)
        if not directory.is_dir():
            raise FileNotFoundError(
                f"model.uri={model_cfg.uri} is not downloaded to {directory}: a geomsweep job downloads it first"
            )
        return local_revisions(directory, model_cfg.tokens_per_step)

    def prepare(self, model_cfg, cache_dir: str, progress: bool = True) -> None:
        directory = self.folder(model_cfg, cache_dir)
        if directory.is_dir() and not intact_model_dir(directory):
            print(f"geomsweep: the cached copy {directory} of model.uri={model_cfg.uri} is damaged: fetched again")
            shutil.rmtree(directory)
        if not directory.is_dir():
            download_model(model_cfg.uri, directory)


class HubSource(ModelSource):
    """A hub model's revisions (or a pipeline's stages, one repository each), fetched through the HF cache."""

    downloads = True

    def folder(self, model_cfg, cache_dir: str) -> Path | None:
        if model_cfg.stages:
            return None
        cached = try_to_load_from_cache(model_cfg.hub_id, "config.json")
        return Path(cached).parent if isinstance(cached, str) else None

    def available(self, model_cfg, cache_dir: str, reachable: bool = True) -> list[Checkpoint]:
        if model_cfg.stages:
            return stage_checkpoints(model_cfg)
        names = hub_revisions(model_cfg, cache_dir)
        if reachable:
            require_hub_or_cache(model_cfg, names[-1])
        found = []
        for name in names:
            step, tokens = parse_revision(name) if name != "main" else (0, None)
            if tokens is None and model_cfg.tokens_per_step:
                tokens = step * model_cfg.tokens_per_step
            found.append(Checkpoint(name, step, tokens, model_cfg.hub_id, hub_revision=name))
        return sorted(found, key=lambda c: c.step)


SOURCES: dict[Source, ModelSource] = {
    Source.toy: ToySource(),
    Source.local: ModelSource(),
    Source.gguf: GGUFSource(),
    Source.mlflow: MLflowSource(),
    Source.hub: HubSource(),
}


def model_source(model_cfg) -> ModelSource:
    """The ``ModelSource`` of ``model.source``."""
    try:
        return SOURCES[Source(model_cfg.source)]
    except ValueError:
        raise ValueError(f"unknown model.source {model_cfg.source!r}; valid: {', '.join(Source)}") from None


def resolve(model_cfg, checkpoint_cfg, cache_dir: str, offered: list[Checkpoint] | None = None) -> list[Checkpoint]:
    """The checkpoints one job measures: what the model offers (``offered``, else ``available``),
    ``checkpoint.select``-ed, then sharded. The one resolution traces, post-training and plans share."""
    selected = select(
        model_source(model_cfg).available(model_cfg, cache_dir) if offered is None else offered,
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
    """Every checkpoint the model config offers (``ModelSource.available`` of its source)."""
    return model_source(model_cfg).available(model_cfg, cache_dir, reachable)


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
        if model_cfg.source == Source.hub:
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
    if model_cfg.source == Source.hub:
        for checkpoint in found:
            require_hub_or_cache(model_cfg, "main", hub_id=checkpoint.location)
    return found


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
