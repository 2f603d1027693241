"""A memory plan for post-training, made before any weight loads: from the model's configuration (its
``config.json``, or the preset's width and depth), the dtype, the method and LoRA, what the weights, gradients,
optimizer states, a reference model and the activations will take, against what the device has.

The terms, per process (``method.processes``: each holds a whole copy under DDP, a 1/N share of weights,
gradients, optimizer states and reference under FSDP or ZeRO-3; on a CPU the N processes share one RAM):
- weights: parameters x bytes of the load dtype;
- gradients and AdamW's two moment estimates: for every trainable parameter, in its own dtype (LoRA adapters are
  kept in float32 by peft);
- reference: DPO without LoRA holds a frozen copy of the policy; with LoRA the policy with its adapter disabled is
  the reference, and GRPO with ``beta=0`` has none;
- activations, rough: about 17 values per token, layer and hidden unit without gradient checkpointing and 2 with it
  (after Korthikanti et al. 2022), plus the float32 logits and their gradient; DPO passes chosen and rejected.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from dataclasses import dataclass, replace

import torch
from hydra.utils import get_class
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from geomsweep.config.checks import stage_configs
from geomsweep.estimate.peak import GIB, device_memory
from geomsweep.sources.models import model_source

BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
DEFAULT_VOCAB = 50_304  # Pythia's and OLMo's, for a preset known only by width and depth


@dataclass(frozen=True)
class ModelShape:
    """A model's size, known without loading weights."""

    parameters: int
    lora_parameters: int  # at the configured LoRA rank and targets
    width: int
    depth: int
    vocab: int
    source: str  # where the figures came from


@functools.cache
def trainer_defaults(trainer_config: str) -> dict:
    """The field defaults of the TRL config class a method names (``trl.DPOConfig``): what the trainer uses for
    every argument ``method.args`` leaves out."""
    defaults = {}
    for field in dataclasses.fields(get_class(trainer_config)):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
    return defaults


def trainer_arg(method, name: str):
    """``method.args[name]``, else the default of the method's TRL config class."""
    if name in method.args:
        return method.args[name]
    return trainer_defaults(method.trainer_config).get(name) if method.trainer_config else None


@dataclass(frozen=True)
class MemoryPlan:
    parameters: int
    trainable: int
    weights: int  # bytes, as are the terms below
    gradients: int
    optimizer: int
    reference: int
    activations: int
    device: str
    available: int | None  # what the device has (GPU memory, or available RAM on a CPU); None: unknown
    source: str  # where the parameter count came from
    processes: int = 1
    sharded: bool = False  # FSDP or ZeRO-3: model states split over the processes

    @property
    def total(self) -> int:
        """Bytes one process needs."""
        return self.weights + self.gradients + self.optimizer + self.reference + self.activations

    @property
    def required(self) -> int:
        """What must fit in ``available``: one process's bytes on its GPU, all processes' in a CPU's RAM."""
        return self.total * (1 if self.device.startswith("cuda") else self.processes)

    @property
    def fits(self) -> bool:
        return self.available is None or self.required <= self.available

    def params(self) -> dict[str, str]:
        """The plan as MLflow params (GiB, 3 significant figures)."""
        terms = ("weights", "gradients", "optimizer", "reference", "activations", "total")
        values = {f"memory.{t}_gib": f"{getattr(self, t) / GIB:.3g}" for t in terms}
        available = "unknown" if self.available is None else f"{self.available / GIB:.3g}"
        return values | {
            "memory.available_gib": available,
            "memory.parameters": str(self.parameters),
            "memory.processes": f"{self.processes}{' sharded' if self.sharded else ''}",
        }

    def describe(self) -> str:
        share = f"{self.trainable:,} of {self.parameters:,} parameters trained ({self.trainable / self.parameters:.2%})"
        terms = ", ".join(
            f"{name} {getattr(self, name) / GIB:.1f}"
            for name in ("weights", "gradients", "optimizer", "reference", "activations")
        )
        available = "unknown" if self.available is None else f"{self.available / GIB:.1f} GiB"
        each = ""
        if self.processes > 1:
            layout = "model states sharded" if self.sharded else "a whole copy each"
            each = f" per process ({self.processes} processes, {layout}; {self.required / GIB:.1f} GiB on the device)"
        return (
            f"memory plan ({self.source}): {share}; GiB: {terms}; total {self.total / GIB:.1f} GiB{each} "
            f"against {available} on {self.device}"
        )


def plan_memory(settings, device: str, dtype: str) -> MemoryPlan | None:
    """The plan of post-training ``settings`` (the typed Config) on ``device`` with weights in ``dtype``; None when
    nothing on this machine tells the model's size (no config.json yet, no width and depth in the preset). A
    pipeline's is its largest stage's."""
    if settings.method.stages:
        plans = [(name, plan_memory(stage, device, dtype)) for name, stage in stage_configs(settings)]
        known = [replace(plan, source=f"stage {name}, the largest; {plan.source}") for name, plan in plans if plan]
        return max(known, key=lambda plan: plan.required, default=None)
    shape = model_shape(settings.model, settings.cache_dir, settings.method.lora)
    return None if shape is None else plan_for_shape(settings.method, shape, device, dtype)


