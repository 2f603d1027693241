"""The typed config: one dataclass per group, registered in Hydra's ConfigStore as the schema under the YAML presets.

Types and choices are checked by OmegaConf when Hydra composes (``probe.n_sequences=abc``, ``probe.norm=mid``);
ranges and relations between fields by ``__post_init__`` and ``check`` (``probe.batch_size=0``), and the fields
of ``method.args`` against the TRL config class they are passed to. All of it runs before any model loads and
before any MLflow run opens, and each failure is one line naming the key, the value and what is valid.
Each default lives here once; the YAML presets under ``conf/`` set what differs, with comments.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from geomsweep.config.choices import (
    VLLM_ENGINES,
    Backend,
    Extractor,
    MemorizationItems,
    NgramEngine,
    SampleAt,
    Source,
    Split,
    TaskSchema,
    TaskSource,
)
from geomsweep.config.errors import require
from geomsweep.config.measurement import CheckpointConfig, DataConfig, EvalConfig, ModelConfig, ProbeConfig
from geomsweep.config.option import option
from geomsweep.core.definitions import (
    Dtype,
    PhaseRule,
)


class Adapter(StrEnum):
    lora = "lora"


# --- groups --------------------------------------------------------------------------------------------------


@dataclass
class LoraSettings:
    """peft's LoRA: low-rank adapters on the named linear layers, the rest of the model frozen."""

    r: int = option(16, "the adapters' rank")
    alpha: int = option(32, "LoRA's scaling (lora_alpha)")
    dropout: float = option(0.05, "dropout on the adapters' input")
    target_modules: Any = option("all-linear", "peft's every linear layer but the output head, or a list of names")

    def __post_init__(self) -> None:
        require(self.r >= 1, f"method.lora.r={self.r} must be >= 1")
        require(self.alpha > 0, f"method.lora.alpha={self.alpha} must be > 0")
        require(0 <= self.dropout < 1, f"method.lora.dropout={self.dropout} must lie in [0, 1)")


@dataclass
class MethodConfig:
    name: str = option("none", "none (a trace of pretraining checkpoints) | sft | dpo | rlvr | pipeline")
    trainer: str | None = option(None, "the TRL trainer class, e.g. trl.SFTTrainer")
    trainer_config: str | None = option(None, "its config class, e.g. trl.SFTConfig: method.args are its fields")
    reward: str | None = option(None, "a reward function factory (RLVR), called with task.extractor")
    runner: str | None = option(
        None, "the function that runs a post-training job (geomsweep.post_training.run.post_train)"
    )
    geometry_every: int = option(10, "measure the probe set every N optimizer steps (and at step 0 and the end)")
    args: dict[str, Any] = option(
        factory=dict,
        help="the TRL trainer config's own fields (e.g. learning_rate, max_steps), checked against its class "
        "before anything loads",
    )
    peft: Adapter | None = option(None, "lora: train adapters (method.lora) instead of every weight")
    lora: LoraSettings = option(factory=LoraSettings, help="LoRA's settings when method.peft=lora")
    save: bool = option(
        False, 'keep the post-trained model as the run\'s artifact "model" (model=mlflow reads it back)'
    )
    stages: list[str] | None = option(None, "method=pipeline: the methods run in turn, each from the last one's model")
    processes: int = option(1, "train in N processes (torchrun: DDP, or FSDP / ZeRO-3 through args; parallel=<preset>)")

    def __post_init__(self) -> None:
        require(self.geometry_every >= 1, f"method.geometry_every={self.geometry_every} must be >= 1")
        steps = self.args.get("max_steps")
        require(
            steps is None or isinstance(steps, bool) or not isinstance(steps, int) or steps >= 1 or steps == -1,
            f"method.args.max_steps={steps} trains nothing; valid: a positive number of steps, or -1 "
            f"(num_train_epochs)",
        )
        require(self.processes >= 1, f"method.processes={self.processes} must be >= 1")
        require(
            self.processes == 1 or self.stages is None,
            f"method.processes={self.processes} with method=pipeline: a pipeline trains in one process; "
            f"use method.processes=1, or run the stages as separate jobs through model=mlflow",
        )
        if self.stages is not None:
            bad = [s for s in self.stages if s in ("none", "pipeline")]
            require(
                bool(self.stages) and not bad and self.runner is not None,
                f"method.stages={list(self.stages)}: a pipeline runs one or more post-training methods "
                f"(e.g. [sft, dpo, rlvr]), not none or pipeline",
            )
        elif self.name != "none":
            require(
                None not in (self.trainer, self.trainer_config, self.runner),
                f"unknown method {self.name!r}; valid: none, sft, dpo, rlvr (another TRL trainer needs "
                f"method.trainer, method.trainer_config and method.runner)",
            )


