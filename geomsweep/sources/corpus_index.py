"""An infini-gram index of a local corpus, built with the ``infini-gram`` package's own indexer.

The indexer tokenizes with hub tokenizers only (gpt2, llama, olmo) or reads raw UTF-8 bytes; geomsweep writes the
tokenized shard itself (``tokenized.0``: each document as a separator and its token ids; ``offset.0``: where each
starts, as the indexer's first step leaves them), in any tokenizer's ids, and the indexer then finds its first step
done and builds the suffix array. ``geomsweep-index.json`` records what the engine needs to read it back.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock
from transformers import AutoTokenizer

from geomsweep.config.toy import ToyConfig
from geomsweep.sources.toy.pretrain import LOCK_TIMEOUT_S, held, train_documents

INFO_FILE = "geomsweep-index.json"  # written last: an index folder without it is incomplete
DTYPES = {"u8": np.uint8, "u16": np.uint16, "u32": np.uint32}
BYTES = "bytes"  # the tokenizer of an index of raw UTF-8 bytes
# The u8 engine reads vocab_size as an 8-bit integer, so 256 wraps to 0 and its constructor refuses every call;
# byte 254 never occurs in UTF-8 and stands for the end of a document.
BYTE_VOCAB, BYTE_EOS = 255, 254


class CorpusIndexError(ValueError):
    """An index that cannot be built or read; the message names the path and the fix."""


@dataclass(frozen=True)
class IndexInfo:
    """What reading an index needs: its token width, its end-of-document id, its tokenizer (a folder or hub name, or
    ``bytes``), and what it holds (``corpus``: a digest of the token ids, so a changed corpus is a new cell)."""

    token_dtype: str
    eos_token_id: int
    vocab_size: int
    tokenizer: str
    documents: int
    tokens: int
    corpus: str

    @classmethod
    def read(cls, index_dir: str | os.PathLike) -> IndexInfo:
        path = Path(index_dir).expanduser() / INFO_FILE
        if not path.is_file():
            raise CorpusIndexError(
                f"no geomsweep infini-gram index at {path.parent} ({INFO_FILE} missing); build one with "
                f"`geomsweep-index CORPUS {path.parent}`"
            )
        return cls(**json.loads(path.read_text()))


def read_corpus(path: str | os.PathLike, field: str = "text") -> Iterator[str]:
    """The documents of a local corpus: each line's ``field`` of a JSON Lines file, each ``.txt`` file whole, or
    every such file under a folder (in name order)."""
    root = Path(path).expanduser()
    files = sorted(p for p in root.rglob("*") if p.suffix in {".jsonl", ".txt"}) if root.is_dir() else [root]
    if not root.exists() or not files:
        raise CorpusIndexError(
            f"corpus {root} has no documents; valid: a .jsonl file (field {field!r}), a .txt file, or a folder of them"
        )
    for file in files:
        if file.suffix == ".txt":
            yield file.read_text()
            continue
        for number, line in enumerate(file.read_text().splitlines(), 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise CorpusIndexError(f"{file}:{number} is not JSON ({err.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get(field), str):
                    raise CorpusIndexError(
                        f"{file}:{number} has no string field {field!r}; valid: one JSON object per "
                        f"line with the document in {field!r}"
                    )
                yield record[field]


def token_ids(texts: Iterable[str], tokenizer) -> tuple[Iterator[list[int]], str, int, int]:
    """Each document's ids after its end-of-document token (as a pretraining stream joins documents), with the
    index's token width, end-of-document id and vocabulary size. ``tokenizer`` None: raw UTF-8 bytes, as
    infini-gram's own indexer writes them (no end-of-document byte: the engine is told one that never occurs)."""
    if tokenizer is None:
        return (list(text.encode()) for text in texts), "u8", BYTE_EOS, BYTE_VOCAB
    eos, vocab = tokenizer.eos_token_id, len(tokenizer)
    dtype = "u16" if vocab < 2**16 - 1 else "u32"  # the all-ones id separates documents in the index
    if eos is None:
        raise CorpusIndexError(f"tokenizer {tokenizer.name_or_path} has no end-of-document token; an index needs one")
    ids = (tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts)
    return ([eos, *doc] for doc in ids), dtype, eos, vocab


def build_index(texts: Iterable[str], out: str | os.PathLike, tokenizer=None, tokenizer_name: str = BYTES) -> IndexInfo:
    """Index ``texts`` into the folder ``out`` (built beside it, then moved into place)."""
    out = Path(out).expanduser().resolve()
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        dtype, eos, vocab, n_docs, n_tokens, digest = write_tokenized(texts, tokenizer, staging)
        suffix_array(staging, dtype, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a corpus that cannot be indexed leaves nothing behind
        raise
    info = IndexInfo(dtype, eos, vocab, tokenizer_name, n_docs, n_tokens, digest)
    (staging / INFO_FILE).write_text(json.dumps(asdict(info), indent=1))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return info


def write_tokenized(texts: Iterable[str], tokenizer, staging: Path) -> tuple[str, int, int, int, int, str]:
    """The corpus as infini-gram's indexer leaves its first step: ``tokenized.0`` and ``offset.0``."""
    docs, dtype, eos, vocab = token_ids(texts, tokenizer)
    separator = np.iinfo(DTYPES[dtype]).max
    digest, n_docs, n_tokens, position = hashlib.sha256(), 0, 0, 0
    with open(staging / "tokenized.0", "wb") as data, open(staging / "offset.0", "wb") as offsets:
        for doc in docs:
            record = np.array([separator, *doc], dtype=DTYPES[dtype]).tobytes()
            offsets.write(np.uint64(position).tobytes())
            data.write(record)
            digest.update(record)
            position, n_docs, n_tokens = position + len(record), n_docs + 1, n_tokens + len(doc)
    if not n_docs:
        raise CorpusIndexError(
            f"nothing to index in {staging.name.removesuffix('.partial')}: the corpus has no documents"
        )
    return dtype, eos, vocab, n_docs, n_tokens, digest.hexdigest()[:16]


def suffix_array(staging: Path, dtype: str, out: Path) -> None:
    """infini-gram's indexer over the tokenized shard: it finds its first step done and builds ``table.0``."""
    indexer = [sys.executable, "-m", "infini_gram.indexing", "--data_dir", str(staging), "--save_dir", str(staging)]
    size = (staging / "tokenized.0").stat().st_size
    memory_gib = max(1, (size * 12) // 2**30 + 1)  # the suffix array's working set, ample
    args = ["--token_dtype", dtype, "--cpus", "1", "--mem", str(memory_gib), "--ulimit", "1024"]
    done = subprocess.run([*indexer, *args], capture_output=True, text=True, check=False)
    if done.returncode or not (staging / "table.0").is_file():
        raise CorpusIndexError(f"infini-gram's indexer failed on {out}: {(done.stderr or done.stdout).strip()[-400:]}")


def toy_index(toy: ToyConfig, world: Path, tokenizer_dir: Path) -> Path:
    """The toy world's pretraining corpus indexed in its own tokens, once, beside its checkpoints (``world``)."""
    out = world.with_name(world.name + "-infinigram")
    if (out / INFO_FILE).exists():
        return out
    with held(FileLock(str(out) + ".lock", timeout=LOCK_TIMEOUT_S), f"another process indexing {out}"):
        if not (out / INFO_FILE).exists():
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
            build_index(train_documents(toy), out, tokenizer, str(tokenizer_dir))
    return out
