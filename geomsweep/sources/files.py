"""Local data files, checked before `datasets` reads them: its errors name neither the file nor the cause."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow
import pyarrow.parquet


def check_file(path: Path, key: str = "data.path") -> None:
    """Refuse a file `datasets` would fail on with a message naming neither the file nor the cause: empty, not
    UTF-8 text, a JSON Lines line that is not JSON, or not Parquet. The message names the file and what is wrong."""
    if path.stat().st_size == 0:
        raise ValueError(f"{key} {str(path)!r} is empty")
    if path.suffix == ".parquet":
        try:
            pyarrow.parquet.read_metadata(path)
        except (pyarrow.ArrowInvalid, OSError) as err:
            raise ValueError(f"{key} {str(path)!r} is not a Parquet file ({err})") from None
        return
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{key} {str(path)!r} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
            f"{err.start}); convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            try:
                if line.strip():
                    json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{key} {str(path)!r}: line {number} is not valid JSON ({err.msg})") from None
    elif path.suffix == ".json":
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{key} {str(path)!r} is not valid JSON ({err.msg} at line {err.lineno})") from None
