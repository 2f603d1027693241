"""The settings of the embedded toy world: its synthetic language, its tiny GPT-NeoX and its pretraining.

The defaults here are the one place the default world is defined (``conf/model/tiny.yaml`` picks them): width 16
against a 3,000-word language and a 2,048-token vocabulary, a binding bottleneck (d << |V|) whose trace shows
warmup, entropy-seeking and compression-seeking. Every field is hashed into the cache key of its checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from geomsweep.config.choices import LRScheduler
from geomsweep.config.option import option

COMPLETE_MARKER = "COMPLETE"  # written last into a toy world's directory, once every checkpoint is saved
# Fields added after worlds were cached: at these values a world keeps the key (and the cache) it had before them.
ADDED_FIELDS = {"min_words": 12, "max_words": 40}


@dataclass
class ToyConfig:
    n_words: int = option(3000, "the toy language's vocabulary of words")
    n_subjects: int = option(40, "names that open documents and are recalled at their end")
    zipf_exponent: float = option(1.1, "the Zipf law of word frequencies")
    n_successors: int = option(4, "preferred successors per word (short-range structure)")
    follow_prob: float = option(0.7, "how often the next word is a preferred successor rather than a fresh Zipf draw")
    n_train_docs: int = option(20_000, "documents in the pretraining corpus")
    min_words: int = option(12, "a document's body length in words: the recall after ``so`` spans it")
    max_words: int = option(40, "the longest document body in words")
    vocab_size: int = option(2048, "the BPE tokenizer's vocabulary")
    hidden_size: int = option(16, "the bottleneck: d << vocabulary")
    num_layers: int = option(2, "transformer layers")
    num_heads: int = option(2, "attention heads")
    seq_len: int = option(64, "tokens per training block (the model's context)")
    batch_size: int = option(32, "blocks per optimizer step")
    max_steps: int = option(6000, "pretraining steps")
    learning_rate: float = option(3e-3, "AdamW's learning rate")
    warmup_steps: int = option(30, "the schedule's warmup steps")
    lr_scheduler: str = option(
        "constant_with_warmup", "transformers' schedule: constant | constant_with_warmup | cosine | linear"
    )
    weight_decay: float = option(0.01, "AdamW's weight decay")
    n_checkpoints: int = option(30, "log-spaced checkpoint targets (plus step 0 and the last step)")
    extra_steps: list[int] = option(factory=list, help="more steps to save checkpoints at")
    seed: int = option(0, "the world's seed: language, corpus, tokenizer and model")

    def __post_init__(self) -> None:
        positive = (
            "n_words",
            "n_subjects",
            "n_successors",
            "n_train_docs",
            "min_words",
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "seq_len",
            "batch_size",
            "max_steps",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"model.toy.{name}={getattr(self, name)} must be >= 1")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.toy.hidden_size={self.hidden_size} must be divisible by model.toy.num_heads={self.num_heads}"
            )
        if self.max_words < self.min_words:
            raise ValueError(f"model.toy.max_words={self.max_words} must be >= model.toy.min_words={self.min_words}")
        if not 0.0 <= self.follow_prob <= 1.0:
            raise ValueError(f"model.toy.follow_prob={self.follow_prob} must lie in [0, 1]")
        if self.lr_scheduler not in LRScheduler.__members__:
            raise ValueError(f"model.toy.lr_scheduler={self.lr_scheduler!r}; valid: {', '.join(LRScheduler)}")

    @classmethod
    def from_cfg(cls, node) -> ToyConfig:
        """From a Hydra/OmegaConf node, a plain dict, or None for the defaults; unknown fields are refused."""
        if node is None:
            return cls()
        if isinstance(node, cls):
            return node
        values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown model.toy fields {unknown}; valid: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def key(self) -> str:
        fields = asdict(self)
        for name, before in ADDED_FIELDS.items():
            if fields[name] == before:
                del fields[name]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]

    def checkpoint_steps(self) -> list[int]:
        """Step 0 plus ``n_checkpoints`` log-spaced steps up to ``max_steps`` (Pythia-style dense early sampling)."""
        logspaced = np.geomspace(1, self.max_steps, num=max(self.n_checkpoints, 2))
        steps = {0, self.max_steps, *(int(round(s)) for s in logspaced), *self.extra_steps}
        return sorted(s for s in steps if 0 <= s <= self.max_steps)

    def directory(self, cache_dir: str | os.PathLike) -> Path:
        """Where the checkpoints of this toy world live in the cache (whether or not they exist yet)."""
        return Path(cache_dir).expanduser() / f"toy-{self.key()}"

    def is_pretrained(self, cache_dir: str | os.PathLike) -> bool:
        return (self.directory(cache_dir) / COMPLETE_MARKER).exists()
