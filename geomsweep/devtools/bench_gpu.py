"""``make bench-gpu``: the figures that matter at real scale, on models built from their configs with random weights
(nothing is downloaded), as ratios against baselines measured in the same process. Prints them and writes a JSON.

(1) extraction of a Pythia-1B- and an OLMo-2-7B-shaped model: geomsweep (batched, D x D covariance streamed on the
    device) against bare batched forward passes over the same tokens (time ratio; target <= 1.15x) and against the
    study authors' procedure (one sequence per forward pass, then a full SVD of the centered N x D matrix;
    sequences/s ratio).
(2) sampling on the Pythia-1B shape: vLLM against the hf sampler, generated tokens/s (the engine start apart).
(3) one LoRA DPO step (TRL's DPOTrainer, recipe=real/dpo's batch and length) of the OLMo-2-7B shape: plan=true's
    memory plan against what the step added at its peak (``torch.cuda.max_memory_allocated`` on a GPU).

``--shapes tiny`` runs the same code at tiny shapes on any device: the suite runs it on the CPU, so it cannot rot.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from hydra import compose, initialize_config_module
from transformers import AutoModelForCausalLM, GPTNeoXConfig, Olmo2Config

from geomsweep.behavior.sampling import HFSampler, SampleSettings, VLLMSampler
from geomsweep.config.checks import check
from geomsweep.config.choices import VLLM_ENGINES
from geomsweep.config.toy import ToyConfig
from geomsweep.core.definitions import REFERENCE_FIT
from geomsweep.core.extract import accumulate
from geomsweep.core.spectra import rankme, spectral_geometry
from geomsweep.estimate.memory import ModelShape, count_parameters, plan_for_shape
from geomsweep.estimate.peak import GIB, PeakMeter
from geomsweep.sources.tasks import arithmetic_task
from geomsweep.sources.toy.pretrain import train_documents, train_tokenizer


@dataclass(frozen=True)
class Shapes:
    """Model shapes and workload sizes of one bench size."""

    pythia: GPTNeoXConfig
    olmo: Olmo2Config
    sequences: int  # extraction: probe sequences per model
    length: int  # tokens per sequence
    batch: int
    samples: int  # sampling: n per prompt
    sample_tokens: int
    dpo: dict  # overrides of recipe=real/dpo's TRL arguments for the one step
    fit: tuple[int, int] = REFERENCE_FIT  # alpha-ReQ's fit range


def real_shapes() -> Shapes:
    pythia = GPTNeoXConfig(  # EleutherAI/pythia-1b
        hidden_size=2048, num_hidden_layers=16, num_attention_heads=8, intermediate_size=8192, vocab_size=50304,
        rotary_pct=0.25, max_position_embeddings=2048, use_parallel_residual=True, tie_word_embeddings=False,
    )  # fmt: skip
    olmo = Olmo2Config(  # allenai/OLMo-2-1124-7B
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
        intermediate_size=11008, vocab_size=100352, max_position_embeddings=4096, rope_theta=500000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=False,
    )  # fmt: skip
    return Shapes(pythia, olmo, 512, 512, 32, 64, 64, {})


def tiny_shapes() -> Shapes:
    pythia = GPTNeoXConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, vocab_size=1024,
        rotary_pct=0.25, max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    olmo = Olmo2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, intermediate_size=176,
        vocab_size=1024, max_position_embeddings=256, tie_word_embeddings=False,
    )  # fmt: skip
    return Shapes(pythia, olmo, 96, 32, 16, 4, 8, {"per_device_train_batch_size": 2, "max_length": 64}, (2, 20))


def build(config, device: str, dtype: torch.dtype):
    """A model of ``config``'s shape with random weights, built on ``device``."""
    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def seconds(fn) -> float:
    """The wall time of one call, the device's queued work waited for."""
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def extraction(model, shapes: Shapes, device: str) -> dict:
    """(1) for one model: geomsweep, bare batched forward passes and the authors' procedure on the same tokens."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(model.config.vocab_size, (shapes.sequences, shapes.length), generator=generator)
    batches = [
        {
            "input_ids": ids[i : i + shapes.batch].to(device),
            "attention_mask": torch.ones_like(ids[i : i + shapes.batch]).to(device),
        }
        for i in range(0, len(ids), shapes.batch)
    ]

    def ours() -> float:
        covariance = accumulate(model, batches, progress=False, with_loss=False).covariances[-1]
        return spectral_geometry(covariance, fit_start=shapes.fit[0], fit_end=shapes.fit[1]).rankme

    @torch.inference_mode()
    def bare() -> None:
        for batch in batches:
            model(**batch)

    @torch.inference_mode()
    def authors() -> float:
        rows = [
            model(input_ids=row[None].to(device), output_hidden_states=True).hidden_states[-1][0, -1] for row in ids
        ]
        x = torch.stack(rows).double()
        return rankme(torch.linalg.svdvals(x - x.mean(dim=0)) ** 2 / (len(rows) - 1))

    rankme_ours, rankme_authors = ours(), authors()  # also the warm-up of both
    t_ours = t_bare = math.inf
    for _ in range(3):  # interleaved, best of each: the two are close and the difference is the figure
        t_bare = min(t_bare, seconds(bare))
        t_ours = min(t_ours, seconds(ours))
    t_authors = seconds(authors)
    return {
        "parameters": model.num_parameters(),
        "sequences": shapes.sequences,
        "tokens_per_sequence": shapes.length,
        "seconds": {"geomsweep": t_ours, "bare_forward": t_bare, "authors": t_authors},
        "time_vs_bare_forward": t_ours / t_bare,
        "speedup_vs_authors": t_authors / t_ours,
        "rankme": {"geomsweep": rankme_ours, "authors": rankme_authors},
    }


def sampling(model, tokenizer, shapes: Shapes) -> dict:
    """(2): the hf sampler and, where vLLM runs, vLLM on the same model, prompts, n and length."""
    prompts = list(arithmetic_task().id_eval["prompt"])
    settings = SampleSettings(n=shapes.samples, max_tokens=shapes.sample_tokens, seed=0)
    result = {"prompts": len(prompts), "n": shapes.samples, "max_tokens": shapes.sample_tokens}
    result["hf_tokens_per_s"] = tokens_per_s(HFSampler(settings), model, tokenizer, prompts)
    try:
        vllm = VLLMSampler(settings, VLLM_ENGINES)
    except RuntimeError as err:
        return result | {"vllm": f"not measured: {err}"}
    try:
        vllm.sample(model, tokenizer, prompts[:1])  # the engine starts
        result["vllm_tokens_per_s"] = tokens_per_s(vllm, model, tokenizer, prompts)
        result["vllm_engine_start_s"] = vllm.start_seconds[0]
    finally:
        vllm.close()
    result["vllm_vs_hf"] = result["vllm_tokens_per_s"] / result["hf_tokens_per_s"]
    return result


def tokens_per_s(sampler, model, tokenizer, prompts: list[str]) -> float:
    synchronize()
    start = time.perf_counter()
    samples = sampler.sample(model, tokenizer, prompts)
    synchronize()
    return sum(len(ids) for row in samples.token_ids for ids in row) / (time.perf_counter() - start)


def dpo_memory(shapes: Shapes, tokenizer, words: list[str], device: str) -> dict:
    """(3): one LoRA DPO step of the OLMo shape; the plan the app makes for it against the measured peak."""
    from peft import LoraConfig  # noqa: PLC0415  training libraries load for this part only
    from trl import DPOConfig, DPOTrainer  # noqa: PLC0415

    with initialize_config_module("geomsweep.conf", version_base="1.3"):
        settings = check(compose("config", overrides=["model=olmo2-7b", "method=dpo", "method.peft=lora"]))
    method = settings.method
    args = {**method.args, "max_steps": 1, "gradient_accumulation_steps": 1, **shapes.dpo}
    method.args.update(args)
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    lora = method.lora
    parameters, adapted = count_parameters(shapes.olmo, lora)
    shape_of = dict(width=shapes.olmo.hidden_size, depth=shapes.olmo.num_hidden_layers, vocab=shapes.olmo.vocab_size)
    plan = plan_for_shape(
        method, ModelShape(parameters, adapted, **shape_of, source="the bench's config"), device, dtype
    )
    half = args["max_length"]
    rows = [
        {
            "prompt": " ".join(words[i : i + 8]),
            "chosen": " ".join(words[i + 8 : i + half]),
            "rejected": " ".join(words[i + half : i + 2 * half]),
        }
        for i in range(0, args["per_device_train_batch_size"] * 2 * half, 2 * half)
    ]
    meter = PeakMeter(device).start()
    model = build(shapes.olmo, device, getattr(torch, dtype))
    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    peft = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, task_type="CAUSAL_LM"
    )
    with tempfile.TemporaryDirectory(prefix="geomsweep-bench-dpo-") as output_dir:
        on_cpu = not device.startswith("cuda")
        config = DPOConfig(
            output_dir=output_dir,
            report_to="none",
            save_strategy="no",
            use_cpu=on_cpu,
            bf16=not on_cpu,
            disable_tqdm=True,
            **args,
        )
        trainer = DPOTrainer(
            model=model,
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=peft,
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    peak = meter.added()
    return {
        "parameters": parameters,
        "batch": args["per_device_train_batch_size"],
        "max_length": args["max_length"],
        "step_seconds": seconds,
        "plan_gib": plan.total / GIB,
        "plan_terms_gib": {k: v for k, v in plan.params().items() if k.endswith("_gib")},
        "peak_gib": peak / GIB,
        "peak_vs_plan": peak / plan.total,
    }


def run(shapes: Shapes, device: str) -> dict:
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    documents = train_documents(ToyConfig())  # the toy language: a tokenizer, and DPO's texts
    tokenizer = train_tokenizer(documents, 512)
    results = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu", "dtype": str(dtype)}
    for name, config in (("pythia-1b", shapes.pythia), ("olmo2-7b", shapes.olmo)):
        model = build(config, device, dtype)
        results[f"extraction/{name}"] = extraction(model, shapes, device)
        if name == "pythia-1b":
            results["sampling/pythia-1b"] = sampling(model, tokenizer, shapes)
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    results["dpo_lora_step/olmo2-7b"] = dpo_memory(shapes, tokenizer, " ".join(documents).split(), device)
    return results


REPORT_ORDER = ("device", "dtype", "extraction", "sampling", "dpo_lora_step")


def report(results: dict) -> str:
    lines = [f"device {results['device']}, {results['dtype']}"]
    for key, value in sorted(results.items(), key=lambda item: REPORT_ORDER.index(item[0].split("/")[0])):
        if key.startswith("extraction/"):
            lines.append(
                f"(1) {key[11:]} ({value['parameters']:,} parameters), {value['sequences']} x "
                f"{value['tokens_per_sequence']} tokens: vs bare forward {value['time_vs_bare_forward']:.3f}x time "
                "(target <= 1.15x); "
                f"vs the authors' procedure {value['speedup_vs_authors']:.1f}x sequences/s; RankMe "
                f"{value['rankme']['geomsweep']:.2f} vs {value['rankme']['authors']:.2f}"
            )
        elif key.startswith("sampling/"):
            vllm = (
                f"vLLM {value['vllm_vs_hf']:.1f}x the hf sampler's tokens/s "
                f"(engine start {value['vllm_engine_start_s']:.0f} s)"
                if "vllm_vs_hf" in value
                else f"vLLM {value['vllm']}"
            )
            lines.append(f"(2) {key[9:]}: hf sampler {value['hf_tokens_per_s']:.0f} tokens/s; {vllm}")
        elif key.startswith("dpo_lora_step/"):
            lines.append(
                f"(3) {key[14:]} LoRA DPO step, batch {value['batch']} x {value['max_length']} tokens: peak "
                f"{value['peak_gib']:.2f} GiB vs plan {value['plan_gib']:.2f} GiB ({value['peak_vs_plan']:.2f}x), "
                f"{value['step_seconds']:.1f} s"
            )
    return "\n".join(lines)


def arguments(parser: argparse.ArgumentParser) -> None:
    """This command's options (``python -m geomsweep.devtools bench-gpu --help``)."""
    parser.add_argument("--shapes", choices=("real", "tiny"), default="real")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("bench-gpu.json"))


def command(args: argparse.Namespace) -> dict:
    if args.shapes == "real" and not args.device.startswith("cuda"):
        raise SystemExit(f"--shapes real needs a CUDA GPU (got --device {args.device}); --shapes tiny runs anywhere")
    results = run(real_shapes() if args.shapes == "real" else tiny_shapes(), args.device)
    print(report(results))
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {args.out}")
    return results