@dataclass
class TaskConfig:
    source: TaskSource = option(TaskSource.arithmetic, "the post-training task: arithmetic (built in) | files | hub")
    extractor: Extractor = option(Extractor.first_number, "how an answer is read from a completion")
    max_new_tokens: int = option(4, "greedy tokens generated for eval/{id,ood}_acc")
    id_fraction: float = option(0.3, "share held out for in-distribution evaluation")
    max_operand: int = option(9, "source=arithmetic: the largest operand of the training and ID problems")
    ood_max_operand: int = option(19, "source=arithmetic: the largest operand of the out-of-distribution split")
    name: str | None = option(None, "source=hub: the dataset's hub name")
    config: str | None = option(None, "source=hub: the dataset's configuration")
    split: str = option("train", "source=hub or files: the split to read")
    path: str | None = option(None, "source=files: a JSONL file or a folder of them")
    schema: str | None = option(None, "files/hub: gsm8k | hh | ultrafeedback")
    limit: int | None = option(None, "rows to keep (null: all)")
    ood: dict[str, Any] | None = option(None, "a second dataset, given the same way")

    def __post_init__(self) -> None:
        require(0.0 < self.id_fraction < 1.0, f"task.id_fraction={self.id_fraction} must lie in (0, 1)")
        require(self.max_new_tokens >= 1, f"task.max_new_tokens={self.max_new_tokens} must be >= 1")
        require(self.limit is None or self.limit >= 1, f"task.limit={self.limit}; valid: null (all rows) or >= 1")
        if self.source == TaskSource.files:
            require(self.path is not None, "task.source=files needs task.path (a JSON Lines or CSV file)")
        if self.source == TaskSource.hub:
            require(self.name is not None, "task.source=hub needs task.name (a datasets name)")
        if self.source == TaskSource.arithmetic:
            require(
                0 <= self.max_operand < self.ood_max_operand,
                f"task.max_operand={self.max_operand} must lie in 0..task.ood_max_operand-1 ({self.ood_max_operand})",
            )
        else:
            require(
                self.schema in TaskSchema.__members__,
                f"task.schema={self.schema!r}; valid: {', '.join(TaskSchema)}",
            )


@dataclass
class SamplerConfig:
    name: Backend = option(Backend.hf, "hf: transformers generate (CPU or GPU) | vllm: vLLM")
    n: int = option(16, "samples per problem (0: no sampling)")
    temperature: float = option(1.0, "sampling temperature (> 0)")
    top_p: float = option(1.0, "nucleus sampling's probability mass")
    max_tokens: int | None = option(None, "None: the task's max_new_tokens")
    ks: list[int] | None = option(None, "pass@k at these k; None: 1, 2, 4, ... and n")
    splits: list[str] = option(factory=lambda: ["id", "ood"], help="the task's splits sampled: id, ood")
    at: SampleAt = option(SampleAt.last, "method=none: sample at the last measured checkpoint or at all of them")
    batch_size: int = option(8, "prompts per generate call (hf)")
    seed: int = option(0, "the sampler's seed")
    engine: dict[str, dict[str, Any]] = option(
        factory=lambda: dict(VLLM_ENGINES), help="sampler=vllm: vllm.LLM(...) arguments by platform (cuda, cpu)"
    )

    def __post_init__(self) -> None:
        require(self.n >= 0, f"sampler.n={self.n} must be >= 0 (0: no sampling)")
        require(self.batch_size >= 1, f"sampler.batch_size={self.batch_size} must be >= 1")
        require(
            0 < self.temperature < math.inf,
            f"sampler.temperature={self.temperature} must be a finite number > 0 (pass@k needs random "
            f"samples; greedy accuracy is eval/*_acc)",
        )
        require(0 < self.top_p <= 1, f"sampler.top_p={self.top_p} must lie in (0, 1]")
        require(
            self.max_tokens is None or self.max_tokens >= 1,
            f"sampler.max_tokens={self.max_tokens} must be null or >= 1",
        )
        require(
            bool(self.splits) or not self.n,
            f"sampler.splits={list(self.splits)} samples nothing; valid: one or more of {', '.join(Split)}, or "
            f"sampler.n=0 (no sampling)",
        )
        bad = [s for s in self.splits if s not in Split.__members__]
        require(not bad, f"sampler.splits has {bad}; valid: {', '.join(Split)}")
        bad = [p for p in self.engine if p not in VLLM_ENGINES]
        require(not bad, f"sampler.engine has {bad}; valid: the platforms vLLM runs on, {', '.join(VLLM_ENGINES)}")
        require(
            self.ks is None or bool(self.ks), "sampler.ks=[] names no k; valid: null (1, 2, 4, ... and n) or a list"
        )
        if self.n and self.ks is not None:
            bad = [k for k in self.ks if not 1 <= k <= self.n]
            require(
                not bad,
                f"sampler.ks has {bad}, outside 1..sampler.n={self.n}: pass@k needs at least k samples per problem",
            )


