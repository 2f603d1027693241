"""The schema of what is measured: the model and its checkpoints, the probe's texts, the probe, its evaluation.

Each dataclass checks its own fields when it is built (``__post_init__``), as TRL's configs do; relations across
groups are checked by ``Config`` (config/schema.py) and ``check`` (config/checks.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from geomsweep.config.choices import (
    DataSource,
    NgramEngine,
    Selection,
    Source,
)
from geomsweep.config.errors import require
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
    RankMeVariant,
)

MIN_TOY_DOCS = 2  # the toy tasks split their held-out documents into two halves


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
        require(getattr(self, key) is not None, f"model.source={self.source} needs model.{key}")
        if self.stages:
            require(
                self.source in (Source.hub, Source.local),
                f"model.stages are read from the hub or a local mirror, not model.source={self.source}",
            )
            missing = [s.name for s in self.stages if self.source == Source.hub and not s.hub_id]
            require(not missing, f"model.stages {missing} have no hub_id (needed with model.source=hub)")
        if self.source == Source.hub and isinstance(self.revisions, str):
            require(
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
            require(
                bool(self.steps),
                f"checkpoint.steps={self.steps} must list at least one step for checkpoint.select=steps",
            )
            self.steps = list(dict.fromkeys(self.steps))  # a step named twice is measured once
        if self.select == Selection.log:
            require(
                self.num is not None and self.num >= 2,
                f"checkpoint.num={self.num} must be an integer >= 2 for checkpoint.select=log",
            )
        if self.select == Selection.every:
            require(
                self.every is not None and self.every >= 1,
                f"checkpoint.every={self.every} must be a positive integer for checkpoint.select=every",
            )
        require(self.num_shards >= 1, f"checkpoint.num_shards={self.num_shards} must be >= 1")
        require(
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
        require(self.min_tokens >= 0, f"data.min_tokens={self.min_tokens} must be >= 0")
        require(
            self.document_field is None or self.source in (DataSource.files, DataSource.hub),
            f"data.document_field={self.document_field!r} names a column, but data.source={self.source} has none "
            f"(its texts are whole documents); valid: null, or data.source=files|hub",
        )
        if self.source == DataSource.files:
            require(self.path is not None, "data.source=files needs data.path")
        if self.source == DataSource.hub:
            require(self.name is not None, "data.source=hub needs data.name")
        require(self.min_chars >= 1, f"data.min_chars={self.min_chars} must be >= 1")


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
            require(getattr(self, name) >= 1, f"probe.{name}={getattr(self, name)} must be >= 1")
        require(
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
        require(not unknown, f"probe.metrics names {unknown}; valid: {', '.join(METRICS)}")
        require(self.reservoir >= 3, f"probe.reservoir={self.reservoir} must be >= 3")
        require(
            1 <= self.fit_start < self.fit_end,
            f"probe.fit_start={self.fit_start}, probe.fit_end={self.fit_end}: the alpha-ReQ fit range must "
            f"satisfy 1 <= fit_start < fit_end",
        )
        require(
            self.max_eigs is None or self.max_eigs >= self.fit_end,
            f"probe.max_eigs={self.max_eigs} must be null or >= probe.fit_end={self.fit_end}",
        )
        require(
            self.n_sequences > self.fit_end,
            f"probe.n_sequences={self.n_sequences} is too few for the alpha-ReQ fit range "
            f"{self.fit_start}..{self.fit_end}: it needs at least {self.fit_end + 1} sequences",
        )
        require(
            self.jackknife == 0 or 2 <= self.jackknife <= self.n_sequences,
            f"probe.jackknife={self.jackknife}; valid: 0 (no error bars) or 2..probe.n_sequences groups",
        )
        if self.jackknife:
            rest = self.n_sequences - -(-self.n_sequences // self.jackknife)  # the fewest left with a group out
            require(
                rest > self.fit_end,
                f"probe.jackknife={self.jackknife}: leaving a group out keeps {rest} of probe.n_sequences="
                f"{self.n_sequences}, too few for the alpha-ReQ fit range ..{self.fit_end}; use fewer groups or more "
                f"sequences",
            )


@dataclass
class HarnessConfig:
    """lm-evaluation-harness on the model already loaded, at every measured checkpoint (``downstream/<task>/...``)."""

    tasks: list[str] = field(
        default_factory=list
    )  # lm-eval task names ([]: off); toy_recall, toy_arithmetic: the toy's
    include_path: str | None = None  # a folder of your own task YAMLs (dataset_path: json works offline)
    num_fewshot: int | None = None  # few-shot examples (null: each task's own default, else 0)
    limit: int | None = None  # items per task (null: all of them)
    batch_size: int = 16
    log_samples: bool = False  # each item's scores as downstream/samples_step<N>_<task>.json
    bootstrap_iters: int = 1000  # lm-eval's bootstrap of the stderr of metrics without a closed form
    ablate: bool = True  # eval.ablation_k scores these tasks too (each K: two more evaluations per checkpoint)
    every: int | None = None  # post-training: also at each geometry step divisible by this (null: base and end only)

    def __post_init__(self) -> None:
        bad = [t for t in self.tasks if not isinstance(t, str) or not t.strip()]
        require(not bad, f"eval.harness.tasks={list(self.tasks)} holds {bad}; valid: lm-eval task names")
        require(self.batch_size >= 1, f"eval.harness.batch_size={self.batch_size} must be >= 1")
        require(self.limit is None or self.limit >= 1, f"eval.harness.limit={self.limit}; valid: null or >= 1")
        require(
            self.num_fewshot is None or self.num_fewshot >= 0,
            f"eval.harness.num_fewshot={self.num_fewshot}; valid: null or >= 0",
        )
        require(self.bootstrap_iters >= 0, f"eval.harness.bootstrap_iters={self.bootstrap_iters} must be >= 0")
        require(self.every is None or self.every >= 1, f"eval.harness.every={self.every}; valid: null or >= 1")


PAPER_INDEX = "v4_piletrain_llama"  # the Pile's training split, Llama-2 tokens: the index the paper queried
PAPER_INDEX_TOKENIZER = "hf-internal-testing/llama-tokenizer"  # Llama-2's tokenizer, ungated


@dataclass
class MemorizationConfig:
    """Distributional memorization (behavior/memorization): the Spearman correlation, across question/answer items,
    of the answer's log-probability under the model and under an ∞-gram model of the pretraining corpus."""

    items: str | None = None  # toy | triviaqa | a JSONL file with question and answer fields (null: off)
    engine: NgramEngine = NgramEngine.local  # local: an index folder here; api: the public infini-gram API
    index: str | None = None  # local: the index folder (null: the toy's own); api: the index name
    tokenizer: str | None = None  # api: the index's tokenizer (null: Llama-2's, the paper's index); local: unused
    api_url: str = "https://api.infini-gram.io/"
    retries: int = 5  # api: tries per query before the measure fails, 2 s apart
    limit: int | None = 1000  # items (null: all; the paper used all 17,944 of TriviaQA's)
    jackknife: int = 20  # groups for the standard error (items of one document stay together)

    def __post_init__(self) -> None:
        require(self.retries >= 1, f"eval.memorization.retries={self.retries} must be >= 1")
        require(self.limit is None or self.limit >= 3, f"eval.memorization.limit={self.limit}; valid: null or >= 3")
        require(self.jackknife >= 2, f"eval.memorization.jackknife={self.jackknife} must be >= 2")
        require(
            self.engine == NgramEngine.local or bool(self.api_url.strip()),
            "eval.memorization.api_url is empty; valid: the infini-gram API's URL",
        )

    @property
    def index_name(self) -> str:
        """The API's index (the paper's unless set)."""
        return self.index or PAPER_INDEX

    @property
    def index_tokenizer(self) -> str:
        return self.tokenizer or PAPER_INDEX_TOKENIZER


@dataclass
class EvalConfig:
    toy_n_docs: int = 300  # held-out toy documents for the toy tasks (0: off)
    ablation_k: list[int] = field(default_factory=lambda: [10, 50])  # spectral-tail ablation K ([]: off)
    harness: HarnessConfig = field(default_factory=HarnessConfig)
    memorization: MemorizationConfig = field(default_factory=MemorizationConfig)

    def __post_init__(self) -> None:
        require(
            self.toy_n_docs == 0 or self.toy_n_docs >= MIN_TOY_DOCS,
            f"eval.toy_n_docs={self.toy_n_docs}; valid: 0 (off) or at least {MIN_TOY_DOCS} held-out documents",
        )
        require(all(k >= 1 for k in self.ablation_k), f"eval.ablation_k={self.ablation_k}: each K must be >= 1")
