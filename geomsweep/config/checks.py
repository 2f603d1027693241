"""The config checked as a whole, before any model loads or any run opens: keys the schema does not declare, the typed
objects built (every ``__post_init__``), the TRL class ``method.args`` goes to, and a pipeline's stages composed."""

from __future__ import annotations

import dataclasses
import importlib

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from geomsweep.config.errors import ConfigError, require
from geomsweep.config.overrides import without
from geomsweep.config.schema import Config
from geomsweep.config.trainer_fields import check_fields


def unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys of ``node`` that its schema does not declare (added with ``+``: a typo such as ``+probe.n_sequence``);
    free-form dicts (``method.args``, ``sampler.engine``, ...) may hold any key."""
    kind = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(kind):
        return []
    fields = {f.name for f in dataclasses.fields(kind)}
    found = [f"{prefix}{key}" for key in node if key not in fields]
    for key in sorted(fields & set(node)):
        child = None if OmegaConf.is_missing(node, key) else node[key]
        if isinstance(child, DictConfig):
            found += unknown_keys(child, f"{prefix}{key}.")
    return found


def check(cfg: DictConfig) -> Config:
    """The composed config as typed objects, every ``__post_init__`` run, and ``method.args`` checked against the
    TRL config class; a ConfigError (one line) for the first bad value. Loads no model, opens no run."""
    unknown = unknown_keys(cfg)
    if unknown:
        raise ConfigError(
            f"unknown config keys {unknown} (added with '+'); every key, its type and default: "
            f"python -m geomsweep --cfg job, or geomsweep/config/schema.py"
        )
    try:
        typed = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as err:  # OmegaConf wraps errors raised while building the dataclasses, or a missing value
        cause = err.__cause__ or err.__context__
        if isinstance(cause, ConfigError):
            raise ConfigError(str(cause)) from None
        if getattr(err, "full_key", "").startswith("checkpoint.steps") and cfg.checkpoint.get("step", 0) is None:
            raise ConfigError("checkpoint=step needs checkpoint.step=N, the pretraining step to measure") from None
        raise ConfigError(str(err).splitlines()[0] + _where(err)) from None
    if not isinstance(typed, Config):
        raise ConfigError("the config was not composed with geomsweep's schema (conf/config.yaml lists it first)")
    if typed.method.trainer_config:  # a pipeline's stages are checked when they are composed
        check_fields(importable(typed.method.trainer_config, "method.trainer_config"), typed.method.args, "method.args")
    return typed


def importable(dotted: str, key: str) -> type:
    """The class a dotted path names, or one line naming the key, the value and why it cannot be had."""
    module, _, name = dotted.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name) if module else None
    except ImportError as err:
        raise ConfigError(f"{key}={dotted!r}: cannot import {module!r} ({err}); valid: e.g. trl.SFTConfig") from None
    except AttributeError:
        raise ConfigError(f"{key}={dotted!r}: {module!r} has no {name!r}; valid: e.g. trl.SFTConfig") from None
    require(isinstance(found, type), f"{key}={dotted!r} names no class; valid: e.g. trl.SFTConfig")
    return found


def stage_configs(settings: Config) -> list[tuple[str, Config]]:
    """``method=pipeline``: each stage's typed config, what ``method=<stage>`` with this job's other overrides
    composes (inside a Hydra app); [] for a single method."""
    if not settings.method.stages:
        return []
    overrides = without(HydraConfig.get().overrides.task, ("method=", "method.stages"))
    return [
        (stage, check(compose(config_name="config", overrides=[*overrides, f"method={stage}"])))
        for stage in settings.method.stages
    ]


def _where(err: Exception) -> str:
    key = getattr(err, "full_key", None)
    return f" (at {key})" if key else ""
