"""A post-training job: one base checkpoint -> the method's TRL trainer (SFT, DPO, GRPO, ...), with geometry
measured along the way and ID/OOD behavior at both ends, all into the job's MLflow run (which the trainer's own
MLflow reporting joins, since it is already active).

The trainer is whatever ``method.trainer`` names (``trl.SFTTrainer``, ``trl.DPOTrainer``, ``trl.GRPOTrainer``),
built from ``method.trainer_config`` with ``method.args`` passed straight through: one lookup, in the config.
"""

from __future__ import annotations

import dataclasses
import tempfile
from contextlib import nullcontext
from pathlib import Path

import datasets
import pandas as pd
from hydra.utils import get_class, get_method
from peft import LoraConfig, PeftModel
from transformers.integrations import MLflowCallback

from geomsweep.behavior.harness import harness_for, paired_change
from geomsweep.behavior.memorization import memorization_for
from geomsweep.behavior.sample_eval import INTERVALS, sampling_probe
from geomsweep.core import processes
from geomsweep.core.definitions import headline_layer
from geomsweep.core.measure import measure_model, resolve_device, resolve_dtype
from geomsweep.core.spectra import change_metrics
from geomsweep.core.weights import weight_metrics, weight_spectra
from geomsweep.estimate.memory import plan_memory
from geomsweep.estimate.peak import GIB, PeakMeter
from geomsweep.keys import metrics as M
from geomsweep.keys.tags import TAG_BASE_REVISION, TAG_BASE_STEP
from geomsweep.post_training.callbacks import GeometryCallback, MethodMLflowCallback
from geomsweep.post_training.evaluate import evaluate_split
from geomsweep.post_training.launch import in_worker, launch
from geomsweep.results import artifacts, plots
from geomsweep.results.artifacts import spectrum_table
from geomsweep.sources import checkpoints as ckpts
from geomsweep.sources.data import ProbeSet
from geomsweep.sources.models import model_source, resolve
from geomsweep.sources.tasks import load_task


def base_checkpoint(settings) -> ckpts.Checkpoint:
    """The one pretraining checkpoint post-training starts from (``checkpoint=`` is the sweep axis)."""
    selected = resolve(settings.model, settings.checkpoint, settings.cache_dir)
    if len(selected) != 1:
        steps = [c.step for c in model_source(settings.model).available(settings.model, settings.cache_dir)]
        raise ValueError(
            f"method={settings.method.name} post-trains one base checkpoint, but checkpoint.select="
            f"{settings.checkpoint.select} picks {len(selected)} "
            f"({', '.join(c.revision for c in selected[:4])}{', ...' if len(selected) > 4 else ''}); "
            f"use checkpoint=final or checkpoint=step checkpoint.step=N with N one of {steps}"
        )
    return selected[0]


def trainer_config(
    config_cls, args: dict, output_dir: str, device: str, seed: int, progress: bool, report: bool = True
):
    """``config_cls(**args)`` with output, reporting and device settings filled in (the user's args win); the
    fields and their types were checked when the config was (geomsweep.config.trainer_fields.check_fields)."""
    on_cpu = not device.startswith("cuda")
    settings = {
        "output_dir": output_dir,
        "report_to": ["mlflow"] if report else "none",
        "save_strategy": "no",
        "seed": seed,
        "data_seed": seed,
        "disable_tqdm": not progress,
        "bf16": False if on_cpu else args.get("bf16", None),
        "use_cpu": on_cpu,
        "logging_first_step": True,
    }
    fields = {f.name for f in dataclasses.fields(config_cls)}
    return config_cls(**({k: v for k, v in settings.items() if k in fields} | dict(args)))


def lora_config(lora) -> LoraConfig:
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules),
        task_type="CAUSAL_LM",
    )


def trained_parameters(trainer) -> dict[str, str]:
    """How many parameters train, and what DPO-style trainers compare against: with LoRA the reference is the
    policy with its adapter disabled, so no second copy of the model is loaded."""
    model = trainer.model
    if isinstance(model, PeftModel):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        trainable, total = model.num_parameters(only_trainable=True), model.num_parameters()
    if getattr(trainer, "ref_model", None) is not None:
        reference = "a frozen copy"
    elif hasattr(trainer, "ref_model") and isinstance(model, PeftModel):
        reference = "the policy with its adapter disabled"
    else:
        reference = "none"
    return {
        "post_training.parameters": str(total),
        "post_training.trainable_parameters": str(trainable),
        "post_training.trainable_fraction": f"{trainable / total:.4g}",
        "post_training.reference_model": reference,
    }


def save_model(model, tokenizer, directory: Path, log) -> None:
    """The post-trained model as the run's artifact ``model``, loadable by transformers (``model=mlflow``): a LoRA
    model is saved with its adapters merged into the weights."""
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    log.directory(directory, "model")


