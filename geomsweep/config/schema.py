"""The typed config: one dataclass per group, registered in Hydra's ConfigStore as the schema under the YAML presets.

Types and choices are checked by OmegaConf when Hydra composes (``probe.n_sequences=abc``, ``probe.norm=mid``);
ranges and relations between fields by ``__post_init__`` and ``check`` (``probe.batch_size=0``), and the fields
of ``method.args`` against the TRL config class they are passed to. All of it runs before any model loads and
before any MLflow run opens, and each failure is one line naming the key, the value and what is valid.
Each default lives here once; the YAML presets under ``conf/`` set what differs, with comments.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Union

from hydra import compose
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf

from geomsweep.config.choices import (
    VLLM_ENGINES,
    Backend,
    DataSource,
    Extractor,
    SampleAt,
    Selection,
    Source,
    Split,
    TaskSchema,
    TaskSource,
)
from geomsweep.config.overrides import without
from geomsweep.config.toy import ToyConfig
from geomsweep.core.definitions import (
    ALL_LAYERS,
    METRICS,
    PAPER_METRICS,
    REFERENCE_FIT,
    REFERENCE_MAX_EIGS,
    Dtype,
    JackknifeGroups,
    Norm,
    PaddingSide,
    PhaseRule,
    RankMeVariant,
)

MIN_TOY_DOCS = 2  # the toy tasks split their held-out documents into two halves


class ConfigError(ValueError):
    """A config value that cannot work: the message names the key, the value and what is valid."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


class Adapter(StrEnum):
    lora = "lora"


# --- groups --------------------------------------------------------------------------------------------------


@dataclass
class StageConfig:
    """One released stage of a post-training pipeline (base, sft, dpo, rlvr, ...)."""

    name: str = MISSING
    hub_id: str | None = None  # source=hub; a local mirror holds one sub-directory per stage, named after it


@dataclass
class ModelConfig:
    name: str = MISSING
    source: Source = MISSING
    hub_id: str | None = None  # source=hub
    revisions: Any = None  # source=hub: pythia | refs | a list of revision names
    path: str | None = None  # source=local: a save_pretrained directory, or one sub-directory per revision
    package: str | None = None  # source=gguf: the Python package shipping the file
    gguf_file: str | None = None
    uri: str | None = None  # source=mlflow: runs:/<run id>/model
    toy: ToyConfig | None = None  # source=toy
    stages: list[StageConfig] | None = None  # a pipeline's stages, traced in order as the checkpoints of one trace
    width: int | None = None
    depth: int | None = None
    tokens_per_step: int | None = None
    dtype: Dtype | None = None  # the dtype the model was trained in (dtype=auto uses it on a GPU)
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        needs = {
            Source.hub: "hub_id",
            Source.local: "path",
            Source.gguf: "gguf_file",
            Source.toy: "toy",
            Source.mlflow: "uri",
        }
        key = "stages" if self.stages and self.source == Source.hub else needs[self.source]
        _require(getattr(self, key) is not None, f"model.source={self.source} needs model.{key}")
        if self.stages:
            _require(
                self.source in (Source.hub, Source.local),
                f"model.stages are read from the hub or a local mirror, not model.source={self.source}",
            )
            missing = [s.name for s in self.stages if self.source == Source.hub and not s.hub_id]
            _require(not missing, f"model.stages {missing} have no hub_id (needed with model.source=hub)")
        if self.source == Source.hub and isinstance(self.revisions, str):
            _require(
                self.revisions in ("pythia", "refs"),
                f"model.revisions={self.revisions!r}; valid: pythia, refs or a list of revision names",
            )


@dataclass
class CheckpointConfig:
    select: Selection = MISSING
    steps: list[int] | None = None  # select=steps
    step: int | None = None  # checkpoint=step fills steps with this one step
    num: int | None = None  # select=log
    every: int | None = None  # select=every
    shard: int = 0  # with num_shards: this job measures every num_shards-th checkpoint from here
    num_shards: int = 1

    def __post_init__(self) -> None:
        if self.select == Selection.steps:
            _require(
                bool(self.steps),
                f"checkpoint.steps={self.steps} must list at least one step for checkpoint.select=steps",
            )
            self.steps = list(dict.fromkeys(self.steps))  # a step named twice is measured once
        if self.select == Selection.log:
            _require(
                self.num is not None and self.num >= 2,
                f"checkpoint.num={self.num} must be an integer >= 2 for checkpoint.select=log",
            )
        if self.select == Selection.every:
            _require(
                self.every is not None and self.every >= 1,
                f"checkpoint.every={self.every} must be a positive integer for checkpoint.select=every",
            )
        _require(self.num_shards >= 1, f"checkpoint.num_shards={self.num_shards} must be >= 1")
        _require(
            0 <= self.shard < self.num_shards,
            f"checkpoint.shard={self.shard} must lie in 0..checkpoint.num_shards-1 (num_shards={self.num_shards})",
        )