@dataclass
class ServerConfig:
    start: bool = option(True, "start a local mlflow server for the sweep (stopped at its end)")
    host: str = option("127.0.0.1", "the server's host (127.0.0.1: this machine only)")
    port: int = option(5000, "the server's port")
    backend_store_uri: str = option(
        "sqlite:///mlflow.db", "the server's backend store (sqlite, or PostgreSQL for many writers)"
    )
    artifacts_destination: str = option("mlartifacts", "where the server keeps artifacts")


@dataclass
class CacheConfig:
    """The Hugging Face cache during a hub trace (HF_HOME / HF_HUB_CACHE say where it is)."""

    evict: Any = option(
        "auto", "delete a revision once measured, unless cached before the job; auto: on for hub traces"
    )
    reserve_gib: float = option(2.0, "a download must leave this much disk free, else the job stops before it")

    def __post_init__(self) -> None:
        require(self.evict in (True, False, "auto"), f"cache.evict={self.evict!r}; valid: auto, true, false")
        require(self.reserve_gib >= 0, f"cache.reserve_gib={self.reserve_gib} must be >= 0")


@dataclass
class TrackingConfig:
    uri: str = option(
        "sqlite:///mlflow.db", "the MLflow tracking URI: sqlite:///mlflow.db, http://host:port, postgresql://..."
    )
    experiment: str = option("geomsweep", "the MLflow experiment the runs go to")
    force: bool = option(False, "run cells again even when a FINISHED run of the same config exists")
    server: ServerConfig | None = option(None, "a local mlflow server for parallel writers (tracking=server)")

    def __post_init__(self) -> None:
        require(bool(self.experiment.strip()), f"tracking.experiment={self.experiment!r} must name an experiment")
        scheme = self.uri.split("://", 1)[0].split("+", 1)[0] if "://" in self.uri else ""
        require(
            scheme in TRACKING_SCHEMES,
            f"tracking.uri={self.uri!r}; valid: a URI whose scheme is one of {', '.join(TRACKING_SCHEMES)} (e.g. "
            f"sqlite:///mlflow.db or http://127.0.0.1:5000)",
        )


# MLflow's tracking stores, less the file store it refuses (>= 3.13); a driver may follow: postgresql+psycopg
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


