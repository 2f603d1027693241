"""``method.args`` -> a TRL config: the user's fields pass straight through; geomsweep sets only the logistics."""

from __future__ import annotations

import dataclasses


def trl_config(config_cls, args: dict, output_dir: str, device: str, seed: int, progress: bool):
    """``config_cls(**args)`` with output, reporting and device settings filled in. An unknown field is named
    in the error, so a typo never silently falls back to a default."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(args) - fields)
    if unknown:
        raise ValueError(f"method.args has {unknown}, not fields of trl.{config_cls.__name__}; valid fields include "
                         f"learning_rate, max_steps, per_device_train_batch_size, beta, ... "
                         f"(all {len(fields)}: see the TRL docs for {config_cls.__name__})")
    on_cpu = not device.startswith("cuda")
    settings = {
        "output_dir": output_dir, "report_to": ["mlflow"], "save_strategy": "no", "seed": seed, "data_seed": seed,
        "disable_tqdm": not progress, "bf16": False if on_cpu else args.get("bf16", None), "use_cpu": on_cpu,
        "logging_first_step": True,
    }
    return config_cls(**(settings | dict(args)))
