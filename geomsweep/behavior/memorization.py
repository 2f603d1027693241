"""Distributional memorization, the paper's way: across question/answer items, the Spearman correlation of the
answer's log-probability under the model and under an ∞-gram model of the pretraining corpus.

The ∞-gram side follows the authors' script: one ``infgram_prob`` query per answer token (in the index's tokens),
negative (undefined) probabilities clipped to zero, zeros left out of the sum, and an item whose every token is
zero left out. It does not depend on the checkpoint, so it is computed once per job (and kept in the cache, since
the API answers slowly); the model's side sums the answer tokens' log-probabilities in the model's own tokens.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from geomsweep.behavior.infinigram import ApiEngine, Engine, EngineFailure, LocalEngine, unreachable
from geomsweep.config.choices import MemorizationItems, NgramEngine
from geomsweep.config.errors import ConfigError
from geomsweep.config.toy import ToyConfig
from geomsweep.core.extract import eval_mode, next_token_logprobs
from geomsweep.core.spectra import jackknife_se
from geomsweep.core.states import jackknife_groups
from geomsweep.keys import metrics as M
from geomsweep.sources.corpus_index import BYTES, CorpusIndexError, toy_index
from geomsweep.sources.models import model_source
from geomsweep.sources.qa_items import QAItem, load_items
from geomsweep.sources.toy.pretrain import EOS

Encode = Callable[[str], list[int]]


def answer_span(encode: Encode, item: QAItem) -> tuple[list[int], int]:
    """The item's ids (prompt, space, answer) and where its answer starts: the prompt's own length, as the authors
    cut it (a token that merges across the boundary counts with the answer)."""
    return encode(f"{item.prompt} {item.answer}"), len(encode(item.prompt))


def infgram_logprob(probs: list[float]) -> float:
    """The authors' rule: negative probabilities are zero, zeros are left out of the sum, all zeros give NaN."""
    kept = [p for p in probs if p > 0]
    return float(np.log(kept).sum()) if kept else float("nan")


