"""Pretrain the embedded tiny GPT-NeoX on the synthetic corpus, saving checkpoints at log-spaced steps.

The checkpoints are laid out like a hub model with one revision per directory (``step0``, ``step1``, ...,
each a ``save_pretrained`` folder with safetensors weights and the tokenizer), so the same loader serves the toy
model and local mirrors of Pythia/OLMo. Results are cached under a hash of the configuration: a second run
with the same settings reuses them, and concurrent jobs wait on a file lock instead of training twice.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from filelock import FileLock, Timeout
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import (
    DataCollatorForLanguageModeling,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    PreTrainedTokenizerFast,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging

from geomsweep.config.toy import COMPLETE_MARKER, ToyConfig
from geomsweep.sources.toy.corpus import generate_documents, make_language

TRAIN_SEED_OFFSET, PROBE_SEED_OFFSET = 1_000, 2_000
EOS = "<eos>"  # the toy tokenizer's end of document (and beginning: every document follows one in pretraining)


def language(cfg: ToyConfig):
    return make_language(
        n_words=cfg.n_words,
        n_subjects=cfg.n_subjects,
        zipf_exponent=cfg.zipf_exponent,
        n_successors=cfg.n_successors,
        follow_prob=cfg.follow_prob,
        seed=cfg.seed,
    )


def documents(cfg: ToyConfig, n: int, seed: int, **kwargs) -> list[str]:
    """``n`` documents of this world's language from the seed stream ``seed``, of its lengths unless told."""
    return generate_documents(
        language(cfg), n, seed=seed, **({"min_words": cfg.min_words, "max_words": cfg.max_words} | kwargs)
    )


def train_documents(cfg: ToyConfig) -> list[str]:
    return documents(cfg, cfg.n_train_docs, seed=cfg.seed + TRAIN_SEED_OFFSET)


def probe_documents(cfg: ToyConfig, n: int, seed: int = 0, min_words: int = 4) -> list[str]:
    """Held-out documents of the same language (a seed stream disjoint from the training one), each cut at a
    random word: like natural text truncated to a context length, the last token varies from text to text."""
    docs = documents(cfg, n, seed=cfg.seed + PROBE_SEED_OFFSET + seed)
    rng = np.random.default_rng(cfg.seed + PROBE_SEED_OFFSET + seed)
    cut = []
    for doc in docs:
        words = doc.split()
        cut.append(" ".join(words[: int(rng.integers(min(min_words, len(words)), len(words) + 1))]))
    return cut


def train_tokenizer(docs: list[str], vocab_size: int):
    """A BPE tokenizer trained offline with `tokenizers`, wrapped as a transformers fast tokenizer."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, "<pad>", "<unk>"], show_progress=False)
    tok.train_from_iterator(docs, trainer=trainer)
    tok.decoder = decoders.BPEDecoder()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token="<pad>", unk_token="<unk>", bos_token=EOS
    )


def model_config(cfg: ToyConfig, vocab_size: int) -> GPTNeoXConfig:
    """The GPT-NeoX configuration of this toy world's model (its tokenizer sets ``vocab_size``)."""
    return GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=4 * cfg.hidden_size,
        max_position_embeddings=cfg.seq_len,
        tie_word_embeddings=False,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )


def build_model(cfg: ToyConfig, vocab_size: int):
    torch.manual_seed(cfg.seed)
    return GPTNeoXForCausalLM(model_config(cfg, vocab_size))


def packed_dataset(tokenizer, docs: list[str], seq_len: int):
    """Documents joined by EOS and cut into equal blocks: no padding, every token trains."""
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    stream = np.fromiter((t for doc in ids for t in (*doc, tokenizer.eos_token_id)), dtype=np.int64)
    n_blocks = len(stream) // seq_len
    if n_blocks == 0:
        raise ValueError(f"the training corpus has {len(stream)} tokens, fewer than one block of {seq_len}")
    blocks = stream[: n_blocks * seq_len].reshape(n_blocks, seq_len)
    return Dataset.from_dict({"input_ids": blocks.tolist()})


