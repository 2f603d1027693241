"""The schema of what is measured: the model and its checkpoints, the probe's texts, the probe, its evaluation.

Each dataclass checks its own fields when it is built (``__post_init__``), as TRL's configs do; relations across
groups are checked by ``Config`` (config/schema.py) and ``check`` (config/checks.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from geomsweep.config.choices import (
    DataSource,
    NgramEngine,
    Selection,
    Source,
)
from geomsweep.config.errors import require
from geomsweep.config.option import option
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

    name: str = option(MISSING, "the stage's name: a sub-directory of a local mirror, and the label of its checkpoints")
    hub_id: str | None = option(None, "source=hub; a local mirror holds one sub-directory per stage, named after it")


@dataclass
class ModelConfig:
    name: str = option(
        MISSING, "the preset's name, shown in run names and messages (model=<name> picks conf/model/<name>.yaml)"
    )
    source: Source = option(MISSING, "where the model comes from: toy | local | hub | gguf | mlflow")
    hub_id: str | None = option(None, "source=hub: the repository, e.g. EleutherAI/pythia-160m")
    revisions: Any = option(None, "source=hub: pythia | refs | a list of revision names")
    path: str | None = option(None, "source=local: a save_pretrained directory, or one sub-directory per revision")
    package: str | None = option(None, "source=gguf: the Python package shipping the file")
    gguf_file: str | None = option(None, "source=gguf: the GGUF file inside model.package")
    uri: str | None = option(None, "source=mlflow: runs:/<run id>/model")
    toy: ToyConfig | None = option(None, "source=toy: the toy world's settings (model.toy.*)")
    stages: list[StageConfig] | None = option(
        None, "a pipeline's stages, traced in order as the checkpoints of one trace"
    )
    width: int | None = option(None, "the hidden size, where known without loading (the plan's FLOPs and memory)")
    depth: int | None = option(None, "the number of layers, where known without loading (the plan)")
    tokens_per_step: int | None = option(None, "tokens seen per pretraining step, for tokens_seen (Pythia: 2,097,152)")
    dtype: Dtype | None = option(None, "the dtype the model was trained in (dtype=auto uses it on a GPU)")
    trust_remote_code: bool = option(
        False, "run code shipped in a model folder (transformers' trust_remote_code); off: refused"
    )

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
    select: Selection = option(MISSING, "which checkpoints a trace measures: all | final | steps | log | every")
    steps: list[int] | None = option(None, "select=steps: the pretraining steps to measure")
    step: int | None = option(None, "checkpoint=step fills steps with this one step")
    num: int | None = option(None, "select=log: how many log-spaced checkpoints to pick")
    every: int | None = option(None, "select=every: measure every N-th step's checkpoint")
    shard: int = option(0, "with num_shards: this job measures every num_shards-th checkpoint from here")
    num_shards: int = option(1, "split the selected checkpoints over this many jobs (a SLURM array, say)")

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
    source: DataSource = option(
        DataSource.toy, "where probe texts come from: toy | english (this system's licence texts) | files | hub"
    )
    path: str | None = option(None, "source=files: a text or JSONL file, or a folder of them")
    name: str | None = option(None, "source=hub: the dataset's hub name")
    config: str | None = option(None, "source=hub: the dataset's configuration")
    split: str = option("train", "source=hub: the split to read")
    text_field: str = option("text", "files (JSONL) or hub: the column holding each text")
    document_field: str | None = option(
        None,
        "a column naming the document each text was cut from (chunks of long documents): block jackknife groups "
        "keep each document's texts together; null: the texts are independent",
    )
    min_chars: int = option(1, "keep texts of at least this many characters")
    min_tokens: int = option(0, "keep texts with more than this many tokens (the measured model's tokenizer); 0: all")

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

    n_sequences: int = option(1024, "probe texts measured at each checkpoint (N; the paper: 10,000)")
    max_length: int = option(64, "tokens per probe text (longer texts are cut)")
    batch_size: int = option(64, "probe texts per forward pass")
    padding_side: PaddingSide = option(
        PaddingSide.right, "right | left: where a batch is padded (the last real token is taken either way)"
    )
    layers: Any = option(
        factory=lambda: [-1],
        help="indices into hidden_states, the first being the headline; or all: every layer (embeddings "
        "included) in the same passes, the final one the headline",
    )
    norm: Norm = option(Norm.post, "post: the final layer after its norm (what the unembedding reads) | pre: before it")
    rankme: RankMeVariant = option(
        RankMeVariant.eigen, "eigen: RankMe from covariance eigenvalues (the paper's) | singular: from singular values"
    )
    fit_start: int = option(REFERENCE_FIT[0], "alpha-ReQ fit over 1-based ranks fit_start..fit_end, weights 1/k")
    fit_end: int = option(REFERENCE_FIT[1], "the last rank of the alpha-ReQ fit (see fit_start)")
    max_eigs: int | None = option(
        REFERENCE_MAX_EIGS, "keep the largest min(max_eigs, N, D), as the reference; None: all"
    )
    loss: bool = option(True, "also log eval/probe_loss from the same forward passes")
    jackknife: int = option(10, "K disjoint groups -> geometry/rankme_se, geometry/alpha_req_se (0: no error bars)")
    jackknife_groups: JackknifeGroups = option(JackknifeGroups.block, "contiguous runs of the probe order, or i mod K")
    metrics: list[str] = option(factory=lambda: list(PAPER_METRICS), help="the suite's measures (core/suite.py)")
    reservoir: int = option(2048, "representations kept (seeded) for TwoNN, when probe.metrics names it")
    weights: bool = option(
        False, "also the power-law spectra of each block's weight matrices (data-free; core/weights.py)"
    )

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

    tasks: list[str] = option(factory=list, help="lm-eval task names ([]: off); toy_recall, toy_arithmetic: the toy's")
    include_path: str | None = option(None, "a folder of your own task YAMLs (dataset_path: json works offline)")
    num_fewshot: int | None = option(None, "few-shot examples (null: each task's own default, else 0)")
    limit: int | None = option(None, "items per task (null: all of them)")
    batch_size: int = option(16, "lm-eval's batch size on the loaded model")
    log_samples: bool = option(False, "each item's scores as downstream/samples_step<N>_<task>.json")
    bootstrap_iters: int = option(1000, "lm-eval's bootstrap of the stderr of metrics without a closed form")
    ablate: bool = option(True, "eval.ablation_k scores these tasks too (each K: two more evaluations per checkpoint)")
    every: int | None = option(
        None, "post-training: also at each geometry step divisible by this (null: base and end only)"
    )

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

    items: str | None = option(None, "toy | triviaqa | a JSONL file with question and answer fields (null: off)")
    engine: NgramEngine = option(NgramEngine.local, "local: an index folder here; api: the public infini-gram API")
    index: str | None = option(None, "local: the index folder (null: the toy's own); api: the index name")
    tokenizer: str | None = option(
        None, "api: the index's tokenizer (null: Llama-2's, the paper's index); local: unused"
    )
    api_url: str = option("https://api.infini-gram.io/", "engine=api: the infini-gram API's URL")
    retries: int = option(5, "api: tries per query before the measure fails, 2 s apart")
    limit: int | None = option(1000, "items (null: all; the paper used all 17,944 of TriviaQA's)")
    jackknife: int = option(20, "groups for the standard error (items of one document stay together)")

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
    toy_n_docs: int = option(300, "held-out toy documents for the toy tasks (0: off)")
    ablation_k: list[int] = option(factory=lambda: [10, 50], help="spectral-tail ablation K ([]: off)")
    harness: HarnessConfig = option(
        factory=HarnessConfig, help="lm-evaluation-harness's tasks on the loaded model (downstream/<task>/<metric>)"
    )
    memorization: MemorizationConfig = option(
        factory=MemorizationConfig,
        help="distributional memorization against an infini-gram index (behavior/memorization)",
    )

    def __post_init__(self) -> None:
        require(
            self.toy_n_docs == 0 or self.toy_n_docs >= MIN_TOY_DOCS,
            f"eval.toy_n_docs={self.toy_n_docs}; valid: 0 (off) or at least {MIN_TOY_DOCS} held-out documents",
        )
        require(all(k >= 1 for k in self.ablation_k), f"eval.ablation_k={self.ablation_k}: each K must be >= 1")
