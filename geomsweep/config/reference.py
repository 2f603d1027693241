"""Every config field with its type, schema default and help, read from the schema: what ``--help`` prints and what
the docs' config reference is generated from (one source: each field's ``metadata["help"]``)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from omegaconf import MISSING, OmegaConf

from geomsweep.config.schema import Config

CONF = Path(__file__).resolve().parents[1] / "conf"
if not CONF.is_dir():  # the repository's layout: conf/ beside geomsweep/ (the wheel ships it as geomsweep/conf)
    CONF = Path(__file__).resolve().parents[2] / "conf"

USAGE = """\
geomsweep: trace the representation geometry of language models, one MLflow run per Hydra job.

  python -m geomsweep                                     the default trace: the toy model's three phases
  python -m geomsweep -m method=sft,dpo,rlvr seed=0,1,2   post-training compared over seeds
  python -m geomsweep model=pythia-160m checkpoint=log checkpoint.num=12 plan=true   a paper-scale trace's cost
  python -m geomsweep model=local model.path=DIR data=english                        your own model, offline
  python -m geomsweep --cfg job                           the composed config of a command
  python -m geomsweep --help GROUP                        one group's fields (probe, eval.memorization, ...)
"""


@dataclass(frozen=True)
class Row:
    key: str
    type: str
    default: str
    help: str


def type_name(annotation) -> str:
    """A field's type as a reader writes it: ``int | None``, ``list[int]``, ``probe.norm``'s choices."""
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " | ".join(member.value for member in annotation)
    if isinstance(annotation, type):
        return annotation.__name__
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in typing.get_args(annotation))
    if annotation is typing.Any:
        return "any"
    return str(annotation).replace("typing.", "")


def default_of(item: dataclasses.Field) -> str:
    if item.default_factory is not dataclasses.MISSING:
        value = item.default_factory()
        return "(group)" if dataclasses.is_dataclass(value) else repr(value)
    if item.default is dataclasses.MISSING or item.default == MISSING:
        return "(from the preset)"
    value = item.default
    return "null" if value is None else value.value if isinstance(value, Enum) else repr(value)


def nested(annotation):
    """The dataclass a field holds (``ToyConfig | None`` holds ``ToyConfig``), or None."""
    for arg in (annotation, *typing.get_args(annotation)):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def rows(cls=Config, prefix: str = "") -> list[Row]:
    """Every field under ``cls``, depth first, dotted as on the command line."""
    out = []
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        key, annotation = f"{prefix}{item.name}", hints[item.name]
        inner = nested(annotation)
        out.append(
            Row(key, inner.__name__ if inner else type_name(annotation), default_of(item), item.metadata["help"])
        )
        if inner is not None:
            out += rows(inner, f"{key}.")
    return out


def presets(group: str) -> list[str]:
    """The presets a command line can pick for a top-level group (``probe=last_token``)."""
    folder = CONF / group
    return sorted(p.stem for p in folder.rglob("*.yaml")) if folder.is_dir() else []


def groups() -> list[str]:
    return [item.name for item in dataclasses.fields(Config) if nested(typing.get_type_hints(Config)[item.name])]


def group_help(group: str) -> str:
    """One group's fields (``--help probe``), or the groups there are."""
    selected = [r for r in rows() if r.key == group or r.key.startswith(group + ".")]
    if not selected:
        raise KeyError(f"no config group {group!r}; valid: {', '.join(groups())} (or a nested one, e.g. eval.harness)")
    width = max(len(r.key) for r in selected)
    lines = [f"{r.key:<{width}}  {r.help}\n{'':<{width}}  [{r.type}; default {r.default}]" for r in selected]
    top = group.split(".")[0]
    choices = f"\npresets: {top}={', '.join(presets(top))}\n" if presets(top) else "\n"
    return "\n".join(lines) + choices


def app_help() -> str:
    """Hydra's ``--help`` page (its template: ``$APP_CONFIG_GROUPS`` and ``$FLAGS_HELP`` are Hydra's): the usage,
    every top-level field with its help, then Hydra's groups and flags."""
    top = [r for r in rows() if "." not in r.key]
    width = max(len(r.key) for r in top)
    fields = "\n".join(f"  {r.key:<{width}}  {r.help}" for r in top)
    return (
        f"{USAGE}\n== Fields (python -m geomsweep --help GROUP: a group's own) ==\n{fields}\n\n"
        "== Configuration groups (GROUP=PRESET) ==\n$APP_CONFIG_GROUPS\n\n== Hydra ==\n$FLAGS_HELP"
    )


def markdown() -> str:
    """The docs' config reference: one table per top-level group, every field's type, schema default and help."""
    out = [
        "# Config reference",
        "",
        "Generated from the schema (`geomsweep/config/`: each field's help text); a preset (`conf/<group>/*.yaml`)",
        "may set other values than the schema's defaults: `python -m geomsweep <overrides> --cfg job` shows a",
        "command's composed config.",
        "",
    ]
    by_group: dict[str, list[Row]] = {}
    for row in rows():
        by_group.setdefault(row.key.split(".")[0], []).append(row)
    for group, members in by_group.items():
        out += [f"## `{group}`", ""]
        if presets(group):
            out += [f"Presets: {', '.join(f'`{group}={p}`' for p in presets(group))}", ""]
        out += ["| field | type | default | help |", "|---|---|---|---|"]
        cell = lambda text: str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")  # noqa: E731
        out += [f"| `{r.key}` | {cell(r.type)} | `{cell(r.default)}` | {cell(r.help)} |" for r in members]
        out.append("")
    return "\n".join(out)


def register() -> None:
    """``${geomsweep.help:}``: conf/config.yaml's ``hydra.help.template``."""
    OmegaConf.register_new_resolver("geomsweep.help", app_help, replace=True)


register()