def default_cache_dir() -> str:
    """Where pretrained toy checkpoints live unless cache_dir says otherwise (as in conf/config.yaml)."""
    return os.environ.get("GEOMSWEEP_CACHE") or str(Path.home() / ".cache" / "geomsweep")


LOCK_TIMEOUT_S = 30 * 60  # pretraining the default world takes ~5 minutes on 2 cores; past this, a lock is stuck


@contextmanager
def held(lock: FileLock, holder: str) -> Iterator[None]:
    """``lock`` held for the block. When ``holder`` has it, a line says so before waiting, and a wait past the
    lock's timeout ends in an error naming the lock file to delete."""
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"geomsweep: waiting for {holder} (lock {lock.lock_file})", flush=True)
        try:
            lock.acquire()
        except Timeout:
            raise RuntimeError(
                f"waited {lock.timeout / 60:.0f} minutes for {holder} ({lock.lock_file}); if no such process runs, "
                f"one died holding the lock: delete {lock.lock_file}"
            ) from None
    try:
        yield
    finally:
        lock.release()


def ensure_pretrained(cfg: ToyConfig, cache_dir: str | os.PathLike, progress: bool = True) -> Path:
    """Directory holding ``step{N}`` checkpoints of the toy model; pretrains it first if not cached (the one place
    geomsweep trains the toy: a named step with its own progress bar, never a side effect of listing)."""
    root = cfg.directory(cache_dir)
    if (root / COMPLETE_MARKER).exists():  # written last: a complete world needs no lock (a read-only cache works)
        return root
    lock = FileLock(str(root) + ".lock", timeout=LOCK_TIMEOUT_S)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        open(lock.lock_file, "a").close()
    except OSError as err:
        raise RuntimeError(
            f"cannot write the toy model's cache {root.parent} ({err.strerror or type(err).__name__}); point "
            f"GEOMSWEEP_CACHE or cache_dir= at a writable folder"
        ) from None
    with held(lock, f"another process pretraining {root}"):
        if not (root / COMPLETE_MARKER).exists():
            if progress:
                tqdm.write(
                    f"geomsweep: pretraining the toy model ({cfg.max_steps} steps, width {cfg.hidden_size}) "
                    f"into {root}; later runs reuse it"
                )
            staging = root.with_name(root.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            _pretrain(cfg, staging, progress)
            shutil.rmtree(root, ignore_errors=True)
            staging.rename(root)
    return root


def _pretrain(cfg: ToyConfig, out: Path, progress: bool) -> None:
    hf_logging.disable_progress_bar()  # a "writing shards" bar per checkpoint drowns the training bar

    docs = train_documents(cfg)
    tokenizer = train_tokenizer(docs, cfg.vocab_size)
    model = build_model(cfg, len(tokenizer))
    save_at = set(cfg.checkpoint_steps())

    def save(step: int, model) -> None:
        model.save_pretrained(out / f"step{step}")
        tokenizer.save_pretrained(out / f"step{step}")

    class LogSpacedCheckpoints(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step in save_at:
                save(state.global_step, model)

    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type=cfg.lr_scheduler,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        data_seed=cfg.seed,
        save_strategy="no",
        report_to="none",
        logging_steps=max(cfg.max_steps // 10, 1),
        use_cpu=True,
        bf16=False,
        dataloader_num_workers=0,
        disable_tqdm=not progress,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=packed_dataset(tokenizer, docs, cfg.seq_len),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=[LogSpacedCheckpoints()],
    )
    save(0, model)
    trainer.train()
    shutil.rmtree(out / "trainer", ignore_errors=True)
    (out / "toy_config.json").write_text(json.dumps(asdict(cfg) | {"tokens_per_step": cfg.tokens_per_step}, indent=1))
    (out / COMPLETE_MARKER).write_text("")