def post_train(settings, probe: ProbeSet, log) -> dict[int, dict[str, float]]:
    """Train, measuring as configured; returns the callback's history (post-training step -> metrics). With
    ``method.processes`` > 1, in that many processes (geomsweep.post_training.launch), each of which runs this again."""
    if settings.method.processes > 1 and not in_worker():
        return log_history(settings, launch(settings, probe, log), log)
    if not settings.progress:
        datasets.disable_progress_bars()
    device = resolve_device(settings.device)
    model, tokenizer, meter = load_base(settings, device, log)
    # one sampler (one vLLM engine) before, during and after training, in the process that logs
    with sampling_probe(settings) if processes.is_main() else nullcontext() as sampling:
        measure = Measurer(settings, tokenizer, probe, log, sampling)
        history, _ = train_stage(settings, model, tokenizer, measure, log, device)
        measure.log_spectra(max(history))
    log_peak(log, meter)
    log_pass_at_k(sampling, log)
    return history if in_worker() else log_history(settings, history, log)


def log_history(settings, history: dict[int, dict[str, float]], log) -> dict[int, dict[str, float]]:
    """The job's post-training history as a table and its trajectory figure (in the process that owns the run)."""
    frame = artifacts.post_training_history(history)
    log.table(frame, "post_training/history.csv")
    figure = artifacts.post_training_figure(frame, settings.method.name, settings.method.stages, log.name)
    if figure is not None:
        log.figure(figure, "plots/trajectory.png")
    return history


def log_peak(log, meter: PeakMeter) -> None:
    """Beside the plan's ``memory.total_gib``: what the job added to the process at its peak, from before its
    weights were loaded."""
    log.params({"memory.peak_gib": f"{meter.added() / GIB:.3g}"})


def load_base(settings, device: str, log):
    """(model, tokenizer, a meter started before loading) of the base checkpoint, the memory plan logged first."""
    base = base_checkpoint(settings)
    dtype = resolve_dtype(settings.dtype, device, settings.model.dtype)
    plan = plan_memory(settings, device, dtype)
    if plan is not None:
        log.params(plan.params())
    meter = PeakMeter(device).start()
    model, tokenizer = base.load(device, dtype, trust_remote_code=settings.model.trust_remote_code)
    log.tags({TAG_BASE_REVISION: base.revision, TAG_BASE_STEP: base.step})
    return model, tokenizer, meter


class Measurer:
    """The probe geometry of a model, and its ID/OOD behavior on ``settings.task`` (greedy evaluation and, with a
    sampling probe, pass@k and diversity; completions logged as tables)."""

    def __init__(self, settings, tokenizer, probe: ProbeSet, log, sampling):
        self.settings, self.tokenizer, self.probe, self.log, self.sampling = settings, tokenizer, probe, log, sampling
        self.task = load_task(settings.task, seed=settings.seed)
        self.base = None  # the first measurement's geometry: changes are measured from it
        self.latest = None  # the last measurement's
        self.harness = harness_for(settings) if processes.is_main() else None  # lm-eval's tasks, at both ends
        self.base_items: dict[str, list[float]] | None = None  # the base model's per-item harness scores
        self.memorization = memorization_for(settings) if processes.is_main() else None  # at both ends too
        self.base_memorized: pd.DataFrame | None = None  # the base model's per-item memorization table

    def geometry(self, model) -> dict[str, float]:
        """The probe geometry, and its change since the first measurement (the base model) with paired SEs."""
        probe = self.settings.probe
        texts, documents = self.probe.texts, self.probe.documents
        measured = measure_model(model, self.tokenizer, texts, probe, progress=False, documents=documents)
        now = measured.geometry[headline_layer(probe.layers)]
        self.base, self.latest = self.base or now, now
        # data-free, beside the geometry: one process computes them (every one holds the same whole weights)
        weights = weight_metrics(weight_spectra(model)) if probe.weights and processes.is_main() else {}
        return measured.metrics(headline_layer(probe.layers), probe.loss) | change_metrics(self.base, now) | weights

    def log_spectra(self, last_step: int) -> None:
        """The base model's eigenspectrum and the post-trained one's, as a table and one overlaid plot: how the
        method reshaped the representations."""
        if not processes.is_main() or self.base is None or not (self.base.finite and self.latest.finite):
            return
        probe = self.settings.probe
        spectra = {0: self.base, last_step: self.latest}
        self.log.table(
            pd.concat([spectrum_table(g.eigs, step=step) for step, g in spectra.items()]), "spectra/eigenspectra.csv"
        )
        figure = plots.eigenspectra(
            {step: g.eigs for step, g in spectra.items()},
            {step: g.fit for step, g in spectra.items()},
            probe.fit_start,
            probe.fit_end,
            f"{self.log.name}: base (step 0) and after {self.settings.method.name} (step {last_step})",
        )
        self.log.figure(figure, "plots/eigenspectrum.png")

    def behavior(self, model, step: int) -> dict[str, float]:
        """Evaluation and sampling, by the process that logs (the only one, or rank 0 of several)."""
        if not processes.is_main():
            return {}
        task_cfg = self.settings.task
        splits = {"id": self.task.id_eval, "ood": self.task.ood_eval}
        metrics = {
            f"{M.EVAL}{name}_{key}": value
            for name, split in splits.items()
            if split is not None
            for key, value in evaluate_split(
                model, self.tokenizer, split, task_cfg.extractor, task_cfg.max_new_tokens
            ).items()
        }
        if self.sampling is not None:
            values, tables = self.sampling.update(model, self.tokenizer, step)
            for path, table in tables.items():
                self.log.json_table(table, path)
            metrics |= values
        if self.harness is not None:
            metrics |= self.downstream(model, step)
        if self.memorization is not None:
            metrics |= self.memorized(model, step)
        return metrics

    def memorized(self, model, step: int) -> dict[str, float]:
        """Memorization on the model as it is, and after the base its change, paired over the same items."""
        scored = self.memorization.measure(model, self.tokenizer)
        self.log.table(scored.table, f"{M.MEMORIZATION_ITEMS_TABLE}{step}.csv")
        if self.base_memorized is None:
            self.base_memorized = scored.table
            return scored.metrics
        return scored.metrics | self.memorization.change(self.base_memorized, scored.table)

    def between(self, model, step: int) -> dict[str, float]:
        """lm-eval's tasks at a geometry step between the ends, where ``eval.harness.every`` divides it."""
        every = self.settings.eval.harness.every
        if self.harness is None or not every or step % every:
            return {}
        return self.downstream(model, step)

    def downstream(self, model, step: int) -> dict[str, float]:
        """lm-eval's tasks on the model as it is, and after the base their change from it, paired over the same
        items: ``downstream/<task>/<metric>_change`` and ``_change_se`` (sd of the per-item differences / sqrt n)."""
        scored = self.harness.evaluate(model, self.tokenizer)
        self.log.document(scored.results, f"downstream/results_step{step}.json")
        items = scored.item_scores()
        if self.base_items is None:
            self.base_items = items
            return scored.metrics
        changes = {}
        for name, after in items.items():
            before = self.base_items.get(name)
            if before is None or len(before) != len(after):
                continue
            key = M.change(M.DOWNSTREAM + name)
            changes[key], changes[M.se(key)] = paired_change(before, after)
        return scored.metrics | changes


