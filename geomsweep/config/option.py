"""A config field and its help text, as TRL's ``field(metadata={"help": ...})``: one source for ``--help`` and the
docs' config reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import field
from typing import Any


def option(default: Any = NO_DEFAULT, help: str = "", *, factory: Callable[[], Any] | None = None) -> Any:  # noqa: A002
    """A dataclass field with ``metadata["help"]``; ``factory`` for a mutable default (a list, a dict, a config)."""
    if not help:
        raise ValueError("every config field carries its help text")
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def help_of(cls, name: str) -> str:
    """A field's help text (empty where it has none)."""
    return cls.__dataclass_fields__[name].metadata.get("help", "")