@dataclass
class Config:
    model: ModelConfig = option(MISSING, "the model and its checkpoints' source (model=<preset>)")
    checkpoint: CheckpointConfig = option(MISSING, "which checkpoints a trace measures, or post-training starts from")
    method: MethodConfig = option(MISSING, "none (a trace) or a post-training method through TRL")
    task: TaskConfig = option(MISSING, "post-training's task: training data, ID and OOD evaluation")
    sampler: SamplerConfig = option(MISSING, "sampled behavior: pass@k and diversity")
    data: DataConfig = option(MISSING, "the probe texts the representations are taken on")
    probe: ProbeConfig = option(MISSING, "how representations are taken and measured")
    eval: EvalConfig = option(
        MISSING, "behavior beside the geometry: toy tasks, Table 1's ablation, the harness, memorization"
    )
    tracking: TrackingConfig = option(MISSING, "where runs go (MLflow)")
    phases: PhaseRule = option(factory=PhaseRule, help="how a RankMe trajectory is cut into phases")
    seed: int = option(0, "the job's seed (probe sampling, training, sampling)")
    device: str = option("auto", "where models run: auto (a GPU where there is one) | cpu | cuda | cuda:<n>")
    dtype: Dtype = option(Dtype.float32, "float32 | bfloat16 | float16 | auto (the model's own dtype on a GPU)")
    device_map: Any = option(None, "auto, or a dict: accelerate spreads a model too large for one GPU")
    cache_dir: str = option(MISSING, "where geomsweep keeps the toy's checkpoints and indexes (GEOMSWEEP_CACHE)")
    progress: bool = option(True, "show progress bars")
    prefetch: bool | str = option(
        "auto", "load the next checkpoint while this one is measured: auto (on a GPU only) | true | false"
    )
    plan: bool = option(
        False, "print the plan (a trace's cost; post-training's memory) and stop: nothing loads, no run"
    )
    tflops: float | None = option(None, "plan=true: the device's sustained TFLOP/s (None: measured once, cached)")
    cache: CacheConfig = option(factory=CacheConfig, help="the Hugging Face cache during a hub trace")

    def __post_init__(self) -> None:
        require(bool(DEVICE_RE.match(self.device)), f"device={self.device!r}; valid: auto, cpu, cuda, cuda:<n>")
        require(self.tflops is None or self.tflops > 0, f"tflops={self.tflops} must be > 0 (null: measured)")
        require(self.prefetch in (True, False, "auto"), f"prefetch={self.prefetch!r}; valid: auto, true, false")
        if self.method.name != "none":
            require(
                self.device_map is None,
                f"device_map={self.device_map} applies to measurement (method=none) "
                f"only; post-training places the model itself (device=...)",
            )
            sharded = sharded_by(self.method.args or {})
            require(
                not (self.probe.weights and sharded),
                f"probe.weights=true under {sharded}: each process holds a shard of every weight matrix, so its "
                f"spectra would be a shard's; valid: probe.weights=false, or parallel=ddp (whole weights)",
            )


def sharded_by(args) -> str | None:
    """What shards the weights over processes in these trainer arguments (FSDP, DeepSpeed ZeRO-3), if anything."""
    deepspeed = args.get("deepspeed")
    zero = (deepspeed.get("zero_optimization") or {}) if isinstance(deepspeed, Mapping) else {}
    return "FSDP" if args.get("fsdp") else "ZeRO-3" if zero.get("stage") == 3 else None


PAPER_TASKS = ["sciq", "triviaqa"]  # the paper's downstream tasks (SciQ zero-shot; TriviaQA)


def paper_tasks(source: str) -> list[str]:
    """``${geomsweep.paper_tasks:${model.source}}``: the paper's tasks for a hub model on a machine with a CUDA GPU
    (``nvidia-smi`` on the PATH: no torch import while the config is checked), else none. ``--cfg job --resolve``
    shows what a machine picks."""
    return list(PAPER_TASKS) if source == Source.hub and shutil.which("nvidia-smi") else []


def paper_memorization(source: str) -> str | None:
    """``${geomsweep.paper_memorization:${model.source}}``: the paper's memorization items (TriviaQA, against its ∞-gram
    index through the infini-gram API) where the paper's tasks run and the hub is not declared offline, else none."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
    return MemorizationItems.triviaqa.value if paper_tasks(source) and not offline else None


def paper_engine(source: str) -> str:
    """``${geomsweep.paper_engine:${model.source}}``: a hub model's ∞-gram comes from the API (the paper's index)."""
    return (NgramEngine.api if source == Source.hub else NgramEngine.local).value


def register() -> None:
    """The schema of the whole config, as ``schema`` (``conf/config.yaml`` lists it first): every group's YAML
    preset merges onto its typed field; and the resolver the presets use."""
    ConfigStore.instance().store(name="schema", node=Config)
    OmegaConf.register_new_resolver("geomsweep.paper_tasks", paper_tasks, replace=True)
    OmegaConf.register_new_resolver("geomsweep.paper_memorization", paper_memorization, replace=True)
    OmegaConf.register_new_resolver("geomsweep.paper_engine", paper_engine, replace=True)


register()  # at import, as Hydra's own plugins register their configs