@dataclass
class DataConfig:
    source: DataSource = DataSource.toy
    path: str | None = None  # source=files
    name: str | None = None  # source=hub
    config: str | None = None
    split: str = "train"
    text_field: str = "text"
    # a column naming the document each text was cut from (chunks of long documents): block jackknife groups keep
    # each document's texts together; None: the texts are independent
    document_field: str | None = None
    min_chars: int = 1
    min_tokens: int = 0  # keep texts with more than this many tokens (the measured model's tokenizer); 0: all

    def __post_init__(self) -> None:
        _require(self.min_tokens >= 0, f"data.min_tokens={self.min_tokens} must be >= 0")
        _require(
            self.document_field is None or self.source in (DataSource.files, DataSource.hub),
            f"data.document_field={self.document_field!r} names a column, but data.source={self.source} has none "
            f"(its texts are whole documents); valid: null, or data.source=files|hub",
        )
        if self.source == DataSource.files:
            _require(self.path is not None, "data.source=files needs data.path")
        if self.source == DataSource.hub:
            _require(self.name is not None, "data.source=hub needs data.name")
        _require(self.min_chars >= 1, f"data.min_chars={self.min_chars} must be >= 1")


@dataclass
class ProbeConfig:
    """How representations are taken and measured; runs are comparable only when these match."""

    n_sequences: int = 1024
    max_length: int = 64
    batch_size: int = 64
    padding_side: PaddingSide = PaddingSide.right
    # indices into hidden_states, the first being the headline; or "all": every layer (embeddings included) in the
    # same passes, the final one the headline
    layers: Any = field(default_factory=lambda: [-1])
    norm: Norm = Norm.post
    rankme: RankMeVariant = RankMeVariant.eigen
    fit_start: int = REFERENCE_FIT[0]  # alpha-ReQ fit over 1-based ranks fit_start..fit_end, weights 1/k
    fit_end: int = REFERENCE_FIT[1]
    max_eigs: int | None = REFERENCE_MAX_EIGS  # keep the largest min(max_eigs, N, D), as the reference; None: all
    loss: bool = True  # also log eval/probe_loss from the same forward passes
    jackknife: int = 10  # K disjoint groups -> geometry/rankme_se, geometry/alpha_req_se (0: no error bars)
    jackknife_groups: JackknifeGroups = JackknifeGroups.block  # contiguous runs of the probe order, or i mod K
    metrics: list[str] = field(default_factory=lambda: list(PAPER_METRICS))  # the suite's measures (core/suite.py)
    reservoir: int = 2048  # representations kept (seeded) for TwoNN, when probe.metrics names it
    weights: bool = False  # also the power-law spectra of each block's weight matrices (data-free; core/weights.py)

    def __post_init__(self) -> None:
        for name in ("n_sequences", "max_length", "batch_size"):
            _require(getattr(self, name) >= 1, f"probe.{name}={getattr(self, name)} must be >= 1")
        _require(
            self.layers == ALL_LAYERS
            or (
                not isinstance(self.layers, str)
                and bool(self.layers)
                and all(isinstance(i, int) and not isinstance(i, bool) for i in self.layers)
            ),
            f"probe.layers={self.layers!r}; valid: a non-empty list of hidden_states indices (-1: the final one) "
            f"or {ALL_LAYERS!r}",
        )
        unknown = [name for name in self.metrics if name not in METRICS]
        _require(not unknown, f"probe.metrics names {unknown}; valid: {', '.join(METRICS)}")
        _require(self.reservoir >= 3, f"probe.reservoir={self.reservoir} must be >= 3")
        _require(
            1 <= self.fit_start < self.fit_end,
            f"probe.fit_start={self.fit_start}, probe.fit_end={self.fit_end}: the alpha-ReQ fit range must "
            f"satisfy 1 <= fit_start < fit_end",
        )
        _require(
            self.max_eigs is None or self.max_eigs >= self.fit_end,
            f"probe.max_eigs={self.max_eigs} must be null or >= probe.fit_end={self.fit_end}",
        )
        _require(
            self.n_sequences > self.fit_end,
            f"probe.n_sequences={self.n_sequences} is too few for the alpha-ReQ fit range "
            f"{self.fit_start}..{self.fit_end}: it needs at least {self.fit_end + 1} sequences",
        )
        _require(
            self.jackknife == 0 or 2 <= self.jackknife <= self.n_sequences,
            f"probe.jackknife={self.jackknife}; valid: 0 (no error bars) or 2..probe.n_sequences groups",
        )
        if self.jackknife:
            rest = self.n_sequences - -(-self.n_sequences // self.jackknife)  # the fewest left with a group out
            _require(
                rest > self.fit_end,
                f"probe.jackknife={self.jackknife}: leaving a group out keeps {rest} of probe.n_sequences="
                f"{self.n_sequences}, too few for the alpha-ReQ fit range ..{self.fit_end}; use fewer groups or more "
                f"sequences",
            )


@dataclass
class EvalConfig:
    toy_n_docs: int = 300  # held-out toy documents for the toy tasks and n-gram alignment (0: off)
    ngram_order: int = 3  # Kneser-Ney order for behavior/ngram_alignment (0: off)
    ablation_k: list[int] = field(default_factory=lambda: [10, 50])  # spectral-tail ablation K ([]: off)

    def __post_init__(self) -> None:
        _require(
            self.toy_n_docs == 0 or self.toy_n_docs >= MIN_TOY_DOCS,
            f"eval.toy_n_docs={self.toy_n_docs}; valid: 0 (off) or at least {MIN_TOY_DOCS} held-out documents",
        )
        _require(self.ngram_order >= 0, f"eval.ngram_order={self.ngram_order} must be >= 0")
        _require(all(k >= 1 for k in self.ablation_k), f"eval.ablation_k={self.ablation_k}: each K must be >= 1")


@dataclass
class LoraSettings:
    """peft's LoRA: low-rank adapters on the named linear layers, the rest of the model frozen."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = "all-linear"  # peft's every linear layer but the output head, or a list of names

    def __post_init__(self) -> None:
        _require(self.r >= 1, f"method.lora.r={self.r} must be >= 1")
        _require(self.alpha > 0, f"method.lora.alpha={self.alpha} must be > 0")
        _require(0 <= self.dropout < 1, f"method.lora.dropout={self.dropout} must lie in [0, 1)")


@dataclass
class MethodConfig:
    name: str = "none"
    trainer: str | None = None  # the TRL trainer class, e.g. trl.SFTTrainer
    trainer_config: str | None = None  # its config class, e.g. trl.SFTConfig: method.args are its fields
    reward: str | None = None  # a reward function factory (RLVR), called with task.extractor
    runner: str | None = None  # the function that runs a post-training job (geomsweep.post_training.run.post_train)
    geometry_every: int = 10  # measure the probe set every N optimizer steps (and at step 0 and the end)
    args: dict[str, Any] = field(default_factory=dict)
    peft: Adapter | None = None  # lora: train adapters (method.lora) instead of every weight
    lora: LoraSettings = field(default_factory=LoraSettings)
    save: bool = False  # keep the post-trained model as the run's artifact "model" (model=mlflow reads it back)
    stages: list[str] | None = None  # method=pipeline: the methods run in turn, each from the last one's model
    processes: int = 1  # train in N processes (torchrun: DDP, or FSDP / ZeRO-3 through args; parallel=<preset>)

    def __post_init__(self) -> None:
        _require(self.geometry_every >= 1, f"method.geometry_every={self.geometry_every} must be >= 1")
        steps = self.args.get("max_steps")
        _require(
            steps is None or isinstance(steps, bool) or not isinstance(steps, int) or steps >= 1 or steps == -1,
            f"method.args.max_steps={steps} trains nothing; valid: a positive number of steps, or -1 "
            f"(num_train_epochs)",
        )
        _require(self.processes >= 1, f"method.processes={self.processes} must be >= 1")
        _require(
            self.processes == 1 or self.stages is None,
            f"method.processes={self.processes} with method=pipeline: a pipeline trains in one process; "
            f"use method.processes=1, or run the stages as separate jobs through model=mlflow",
        )
        if self.stages is not None:
            bad = [s for s in self.stages if s in ("none", "pipeline")]
            _require(
                bool(self.stages) and not bad and self.runner is not None,
                f"method.stages={list(self.stages)}: a pipeline runs one or more post-training methods "
                f"(e.g. [sft, dpo, rlvr]), not none or pipeline",
            )
        elif self.name != "none":
            _require(
                None not in (self.trainer, self.trainer_config, self.runner),
                f"unknown method {self.name!r}; valid: none, sft, dpo, rlvr (another TRL trainer needs "
                f"method.trainer, method.trainer_config and method.runner)",
            )


@dataclass
class TaskConfig:
    source: TaskSource = TaskSource.arithmetic
    extractor: Extractor = Extractor.first_number  # how an answer is read from a completion
    max_new_tokens: int = 4  # greedy tokens generated for eval/{id,ood}_acc
    id_fraction: float = 0.3  # share held out for in-distribution evaluation
    max_operand: int = 9  # source=arithmetic
    ood_max_operand: int = 19
    name: str | None = None  # source=hub
    config: str | None = None
    split: str = "train"
    path: str | None = None  # source=files
    schema: str | None = None  # files/hub: gsm8k | hh | ultrafeedback
    limit: int | None = None
    ood: dict[str, Any] | None = None  # a second dataset, given the same way

    def __post_init__(self) -> None:
        _require(0.0 < self.id_fraction < 1.0, f"task.id_fraction={self.id_fraction} must lie in (0, 1)")
        _require(self.max_new_tokens >= 1, f"task.max_new_tokens={self.max_new_tokens} must be >= 1")
        _require(self.limit is None or self.limit >= 1, f"task.limit={self.limit}; valid: null (all rows) or >= 1")
        if self.source == TaskSource.files:
            _require(self.path is not None, "task.source=files needs task.path (a JSON Lines or CSV file)")
        if self.source == TaskSource.hub:
            _require(self.name is not None, "task.source=hub needs task.name (a datasets name)")
        if self.source == TaskSource.arithmetic:
            _require(
                0 <= self.max_operand < self.ood_max_operand,
                f"task.max_operand={self.max_operand} must lie in 0..task.ood_max_operand-1 ({self.ood_max_operand})",
            )
        else:
            _require(
                self.schema in TaskSchema.__members__,
                f"task.schema={self.schema!r}; valid: {', '.join(TaskSchema)}",
            )


@dataclass
class SamplerConfig:
    name: Backend = Backend.hf
    n: int = 16  # samples per problem (0: no sampling)
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None  # None: the task's max_new_tokens
    ks: list[int] | None = None  # pass@k at these k; None: 1, 2, 4, ... and n
    splits: list[str] = field(default_factory=lambda: ["id", "ood"])
    at: SampleAt = SampleAt.last
    batch_size: int = 8  # prompts per generate call (hf)
    seed: int = 0
    engine: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(VLLM_ENGINES))  # sampler=vllm only

    def __post_init__(self) -> None:
        _require(self.n >= 0, f"sampler.n={self.n} must be >= 0 (0: no sampling)")
        _require(self.batch_size >= 1, f"sampler.batch_size={self.batch_size} must be >= 1")
        _require(
            0 < self.temperature < math.inf,
            f"sampler.temperature={self.temperature} must be a finite number > 0 (pass@k needs random "
            f"samples; greedy accuracy is eval/*_acc)",
        )
        _require(0 < self.top_p <= 1, f"sampler.top_p={self.top_p} must lie in (0, 1]")
        _require(
            self.max_tokens is None or self.max_tokens >= 1,
            f"sampler.max_tokens={self.max_tokens} must be null or >= 1",
        )
        _require(
            bool(self.splits) or not self.n,
            f"sampler.splits={list(self.splits)} samples nothing; valid: one or more of {', '.join(Split)}, or "
            f"sampler.n=0 (no sampling)",
        )
        bad = [s for s in self.splits if s not in Split.__members__]
        _require(not bad, f"sampler.splits has {bad}; valid: {', '.join(Split)}")
        bad = [p for p in self.engine if p not in VLLM_ENGINES]
        _require(not bad, f"sampler.engine has {bad}; valid: the platforms vLLM runs on, {', '.join(VLLM_ENGINES)}")
        _require(
            self.ks is None or bool(self.ks), "sampler.ks=[] names no k; valid: null (1, 2, 4, ... and n) or a list"
        )
        if self.n and self.ks is not None:
            bad = [k for k in self.ks if not 1 <= k <= self.n]
            _require(
                not bad,
                f"sampler.ks has {bad}, outside 1..sampler.n={self.n}: pass@k needs at least k samples per problem",
            )


@dataclass
class ServerConfig:
    start: bool = True
    host: str = "127.0.0.1"
    port: int = 5000
    backend_store_uri: str = "sqlite:///mlflow.db"
    artifacts_destination: str = "mlartifacts"


@dataclass
class CacheConfig:
    """The Hugging Face cache during a hub trace (HF_HOME / HF_HUB_CACHE say where it is)."""

    evict: Any = "auto"  # delete a revision once measured, unless cached before the job; auto: on for hub traces
    reserve_gib: float = 2.0  # a download must leave this much disk free, else the job stops before it

    def __post_init__(self) -> None:
        _require(self.evict in (True, False, "auto"), f"cache.evict={self.evict!r}; valid: auto, true, false")
        _require(self.reserve_gib >= 0, f"cache.reserve_gib={self.reserve_gib} must be >= 0")


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "geomsweep"
    force: bool = False  # run cells again even when a FINISHED run of the same config exists
    server: ServerConfig | None = None

    def __post_init__(self) -> None:
        _require(bool(self.experiment.strip()), f"tracking.experiment={self.experiment!r} must name an experiment")
        scheme = self.uri.split("://", 1)[0].split("+", 1)[0] if "://" in self.uri else ""
        _require(
            scheme in TRACKING_SCHEMES,
            f"tracking.uri={self.uri!r}; valid: a URI whose scheme is one of {', '.join(TRACKING_SCHEMES)} (e.g. "
            f"sqlite:///mlflow.db or http://127.0.0.1:5000)",
        )


# MLflow's tracking stores, less the file store it refuses (>= 3.13); a driver may follow: postgresql+psycopg
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


@dataclass
class Config:
    model: ModelConfig = MISSING
    checkpoint: CheckpointConfig = MISSING
    method: MethodConfig = MISSING
    task: TaskConfig = MISSING
    sampler: SamplerConfig = MISSING
    data: DataConfig = MISSING
    probe: ProbeConfig = MISSING
    eval: EvalConfig = MISSING
    tracking: TrackingConfig = MISSING
    phases: PhaseRule = field(default_factory=PhaseRule)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:<n>
    dtype: Dtype = Dtype.float32
    device_map: Any = None  # auto, or a dict: accelerate spreads a model too large for one GPU
    cache_dir: str = MISSING
    progress: bool = True
    prefetch: bool | str = "auto"  # auto: on a GPU only
    plan: bool = False  # print the plan (a trace's cost; post-training's memory) and stop: nothing loads, no run
    tflops: float | None = None  # plan=true: the device's sustained TFLOP/s (None: measured once, cached)
    cache: CacheConfig = field(default_factory=CacheConfig)

    def __post_init__(self) -> None:
        _require(bool(DEVICE_RE.match(self.device)), f"device={self.device!r}; valid: auto, cpu, cuda, cuda:<n>")
        _require(self.tflops is None or self.tflops > 0, f"tflops={self.tflops} must be > 0 (null: measured)")
        _require(self.prefetch in (True, False, "auto"), f"prefetch={self.prefetch!r}; valid: auto, true, false")
        if self.method.name != "none":
            _require(
                self.device_map is None,
                f"device_map={self.device_map} applies to measurement (method=none) "
                f"only; post-training places the model itself (device=...)",
            )
            sharded = sharded_by(self.method.args or {})
            _require(
                not (self.probe.weights and sharded),
                f"probe.weights=true under {sharded}: each process holds a shard of every weight matrix, so its "
                f"spectra would be a shard's; valid: probe.weights=false, or parallel=ddp (whole weights)",
            )


def sharded_by(args) -> str | None:
    """What shards the weights over processes in these trainer arguments (FSDP, DeepSpeed ZeRO-3), if anything."""
    deepspeed = args.get("deepspeed")
    zero = (deepspeed.get("zero_optimization") or {}) if isinstance(deepspeed, Mapping) else {}
    return "FSDP" if args.get("fsdp") else "ZeRO-3" if zero.get("stage") == 3 else None


def register() -> None:
    """The schema of the whole config, as ``schema`` (``conf/config.yaml`` lists it first): every group's YAML
    preset merges onto its typed field."""
    ConfigStore.instance().store(name="schema", node=Config)


def unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys of ``node`` that its schema does not declare (added with ``+``: a typo such as ``+probe.n_sequence``);
    free-form dicts (``method.args``, ``sampler.engine``, ...) may hold any key."""
    kind = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(kind):
        return []
    fields = {f.name for f in dataclasses.fields(kind)}
    found = [f"{prefix}{key}" for key in node if key not in fields]
    for key in sorted(fields & set(node)):
        child = None if OmegaConf.is_missing(node, key) else node[key]
        if isinstance(child, DictConfig):
            found += unknown_keys(child, f"{prefix}{key}.")
    return found


def check(cfg: DictConfig) -> Config:
    """The composed config as typed objects, every ``__post_init__`` run, and ``method.args`` checked against the
    TRL config class; a ConfigError (one line) for the first bad value. Loads no model, opens no run."""
    unknown = unknown_keys(cfg)
    if unknown:
        raise ConfigError(
            f"unknown config keys {unknown} (added with '+'); every key, its type and default: "
            f"python -m geomsweep --cfg job, or geomsweep/config/schema.py"
        )
    try:
        typed = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as err:  # OmegaConf wraps errors raised while building the dataclasses, or a missing value
        cause = err.__cause__ or err.__context__
        if isinstance(cause, ConfigError):
            raise ConfigError(str(cause)) from None
        if getattr(err, "full_key", "").startswith("checkpoint.steps") and cfg.checkpoint.get("step", 0) is None:
            raise ConfigError("checkpoint=step needs checkpoint.step=N, the pretraining step to measure") from None
        raise ConfigError(str(err).splitlines()[0] + _where(err)) from None
    if not isinstance(typed, Config):
        raise ConfigError("the config was not composed with geomsweep's schema (conf/config.yaml lists it first)")
    if typed.method.trainer_config:  # a pipeline's stages are checked when they are composed
        check_fields(importable(typed.method.trainer_config, "method.trainer_config"), typed.method.args, "method.args")
    return typed


def importable(dotted: str, key: str) -> type:
    """The class a dotted path names, or one line naming the key, the value and why it cannot be had."""
    module, _, name = dotted.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name) if module else None
    except ImportError as err:
        raise ConfigError(f"{key}={dotted!r}: cannot import {module!r} ({err}); valid: e.g. trl.SFTConfig") from None
    except AttributeError:
        raise ConfigError(f"{key}={dotted!r}: {module!r} has no {name!r}; valid: e.g. trl.SFTConfig") from None
    _require(isinstance(found, type), f"{key}={dotted!r} names no class; valid: e.g. trl.SFTConfig")
    return found