def infgram_side(items: list[QAItem], engine: Engine, encode: Encode, progress: bool = False) -> pd.DataFrame:
    """Per item: its ∞-gram log-probability and the mean length of the suffix each answer token was matched on."""
    rows = []
    for item in tqdm(items, desc="∞-gram queries", unit="item", disable=not progress):
        ids, start = answer_span(encode, item)
        answers = [engine.infgram_prob(ids[: end + 1]) for end in range(start, len(ids))]
        rows.append(
            {
                "infgram_logprob": infgram_logprob([a.prob for a in answers]),
                "suffix_len": float(np.mean([a.suffix_len for a in answers])) if answers else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=["infgram_logprob", "suffix_len"])


def carriers(sequences: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """The fewest sequences that hold every one as a prefix, and which holds each: in sorted order a sequence is a
    prefix of its successor or of none, so each is held by the first sequence from it on that is no prefix of its
    successor. A causal model's log-probabilities over a prefix are those over the longer sequence, so items that
    continue one another (the toy's: each word of a document after its prefix) share one forward pass."""
    order = sorted(range(len(sequences)), key=lambda i: sequences[i])
    held, kept = [0] * len(sequences), []
    pending: list[int] = []
    for rank, i in enumerate(order):
        pending.append(i)
        after = sequences[order[rank + 1]] if rank + 1 < len(order) else None
        if after is None or after[: len(sequences[i])] != sequences[i]:
            for j in pending:
                held[j] = len(kept)
            kept.append(sequences[i])
            pending = []
    return kept, held


@torch.inference_mode()
def model_logprobs(model, tokenizer, items: list[QAItem], batch_size: int = 32) -> list[float]:
    """Per item: the sum of the answer tokens' log-probabilities under the model, after the prompt (the model's own
    special tokens), from one forward pass per carrier sequence (``carriers``)."""
    prompts = tokenizer([item.prompt for item in items])["input_ids"]
    full = tokenizer([f"{item.prompt} {item.answer}" for item in items])["input_ids"]
    kept, held = carriers(full)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = []
    with eval_mode(model):
        for first in range(0, len(kept), batch_size):
            chunk = kept[first : first + batch_size]
            ids = pad_sequence([torch.tensor(s) for s in chunk], batch_first=True, padding_value=pad)
            mask = pad_sequence([torch.ones(len(s), dtype=torch.long) for s in chunk], batch_first=True)
            rows.extend(next_token_logprobs(model, ids, mask))  # position t - 1 predicts token t
    return [float(rows[held[i]][len(prompts[i]) - 1 : len(full[i]) - 1].sum()) for i in range(len(items))]


def rho_replicates(table: pd.DataFrame, groups: int) -> tuple[float, np.ndarray, int]:
    """ρ over the items with an ∞-gram estimate, its delete-one-group replicates (a document's items leave together;
    empty with too few items), and the number of items."""
    kept = table[np.isfinite(table["infgram_logprob"])]
    n = len(kept)
    if n < 3:
        return float("nan"), np.array([]), n
    x, y = kept["model_logprob"].to_numpy(), kept["infgram_logprob"].to_numpy()
    k = min(groups, n // 3)
    if k < 2:
        return float(spearmanr(x, y).statistic), np.array([]), n
    assignment = jackknife_groups(n, k, documents=kept["group"].tolist()).numpy()
    replicates = np.array([spearmanr(x[assignment != g], y[assignment != g]).statistic for g in range(k)])
    return float(spearmanr(x, y).statistic), replicates, n


def standard_error(replicates: np.ndarray) -> float:
    return float(jackknife_se(torch.tensor(replicates)[:, None])[0]) if len(replicates) else float("nan")


def rho_change(before: pd.DataFrame, after: pd.DataFrame, groups: int) -> dict[str, float]:
    """ρ's change between two checkpoints scored on the same items, and its SE paired over the same jackknife
    groups: ``behavior/memorization_change`` and ``_change_se``."""
    rho_before, reps_before, _ = rho_replicates(before, groups)
    rho_after, reps_after, _ = rho_replicates(after, groups)
    key = M.change(M.MEMORIZATION)
    return {key: rho_after - rho_before, M.se(key): standard_error(reps_after - reps_before)}


@dataclass
class MemorizationResult:
    metrics: dict[str, float]
    table: pd.DataFrame  # one row per item: question, answer, both log-probabilities, suffix length


class Memorization:
    """The measure for one job: its items and their ∞-gram side, fixed; ``measure`` scores a checkpoint."""

    def __init__(self, items: list[QAItem], reference: pd.DataFrame, groups: int):
        self.items, self.reference, self.groups = items, reference, groups

    def measure(self, model, tokenizer) -> MemorizationResult:
        table = pd.DataFrame(
            {
                "prompt": [i.prompt for i in self.items],
                "answer": [i.answer for i in self.items],
                "group": [i.group for i in self.items],
                "model_logprob": model_logprobs(model, tokenizer, self.items),
            }
        ).join(self.reference)
        rho, replicates, n = rho_replicates(table, self.groups)
        metrics = {M.MEMORIZATION: rho, M.MEMORIZATION_SE: standard_error(replicates), M.MEMORIZATION_ITEMS: n}
        return MemorizationResult(metrics, table)

    def change(self, before: pd.DataFrame, after: pd.DataFrame) -> dict[str, float]:
        """ρ's change between two checkpoints scored on these items, paired over the same groups (``rho_change``)."""
        return rho_change(before, after, self.groups)


@dataclass(frozen=True)
class Setup:
    """What the measure is asked over: the items, the engine, the tokenizer its index speaks, and an identity of
    the pair (the ∞-gram side's cache key)."""

    items: list[QAItem]
    engine: Engine
    encode: Encode
    identity: str


def setup(settings, build: bool = True) -> Setup | None:
    """The items and the engine, checked: each fault is one line naming the value and the fix. The preflight calls
    it with ``build=False`` before any run opens (the API answers one query there, so an unreachable service is
    refused; a toy not yet pretrained has no tokenizer to index its corpus with: its index waits for the job, and
    None comes back)."""
    cfg, toy_world = settings.eval.memorization, model_source(settings.model).toy_world
    if cfg.items == MemorizationItems.toy and not toy_world:
        raise ConfigError(
            f"eval.memorization.items=toy holds the toy world's documents: model.source=toy only; valid for "
            f"model={settings.model.name}: triviaqa or a JSONL file with question and answer fields"
        )
    toy = ToyConfig.from_cfg(settings.model.toy) if toy_world else None
    items = checked_items(cfg, toy, EOS if toy_world else "")
    if cfg.engine == NgramEngine.api:
        engine = ApiEngine(cfg.api_url, cfg.index_name, cfg.retries)
        if not build:
            try:
                engine.check()
            except EngineFailure as err:
                raise ConfigError(unreachable(err)) from None
        encode = encoder(cfg.index_tokenizer, "eval.memorization.tokenizer")
        return Setup(items, engine, encode, f"{cfg.api_url}|{cfg.index_name}|{cfg.index_tokenizer}")
    if cfg.index is None and not toy_world:
        raise ConfigError(
            f"eval.memorization.index is null, and only the toy has an index of its own; build one from "
            f"{settings.model.name}'s pretraining corpus with `geomsweep-index CORPUS DIR --tokenizer TOKENIZER` and "
            f"set eval.memorization.index=DIR (or eval.memorization.engine=api)"
        )
    if cfg.index is None and not build and not toy.is_pretrained(settings.cache_dir):
        return None  # the toy's index is built from its tokenizer, once the job has pretrained it
    index = Path(cfg.index).expanduser() if cfg.index else toys_own_index(toy, settings.cache_dir)
    try:
        engine = LocalEngine(str(index))
    except CorpusIndexError as err:
        raise ConfigError(f"eval.memorization.index: {err}") from None
    return Setup(items, engine, encoder(engine.info.tokenizer, f"the tokenizer of index {index}"), engine.info.corpus)


def toys_own_index(toy: ToyConfig, cache_dir: str) -> Path:
    world = toy.directory(cache_dir)
    try:
        return toy_index(toy, world, world / "step0")
    except OSError as err:
        raise ConfigError(
            f"cannot write the toy's ∞-gram index beside {world} ({err.strerror or err}); point GEOMSWEEP_CACHE or "
            f"cache_dir= at a writable folder"
        ) from None


def encoder(tokenizer: str, what: str) -> Encode:
    """Text to the ids an index holds: raw UTF-8 bytes, or a tokenizer's ids without special tokens."""
    if tokenizer == BYTES:
        return lambda text: list(text.encode())
    try:
        loaded = AutoTokenizer.from_pretrained(tokenizer)
    except OSError as err:
        raise ConfigError(
            f"{what}, {tokenizer}, cannot be loaded ({str(err).splitlines()[0]}); valid: a tokenizer folder on this "
            f"machine or a hub name the cache holds"
        ) from None
    return lambda text: loaded(text, add_special_tokens=False)["input_ids"]


def checked_items(cfg, toy: ToyConfig | None, start: str) -> list[QAItem]:
    """The items eval.memorization.items names, or one line saying why they cannot be had."""
    valid = "valid: toy, triviaqa or a JSONL file with question and answer fields"
    try:
        items = load_items(cfg.items, cfg.limit, toy, start)
    except FileNotFoundError:
        raise ConfigError(f"eval.memorization.items={cfg.items}: no such file; {valid}") from None
    except ValueError as err:  # a line that is not JSON, or lacks a field
        raise ConfigError(f"eval.memorization.items={cfg.items}: {err}; {valid}") from None
    except (OSError, ConnectionError) as err:  # the hub's dataset cannot be had
        raise ConfigError(
            f"eval.memorization.items={cfg.items} could not be loaded ({type(err).__name__}: {err}); offline, use a "
            f"local JSONL file"
        ) from None
    if len(items) < 3:
        raise ConfigError(f"eval.memorization.items={cfg.items} gives {len(items)} items; the correlation needs >= 3")
    return items


def memorization_for(settings) -> Memorization | None:
    """The job's measure (None where ``eval.memorization.items`` is null), its ∞-gram side computed once and kept
    in the cache under the items and the index it was asked of."""
    cfg = settings.eval.memorization
    if cfg.items is None:
        return None
    asked = setup(settings)
    texts = json.dumps([asked.identity, [[i.prompt, i.answer] for i in asked.items]])
    cached = Path(settings.cache_dir) / "memorization" / f"{hashlib.sha256(texts.encode()).hexdigest()[:16]}.csv"
    if cached.is_file():
        reference = pd.read_csv(cached)
    else:
        progress = settings.progress and cfg.engine == NgramEngine.api
        reference = infgram_side(asked.items, asked.engine, asked.encode, progress)
        cached.parent.mkdir(parents=True, exist_ok=True)
        reference.to_csv(cached.with_suffix(".partial"), index=False)
        cached.with_suffix(".partial").rename(cached)
    return Memorization(asked.items, reference, cfg.jackknife)