def plan_for_shape(method, shape: ModelShape, device: str, dtype: str) -> MemoryPlan:
    """The plan of post-training a model of ``shape`` with ``method`` (its config: TRL arguments, LoRA, processes):
    weights, trained parameters' gradients and AdamW's two states, a reference model where the loss needs one, and
    activations of one batch."""
    parameters = shape.parameters
    size = BYTES[dtype]
    lora = method.peft == "lora"
    trainable, trained_size = (shape.lora_parameters, 4) if lora else (parameters, size)
    weights = parameters * size + (shape.lora_parameters * 4 if lora else 0)
    beta = trainer_arg(method, "beta") or 0.0  # DPO's and GRPO's KL weight: a reference model unless it is 0
    needs_reference = method.name in ("dpo", "rlvr") and beta != 0
    reference = parameters * size if needs_reference and not lora else 0
    if method.name == "rlvr":  # GRPO: a prompt (cut only where max_prompt_length says) and a completion
        prompt = trainer_arg(method, "max_prompt_length") or (trainer_arg(method, "max_length") or 1024) // 2
        length = prompt + trainer_arg(method, "max_completion_length")
    else:
        length = trainer_arg(method, "max_length")
    tokens = trainer_arg(method, "per_device_train_batch_size") * length
    tokens *= 2 if method.name == "dpo" else 1  # chosen and rejected
    per_value = 2 if trainer_arg(method, "gradient_checkpointing") else 17
    activations = tokens * shape.depth * shape.width * per_value * size + tokens * shape.vocab * 4 * 2
    sharded = bool(trainer_arg(method, "fsdp") or trainer_arg(method, "deepspeed"))
    share = method.processes if sharded else 1
    return MemoryPlan(
        parameters=parameters,
        trainable=trainable,
        weights=weights // share,
        gradients=trainable * trained_size // share,
        optimizer=2 * trainable * trained_size // share,
        reference=reference // share,
        activations=activations,
        device=device,
        available=device_memory(device),
        source=shape.source,
        processes=method.processes,
        sharded=sharded,
    )


def model_shape(model_cfg, cache_dir: str, lora) -> ModelShape | None:
    """A model's size without loading weights: exact from its config where one is on this machine, else estimated
    from the preset's width and depth; None when neither is known."""
    config = model_source(model_cfg).config(model_cfg, cache_dir)
    if config is not None:
        parameters, lora_parameters = count_parameters(config, lora, model_cfg.trust_remote_code)
        dims = config.hidden_size, config.num_hidden_layers, config.vocab_size
        return ModelShape(parameters, lora_parameters, *dims, "the model's config")
    if model_cfg.width and model_cfg.depth:
        width, depth, vocab = model_cfg.width, model_cfg.depth, DEFAULT_VOCAB
        parameters = 12 * depth * width**2 + 2 * vocab * width  # a decoder's layers plus untied embeddings
        lora_parameters = 19 * lora.r * depth * width  # q, k, v, o and three MLP matrices of 8/3 width
        return ModelShape(
            parameters, lora_parameters, width, depth, vocab, "estimated from model.width and model.depth"
        )
    return None


# What a refusal may suggest, each checked against the plan before it is: one change, then two, then all three.
CHANGES = {
    "method.peft=lora": ("peft", "lora"),
    "method.args.gradient_checkpointing=true": ("gradient_checkpointing", True),
    "method.args.per_device_train_batch_size=1": ("per_device_train_batch_size", 1),
}


def refusal(plan: MemoryPlan, settings, dtype: str) -> str:
    """Why the job stops, with the figures and the changes that would make it fit (each planned: never one that
    still does not fit), or what it would take when no change of these settings fits this device."""
    tried = []
    shape = None if settings.method.stages else model_shape(settings.model, settings.cache_dir, settings.method.lora)
    if shape is not None:
        open_changes = [label for label, (key, value) in CHANGES.items() if current(settings.method, key) != value]
        for size in range(1, len(open_changes) + 1):
            for combo in itertools.combinations(open_changes, size):
                changed = plan_for_shape(with_changes(settings.method, combo), shape, plan.device, dtype)
                tried.append((" ".join(combo), changed))
    fitting = [(label, changed) for label, changed in tried if changed.fits]
    if fitting:
        fewest = min(label.count(" ") for label, _ in fitting)
        shown = [f"{label} ({changed.total / GIB:.1f} GiB)" for label, changed in fitting if label.count(" ") == fewest]
        return f"does not fit: {plan.describe()}. Options that fit: " + "; ".join(shown)
    beyond = "a device with more memory"
    if not plan.sharded:
        beyond += ", or weights sharded over GPUs: parallel=fsdp or parallel=zero3 with method.processes=<GPUs>"
    if tried:
        label, smallest = min(tried, key=lambda t: t[1].required)
        return (
            f"does not fit: {plan.describe()}. No change of method.peft, gradient checkpointing or batch size fits "
            f"{plan.device} (the smallest, {label}, needs {smallest.required / GIB:.1f} GiB): {beyond}"
        )
    return f"does not fit: {plan.describe()}. Options: {beyond}"


def current(method, key: str):
    return method.peft if key == "peft" else trainer_arg(method, key)


def with_changes(method, labels) -> object:
    """``method`` (a MethodConfig) with the ``CHANGES`` named by ``labels`` made."""
    args, peft = dict(method.args), method.peft
    for label in labels:
        key, value = CHANGES[label]
        if key == "peft":
            peft = value
        else:
            args[key] = value
    return replace(method, peft=peft, args=args)


def count_parameters(config, lora, trust_remote_code: bool = False) -> tuple[int, int]:
    """(parameters, LoRA parameters at ``lora``'s rank and targets) of the model ``config`` builds, counted by peft
    itself on the meta device: shapes only, no memory, and every layer kind peft adapts (``Conv1D`` included)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        parameters = model.num_parameters()
        adapted = LoraConfig(r=lora.r, target_modules=lora.target_modules)
        trainable, _ = get_peft_model(model, adapted).get_nb_trainable_parameters()
    return parameters, trainable