def stage_configs(settings: Config) -> list[tuple[str, Config]]:
    """``method=pipeline``: each stage's typed config, what ``method=<stage>`` with this job's other overrides
    composes (inside a Hydra app); [] for a single method."""
    if not settings.method.stages:
        return []
    overrides = without(HydraConfig.get().overrides.task, ("method=", "method.stages"))
    return [
        (stage, check(compose(config_name="config", overrides=[*overrides, f"method={stage}"])))
        for stage in settings.method.stages
    ]


def _where(err: Exception) -> str:
    key = getattr(err, "full_key", None)
    return f" (at {key})" if key else ""


def check_fields(config_cls, values: dict[str, Any], prefix: str) -> None:
    """Every key of ``values`` is a field of the dataclass ``config_cls`` and its value fits the field's simple
    type (int, float, bool, str, or Optional of one): a typo or a wrong type stops here, not inside the trainer."""
    hints = typing.get_type_hints(config_cls)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - fields)
    _require(
        not unknown,
        f"{prefix} has {unknown}, not fields of {config_cls.__module__.split('.')[0]}."
        f"{config_cls.__name__} (it has {len(fields)}, e.g. learning_rate, max_steps, "
        f"per_device_train_batch_size)",
    )
    for key, value in values.items():
        expected = _simple_types(hints.get(key))
        if not expected or value is None:
            continue
        if isinstance(value, bool):  # a bool is an int to Python, never to a config field
            ok = bool in expected
        else:  # an int fits a float field
            ok = isinstance(value, expected) or (float in expected and isinstance(value, int))
        _require(
            ok,
            f"{prefix}.{key}={value!r} is not {' or '.join(t.__name__ for t in expected)} "
            f"({config_cls.__name__}.{key})",
        )


def _simple_types(annotation) -> tuple[type, ...]:
    """(int,) for ``int`` or ``Optional[int]``; () when the annotation is anything richer (left to the class)."""
    simple = (bool, int, float, str)
    if annotation in simple:
        return (annotation,)
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if all(a in simple for a in args):
            return tuple(args)
    return ()


register()  # at import, as Hydra's own plugins register their configs
