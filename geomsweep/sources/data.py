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
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from datasets import load_dataset
from datasets.exceptions import DatasetGenerationError

from geomsweep.config.choices import DataSource
from geomsweep.config.toy import ToyConfig
from geomsweep.sources.files import check_file
from geomsweep.sources.toy.pretrain import probe_documents

FILE_FORMATS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class ProbeSet:
    """The probe texts in their fixed order and, where the source knows it, the document each was cut from: block
    jackknife groups keep a document's texts together (core/states.jackknife_groups). None: independent texts."""

    texts: list[str]
    documents: list[str] | None = None


def probe_set(data_cfg, toy_cfg, n_sequences: int, seed: int = 0, tokenizer=None) -> ProbeSet:
    """The first ``n_sequences`` usable texts of the configured source: at least ``data.min_chars`` characters
    and, with ``data.min_tokens``, more than that many tokens under ``tokenizer`` (the measured model's)."""
    source = data_cfg.source
    if source == "toy":  # the default world's language (toy_cfg None: the default ToyConfig): independent documents
        texts = probe_documents(ToyConfig.from_cfg(toy_cfg), n_sequences, seed=seed)
        return ProbeSet(list(islice(usable(texts, data_cfg, tokenizer), n_sequences)))
    if source == "english":  # real prose, offline: a real model's default when the hub is out of reach
        return _probe_set(islice(usable_rows(english_windows(), data_cfg, tokenizer), n_sequences), True)
    if source == "files":
        dataset = _load_files(str(data_cfg.path))
    elif source == "hub":
        dataset = load_dataset(data_cfg.name, data_cfg.config, split=data_cfg.split, streaming=True)
    else:
        raise ValueError(f"unknown data.source {source!r}; valid: {', '.join(DataSource)}")
    field, document = data_cfg.text_field, data_cfg.document_field
    chosen = _probe_set(
        islice(usable_rows(document_rows(dataset, field, document), data_cfg, tokenizer), n_sequences),
        document is not None,
    )
    if not chosen.texts:
        longer = f" and more than {data_cfg.min_tokens} tokens" if data_cfg.min_tokens else ""
        raise ValueError(
            f"the probe dataset {data_cfg.path or data_cfg.name!r} has no text of at "
            f"least {data_cfg.min_chars} characters{longer} in field {field!r}"
        )
    return chosen


def document_rows(dataset, field: str, document: str | None) -> Iterable[tuple[str | None, str]]:
    """The dataset's (document, text) rows from its columns ``document`` and ``field``. A column it lacks is refused
    by name before any row is used: up front where the dataset lists its columns, else (a stream whose features
    are unknown) at the first row."""
    listed = dataset.column_names
    if listed is not None:
        _check_columns(listed, field, document)
    for i, row in enumerate(dataset):
        if i == 0 and listed is None:
            _check_columns(list(row), field, document)
        yield (str(row[document]) if document else None), row[field]


def _check_columns(columns: list[str], field: str, document: str | None) -> None:
    for name, key in ((field, "text_field"), (document, "document_field")):
        if name is not None and name not in columns:
            raise ValueError(f"data.{key} {name!r} is not a column of the dataset; columns: {columns}")


def probe_texts(data_cfg, toy_cfg, n_sequences: int, seed: int = 0, tokenizer=None) -> list[str]:
    """``probe_set``'s texts alone."""
    return probe_set(data_cfg, toy_cfg, n_sequences, seed, tokenizer).texts


def _probe_set(rows: Iterable[tuple[str | None, str]], with_documents: bool) -> ProbeSet:
    rows = list(rows)
    return ProbeSet([text for _, text in rows], [document for document, _ in rows] if with_documents else None)


def usable_rows(rows: Iterable[tuple], data_cfg, tokenizer=None) -> Iterable[tuple]:
    """The (document, text) rows whose text has at least ``data.min_chars`` characters and more than
    ``data.min_tokens`` tokens (lazily: a stream is read only as far as needed)."""
    if data_cfg.min_tokens and tokenizer is None:
        raise ValueError(
            f"data.min_tokens={data_cfg.min_tokens} counts tokens under the measured model's "
            f"tokenizer, and none was given"
        )
    for document, text in rows:
        if not isinstance(text, str) or len(text.strip()) < data_cfg.min_chars:
            continue
        if data_cfg.min_tokens and len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= data_cfg.min_tokens:
            continue
        yield document, text


def usable(texts: Iterable, data_cfg, tokenizer=None) -> Iterable[str]:
    """The texts that pass ``usable_rows``' filters."""
    return (text for _, text in usable_rows(((None, text) for text in texts), data_cfg, tokenizer))


def english_windows(words_per_text: int = 120, stride: int = 40) -> list[tuple[str, str]]:
    """Real English prose available offline on every Debian system: the licence texts of base-files
    (/usr/share/common-licenses, which may be copied verbatim), each cut into overlapping windows of words, as
    (licence, window). About 900 windows of 120 words, each of more than 127 SmolLM2 tokens: enough to smoke-test
    a real model without the hub (tests, ``make bench``). A window never spans two licences, and a licence present
    under two names (GPL is GPL-3) is read once: duplicates would count one text twice."""
    folder = Path("/usr/share/common-licenses")
    files = sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError("no /usr/share/common-licenses here (Debian's base-files): no offline English text")
    windows, seen = [], set()
    for file in files:
        words = file.read_text().split()
        if tuple(words) in seen:
            continue
        seen.add(tuple(words))
        starts = range(0, max(len(words) - words_per_text, 0) + 1, stride)
        windows += [(file.resolve().name, " ".join(words[i : i + words_per_text])) for i in starts]
    return windows


def english_texts(words_per_text: int = 120, stride: int = 40) -> list[str]:
    """``english_windows``' texts alone."""
    return [text for _, text in english_windows(words_per_text, stride)]


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
