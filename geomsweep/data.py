"""Probe texts: the sequences whose last-token representations are measured.

``data.source=toy`` draws held-out documents of the embedded synthetic language; ``files`` reads local text,
JSON(L), CSV or Parquet files through `datasets`; ``hub`` names a hub dataset (needs network or a local cache).
"""

from __future__ import annotations

from pathlib import Path

from datasets import load_dataset

from geomsweep.toy.config import ToyConfig
from geomsweep.toy.pretrain import probe_documents

SOURCES = ("toy", "files", "hub")
FILE_FORMATS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def probe_texts(data_cfg, toy_cfg, n_sequences: int, seed: int = 0) -> list[str]:
    """The first ``n_sequences`` usable texts (at least ``data.min_chars`` characters) of the configured source."""
    source = data_cfg.source
    if source == "toy":  # the default world's language (toy_cfg None: the default ToyConfig)
        return probe_documents(ToyConfig.from_cfg(toy_cfg), n_sequences, seed=seed)
    if source == "files":
        dataset = _load_files(str(data_cfg.path))
    elif source == "hub":
        dataset = load_dataset(data_cfg.name, data_cfg.config, split=data_cfg.split)
    else:
        raise ValueError(f"unknown data.source {source!r}; valid: {', '.join(SOURCES)}")
    field = data_cfg.text_field
    if field not in dataset.column_names:
        raise ValueError(f"data.text_field {field!r} is not a column of the dataset; columns: {dataset.column_names}")
    min_chars = int(data_cfg.min_chars)
    texts = [t for t in dataset[field] if isinstance(t, str) and len(t.strip()) >= min_chars][:n_sequences]
    if not texts:
        raise ValueError(
            f"the probe dataset {data_cfg.path or data_cfg.name!r} has no text of at "
            f"least {min_chars} characters in field {field!r}"
        )
    return texts


def _load_files(path: str):
    files = Path(path).expanduser()
    if not files.exists():
        raise FileNotFoundError(f"data.path {path!r} does not exist")
    suffix = files.suffix if files.is_file() else next((p.suffix for p in sorted(files.iterdir()) if p.is_file()), "")
    if suffix not in FILE_FORMATS:
        raise ValueError(
            f"data.path {path!r}: cannot read {suffix or 'an empty directory'!r}; "
            f"valid file types: {', '.join(FILE_FORMATS)}"
        )
    data_files = str(files) if files.is_file() else str(files / f"*{suffix}")
    return load_dataset(FILE_FORMATS[suffix], data_files=data_files, split="train")
