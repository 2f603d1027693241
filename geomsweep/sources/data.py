"""Probe texts: the sequences whose last-token representations are measured.

``data.source=toy`` draws held-out documents of the embedded synthetic language; ``english`` cuts the English prose
every Debian system has (its licence texts) into windows, for a real model offline; ``files`` reads local text,
JSON(L), CSV or Parquet files through `datasets`; ``hub`` streams a hub dataset (needs network), so a probe set
of 15,000 FineWeb documents never downloads the whole 10B-token sample. Texts are taken in the dataset's own
order, so every checkpoint (and every job) sees the same ones; ``data.min_tokens`` keeps only texts longer than
that many tokens under the measured model's tokenizer (the study: more than 32).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from pathlib import Path

from datasets import load_dataset
from datasets.exceptions import DatasetGenerationError

from geomsweep.sources.choices import DataSource
from geomsweep.sources.files import check_file
from geomsweep.sources.toy.config import ToyConfig
from geomsweep.sources.toy.pretrain import probe_documents

FILE_FORMATS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def probe_texts(data_cfg, toy_cfg, n_sequences: int, seed: int = 0, tokenizer=None) -> list[str]:
    """The first ``n_sequences`` usable texts of the configured source: at least ``data.min_chars`` characters
    and, with ``data.min_tokens``, more than that many tokens under ``tokenizer`` (the measured model's)."""
    source = data_cfg.source
    if source == "toy":  # the default world's language (toy_cfg None: the default ToyConfig)
        texts = probe_documents(ToyConfig.from_cfg(toy_cfg), n_sequences, seed=seed)
        return list(islice(usable(texts, data_cfg, tokenizer), n_sequences))
    if source == "english":  # real prose, offline: a real model's default when the hub is out of reach
        return list(islice(usable(english_texts(), data_cfg, tokenizer), n_sequences))
    if source == "files":
        dataset = _load_files(str(data_cfg.path))
    elif source == "hub":
        dataset = load_dataset(data_cfg.name, data_cfg.config, split=data_cfg.split, streaming=True)
    else:
        raise ValueError(f"unknown data.source {source!r}; valid: {', '.join(DataSource)}")
    field = data_cfg.text_field
    if dataset.column_names is not None and field not in dataset.column_names:
        raise ValueError(f"data.text_field {field!r} is not a column of the dataset; columns: {dataset.column_names}")
    texts = list(islice(usable((row[field] for row in dataset), data_cfg, tokenizer), n_sequences))
    if not texts:
        longer = f" and more than {data_cfg.min_tokens} tokens" if data_cfg.min_tokens else ""
        raise ValueError(
            f"the probe dataset {data_cfg.path or data_cfg.name!r} has no text of at "
            f"least {data_cfg.min_chars} characters{longer} in field {field!r}"
        )
    return texts


def usable(texts: Iterable, data_cfg, tokenizer=None) -> Iterable[str]:
    """The texts that pass ``data.min_chars`` and ``data.min_tokens`` (lazily: a stream is read only as far as
    needed)."""
    if data_cfg.min_tokens and tokenizer is None:
        raise ValueError(
            f"data.min_tokens={data_cfg.min_tokens} counts tokens under the measured model's "
            f"tokenizer, and none was given"
        )
    for text in texts:
        if not isinstance(text, str) or len(text.strip()) < data_cfg.min_chars:
            continue
        if data_cfg.min_tokens and len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= data_cfg.min_tokens:
            continue
        yield text


def english_texts(words_per_text: int = 110, stride: int = 40) -> list[str]:
    """Real English prose available offline on every Debian system: the licence texts of base-files
    (/usr/share/common-licenses, which may be copied verbatim), cut into overlapping windows of words. About 1,000
    texts of 110 words: enough to smoke-test a real model without the hub (tests, ``make bench``)."""
    files = sorted(p for p in Path("/usr/share/common-licenses").glob("*") if p.is_file())
    if not files:
        raise FileNotFoundError("no /usr/share/common-licenses here (Debian's base-files): no offline English text")
    words = " ".join(p.read_text() for p in files).split()
    return [" ".join(words[i : i + words_per_text]) for i in range(0, len(words) - words_per_text, stride)]


def data_files(path: str, key: str = "data.path") -> tuple[list[Path], str]:
    """The files a ``data.path`` names and their one type: the file itself, or a folder's files of one readable
    type (other files beside them, a README say, are left alone); a clear error for anything else."""
    files = Path(path).expanduser()
    valid = f"valid: a file or a folder of files of one type, {', '.join(FILE_FORMATS)}"
    if not files.exists():
        raise FileNotFoundError(f"{key} {path!r} does not exist")
    if files.is_file():
        if files.suffix not in FILE_FORMATS:
            raise ValueError(f"{key} {path!r}: cannot read {files.suffix or 'a file without a suffix'!r}; {valid}")
        return [files], files.suffix
    if not files.is_dir():
        raise ValueError(f"{key} {path!r} is neither a file nor a folder (a FIFO, socket or device); {valid}")
    found = sorted(p for p in files.iterdir() if p.is_file())
    readable = sorted({p.suffix for p in found if p.suffix in FILE_FORMATS})
    if len(readable) != 1:
        what = f"files of several types ({', '.join(readable)})" if readable else "no readable file"
        seen = ", ".join(p.name for p in found[:5]) + (", ..." if len(found) > 5 else "") or "nothing"
        raise ValueError(f"{key} {path!r} holds {what} (it holds: {seen}); {valid}")
    return [p for p in found if p.suffix == readable[0]], readable[0]


def _load_files(path: str):
    chosen, suffix = data_files(path)
    for file in chosen:
        check_file(file)
    try:
        return load_dataset(FILE_FORMATS[suffix], data_files=[str(f) for f in chosen], split="train")
    except DatasetGenerationError as err:  # its own message names neither the file nor the cause
        raise ValueError(f"data.path {path!r} could not be read: {err.__cause__ or err}") from None
