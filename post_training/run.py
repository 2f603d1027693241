"""A post-training job: one base checkpoint -> a TRL trainer (SFT, DPO or RLVR), with geometry measured along the
way and ID/OOD behavior at both ends, all into the job's MLflow run (which the trainer's own MLflow reporting
joins, since it is already active)."""

from __future__ import annotations

import tempfile

from omegaconf import OmegaConf

from post_training import dpo, rlvr, sft

TRAINERS = {"sft": sft, "dpo": dpo, "rlvr": rlvr}


def base_checkpoint(cfg):
    """The one pretraining checkpoint post-training starts from (``checkpoint=`` is the sweep axis)."""
    from geomsweep import checkpoints as ckpts

    available = ckpts.available(cfg.model, cfg.cache_dir, cfg.progress)
    selected = ckpts.select(available, cfg.checkpoint.select, cfg.checkpoint.get("steps"))
    if len(selected) != 1:
        raise ValueError(f"method={cfg.method.name} post-trains one base checkpoint, but checkpoint.select="
                         f"{cfg.checkpoint.select} picks {len(selected)} ({', '.join(c.revision for c in selected[:4])}"
                         f"{', ...' if len(selected) > 4 else ''}); use checkpoint=final or checkpoint=step "
                         f"checkpoint.step=N with N one of {[c.step for c in available]}")
    return selected[0]


def post_train(cfg, texts: list[str], log) -> dict[int, dict[str, float]]:
    """Train, measuring as configured; returns the callback's history (post-training step -> metrics)."""
    from geomsweep.behavior.sample_eval import sampling_probe
    from geomsweep.trace import measure_model, resolve_device, resolve_dtype
    from post_training.callbacks import GeometryCallback
    from post_training.data import load_task
    from post_training.evaluate import evaluate_split
    from post_training.rewards import exact_answer
    from post_training.trl_args import trl_config

    method = cfg.method.name
    if not cfg.progress:
        import datasets

        datasets.disable_progress_bars()
    if cfg.get("device_map") is not None:
        raise ValueError(f"device_map={cfg.device_map} applies to measurement (method=none) only; post-training "
                         f"places the model itself (device=...), multi-GPU training goes through accelerate")
    base = base_checkpoint(cfg)
    device = resolve_device(cfg.device)
    model, tokenizer = base.load(device, resolve_dtype(cfg.dtype, device, cfg.model.get("dtype")))
    log.tags({"geomsweep.base_revision": base.revision, "geomsweep.base_step": base.step})
    task = load_task(cfg.task, seed=cfg.seed)
    dataset = task.for_method(method)
    layer = cfg.probe.layers[0]

    def measure(m) -> dict[str, float]:
        geometry, loss, _ = measure_model(m, tokenizer, texts, cfg.probe, progress=False)
        return geometry[layer].metrics() | ({"eval/probe_loss": loss} if cfg.probe.loss else {})

    sampling = sampling_probe(cfg)

    def behave(m, step: int) -> dict[str, float]:
        splits = {"id": task.id_eval, "ood": task.ood_eval}
        metrics = {f"eval/{name}_{key}": value for name, split in splits.items() if split is not None
                   for key, value in evaluate_split(m, tokenizer, split, cfg.task.extractor,
                                                    cfg.task.max_new_tokens).items()}
        return metrics | (sampling.update(m, tokenizer, step, log) if sampling is not None else {})

    callback = GeometryCallback(measure, behave, log, cfg.method.geometry_every)
    module = TRAINERS[method]
    with tempfile.TemporaryDirectory(prefix=f"geomsweep-{method}-") as output_dir:
        config = trl_config(module.CONFIG, OmegaConf.to_container(cfg.method.args, resolve=True), output_dir,
                            device, cfg.seed, cfg.progress)
        reward = exact_answer(cfg.task.extractor) if method == "rlvr" else None
        module.trainer(model, tokenizer, dataset, config, [callback], reward).train()
    if sampling is not None:
        sampling.log_plot(log)
    return callback.history