def train_stage(settings, model, tokenizer, measure: Measurer, log, device: str, offset: int = 0, prefix: str = ""):
    """Train ``model`` with ``settings.method``'s TRL trainer, measured by ``measure`` at steps ``offset + step``;
    returns (history, the trained model). ``prefix`` keeps a pipeline stage's params apart from the others'."""
    method = settings.method
    task = load_task(settings.task, seed=settings.seed)
    extra = {"reward_funcs": get_method(method.reward)(settings.task.extractor)} if method.reward else {}
    if method.peft == "lora":
        extra["peft_config"] = lora_config(method.lora)
    callback = GeometryCallback(
        measure.geometry, measure.behavior, log, method.geometry_every, offset, measure_between=measure.between
    )
    with tempfile.TemporaryDirectory(prefix=f"geomsweep-{method.name}-") as output_dir:
        # after a pipeline's first stage the trainer's own MLflow reporting is off: it would log its params again,
        # with other values, and MLflow params cannot change
        config = trainer_config(
            get_class(method.trainer_config),
            method.args,
            output_dir,
            device,
            settings.seed,
            settings.progress,
            report=not offset,
        )
        trainer = get_class(method.trainer)(
            model=model,
            args=config,
            train_dataset=task.for_method(method.name),
            processing_class=tokenizer,
            callbacks=[callback],
            **extra,
        )
        if trainer.pop_callback(MLflowCallback) is not None:  # its metrics under the method's name
            trainer.add_callback(MethodMLflowCallback(method.name))
        log.params({prefix + key: value for key, value in trained_parameters(trainer).items()})
        stage = prefix.replace(".", "_")  # a pipeline stage's own files: sft_trainer_args.json, ...
        log.text(config.to_json_string(), f"post_training/{stage}trainer_args.json")
        log.text(trainer.model.config.to_json_string(), f"post_training/{stage}model_config.json")
        trainer.train()
        if method.save:
            save_model(trainer.model, tokenizer, Path(output_dir) / "saved", log)
    return callback.history, trainer.model


def log_pass_at_k(sampling, log) -> None:
    """The pass@k curves before and after, and the paired change with its interval at the last step."""
    if sampling is not None and sampling.curves:
        log.figure(plots.pass_at_k(sampling.curves, sampling.settings.n, log.name), "plots/pass_at_k.png")
        log.metrics(sampling.change(), step=max(step for _, step in sampling.per_problem))
        log.table(sampling.interval_table(), INTERVALS)
