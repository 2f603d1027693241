"""``method.args`` against the TRL config class it is passed to: every key a field, every value of the field's type,
so a typo or a wrong type stops before the trainer is built."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union

from geomsweep.config.errors import require


def check_fields(config_cls, values: dict[str, Any], prefix: str) -> None:
    """Every key of ``values`` is a field of the dataclass ``config_cls`` and its value fits the field's simple
    type (int, float, bool, str, or Optional of one): a typo or a wrong type stops here, not inside the trainer."""
    hints = typing.get_type_hints(config_cls)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - fields)
    require(
        not unknown,
        f"{prefix} has {unknown}, not fields of {config_cls.__module__.split('.')[0]}."
        f"{config_cls.__name__} (it has {len(fields)}, e.g. learning_rate, max_steps, "
        f"per_device_train_batch_size)",
    )
    for key, value in values.items():
        expected = _simple_types(hints.get(key))
        if not expected or value is None:
            continue
        if isinstance(value, bool):  # a bool is an int to Python, never to a config field
            ok = bool in expected
        else:  # an int fits a float field
            ok = isinstance(value, expected) or (float in expected and isinstance(value, int))
        require(
            ok,
            f"{prefix}.{key}={value!r} is not {' or '.join(t.__name__ for t in expected)} "
            f"({config_cls.__name__}.{key})",
        )


def _simple_types(annotation) -> tuple[type, ...]:
    """(int,) for ``int`` or ``Optional[int]``; () when the annotation is anything richer (left to the class)."""
    simple = (bool, int, float, str)
    if annotation in simple:
        return (annotation,)
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if all(a in simple for a in args):
            return tuple(args)
    return ()
