"""Reading Hydra command-line overrides (``key=value``, ``+key=value``, ``~key``, ``a=1,2``): one helper for
every place that asks which key an override sets or which keys a sweep varies."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser


def override_key(override: str) -> str:
    """The key an override sets, as Hydra's parser reads it: ``method`` for ``+method=sft``, ``probe.norm`` for
    ``~probe.norm``."""
    return OverridesParser.create().parse_override(override).get_key_element().lstrip("+~")


def without(overrides: Iterable[str], prefixes: tuple[str, ...]) -> list[str]:
    """The overrides whose key (or ``key=value``) does not start with one of ``prefixes``."""
    return [o for o in overrides if not o.lstrip("+~").startswith(prefixes)]


def varied(overrides: Iterable[str], keys: Sequence[str]) -> list[str]:
    """The overrides that set one of ``keys`` (a sweep's swept keys), as written."""
    return [o for o in overrides if override_key(o) in keys]


def swept_keys(overrides: Sequence[str]) -> list[str]:
    """The keys a multirun's command line sweeps over (``a=1,2``, ``b=range(3)``, ...)."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]


def sweep_cells(overrides: Sequence[str]) -> list[list[str]]:
    """The cells of Hydra's basic sweeper: the cross product of every key's values (a key given twice keeps its
    first place and its last value), each cell the list of ``key=value`` overrides that composes it."""
    choices: dict[str, list[str]] = {}
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        key = o.get_key_element()
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        choices[key] = [f"{key}={value}" for value in values]
    return [list(cell) for cell in itertools.product(*choices.values())]


def cell_name(overrides: Iterable[str]) -> str:
    """A cell named by its overrides, without the plan's own."""
    return " ".join(without(overrides, ("plan=", "tflops="))) or "defaults"
