"""``make bench``: extraction speed and memory as ratios against baselines measured in the same process.

(a) geomsweep vs the study authors' procedure (one sequence per forward pass, then a full SVD of the centered
    N x D matrix): sequences/s ratio, target >= 20x.
(b) geomsweep vs bare batched forward passes over the same batches (the limit): time ratio, target <= 1.15x.
(c) peak resident memory measuring 20k vs 1k sequences (each in a fresh subprocess): ratio, target <= 1.10x.
(d) sampling for pass@k: the hf sampler (prompts batched, n sequences per prompt) vs one ``generate`` call per
    sample, in generated tokens/s; and vLLM vs the hf sampler where vLLM is installed (``make bench`` runs that
    part in .venv-vllm), with the engine start and an in-place weight reload apart (target >= 10x on CUDA).
(e) a K-checkpoint toy trace (load + measure each checkpoint) with the next checkpoint prefetched in the
    background vs loaded in turn: time ratio (below 1 is faster).
(f) a real LM (SmolLM2-135M, offline) on real English text, 128 tokens: geomsweep vs bare batched forward passes
    over the same tokens (time ratio) and vs the authors' procedure (sequences/s ratio).
(g) jackknife error bars (probe.jackknife=10 groups, 10 leave-one-out spectra) vs none, on the toy and on SmolLM2:
    time ratio, target <= 1.3x.
(h) plan=true's time (2 x parameters x tokens over the matrix-product throughput it measures) against the measured
    time of the same work: (e)'s trace on the toy and (f)'s measurement on SmolLM2; a ratio of 1 is exact.
(i) the geometry suite on SmolLM2 (probe.layers=all: every covariance measure and anisotropy at every layer, with
    error bars) against RankMe + alpha-ReQ on the final layer, the same texts: time ratio, target <= 1.5x; TwoNN's
    cost apart; probe.weights' cost (every block matrix's spectrum and power-law fit) against the same baseline, and
    the fit against powerlaw.Fit's on the same spectra where powerlaw is installed.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import resource
import subprocess
import sys
import time

import torch
from hydra import compose, initialize_config_module

from geomsweep.behavior.sampling import HFSampler, SampleSettings, VLLMSampler
from geomsweep.config.checks import check
from geomsweep.config.choices import VLLM_ENGINES
from geomsweep.config.measurement import ProbeConfig
from geomsweep.core.definitions import METRICS
from geomsweep.core.extract import accumulate, encode_batches, eval_mode
from geomsweep.core.measure import measure_model
from geomsweep.core.spectra import jackknife_errors, rankme, spectral_geometry
from geomsweep.core.states import jackknife_groups
from geomsweep.core.weights import power_law_fit, weight_spectra
from geomsweep.sources.checkpoints import loaded
from geomsweep.sources.data import english_texts
from geomsweep.sources.models import available
from geomsweep.sources.revisions import local_revisions
from geomsweep.sources.tasks import arithmetic_task
from geomsweep.sources.toy.pretrain import ToyConfig, default_cache_dir, ensure_pretrained, probe_documents
from geomsweep.trace.plan import measure_tflops

BATCH, MAX_LEN = 64, 64


@functools.cache
def bench_toy() -> ToyConfig:
    """The +experiment=wide toy (width 128): closer to a real model's compute per token than the width-16 default,
    and the world every earlier bench figure was measured on."""
    with initialize_config_module("geomsweep.conf", version_base="1.3"):
        return ToyConfig.from_cfg(compose("config", overrides=["+experiment=wide"]).model.toy)


def final_checkpoint(cache_dir: str):
    toy = bench_toy()
    return local_revisions(ensure_pretrained(toy, cache_dir), toy.tokens_per_step)[-1].load()


def paper_procedure(model, tokenizer, texts, max_length: int = MAX_LEN):
    """One unpadded sequence per forward pass, keep all N x D rows, full SVD of the centered matrix."""
    rows = []
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
            rows.append(model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1])
    x = torch.stack(rows).double()
    singular = torch.linalg.svdvals(x - x.mean(dim=0))
    return rankme(singular**2 / (len(texts) - 1))


def ours(model, tokenizer, texts):
    batches = encode_batches(tokenizer, texts, BATCH, MAX_LEN)
    return spectral_geometry(accumulate(model, batches, progress=False).covariances[-1]).rankme


def bare_forward(model, batches):
    with torch.inference_mode():
        for batch in batches:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def timed(fn, *args, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - start)
    return best


def sampling_speeds(model, tokenizer, n: int = 16, max_tokens: int = 8) -> dict[str, float]:
    """Generated tokens/s of the hf sampler and of one ``generate`` call per sample, n samples for each of the
    arithmetic task's prompts."""
    prompts = list(arithmetic_task().id_eval["prompt"])
    settings = SampleSettings(n=n, max_tokens=max_tokens, batch_size=8)
    one_at_a_time = HFSampler(SampleSettings(n=1, max_tokens=max_tokens, batch_size=1))
    return {
        "hf": tokens_per_s(lambda: HFSampler(settings).sample(model, tokenizer, prompts)),
        "hf, one sample per call": tokens_per_s(lambda: one_at_a_time.sample(model, tokenizer, prompts * n)),
    }


def tokens_per_s(draw) -> float:
    start = time.perf_counter()
    samples = draw()
    return sum(len(ids) for row in samples.token_ids for ids in row) / (time.perf_counter() - start)


def vllm_ratios(model, tokenizer, n: int = 64, max_tokens: int = 16) -> str:
    """(d) vLLM: tokens/s against the hf sampler on the same model, prompts, n and tokens (best of 3, interleaved);
    the engine start once, and a new model's weights reloaded into the running engine, reported apart."""
    try:
        vllm = VLLMSampler(SampleSettings(n=n, max_tokens=max_tokens), VLLM_ENGINES)
    except RuntimeError as err:
        return f"(d) vLLM not measured: {err}"
    prompts = list(arithmetic_task().id_eval["prompt"])
    hf = HFSampler(SampleSettings(n=n, max_tokens=max_tokens, batch_size=8))
    try:
        vllm.sample(model, tokenizer, prompts)  # starts the engine
        speeds = {"hf": 0.0, "vllm": 0.0}
        for _ in range(3):
            speeds["hf"] = max(speeds["hf"], tokens_per_s(lambda: hf.sample(model, tokenizer, prompts)))
            speeds["vllm"] = max(speeds["vllm"], tokens_per_s(lambda: vllm.sample(model, tokenizer, prompts)))
        vllm.sample(copy.deepcopy(model), tokenizer, prompts[:1])  # another model of the same shapes: a reload
    finally:
        vllm.close()
    start, reload = vllm.start_seconds[0], min(vllm.reload_seconds)
    return (
        f"(d) vLLM ({vllm.platform}) vs hf sampler, {len(prompts)} prompts x n={n} x {max_tokens} tokens: "
        f"{speeds['vllm'] / speeds['hf']:6.1f}x tokens/s ({speeds['vllm']:.0f} vs {speeds['hf']:.0f})"
        f"   target >= 10x on CUDA\n"
        f"    engine start {start:.1f} s, once per job; the next model's weights reloaded in place {reload:.2f} s "
        f"({start / reload:.0f}x less than a new engine)"
    )


def real_model_ratios(cache_dir: str, n: int = 256, max_length: int = 128) -> str:
    """(f): SmolLM2-135M on English text (data.english_texts), or why it was not measured."""
    try:
        with initialize_config_module("geomsweep.conf", version_base="1.3"):
            model_cfg = check(compose("config", overrides=["model=smollm2-135m"])).model
        model, tokenizer = available(model_cfg, cache_dir)[-1].load()
    except (RuntimeError, FileNotFoundError, ImportError) as err:
        return f"(f) real model not measured: {err}"
    texts = english_texts()[:n]
    with eval_mode(model, tokenizer):
        batches = list(encode_batches(tokenizer, texts, 32, max_length))

        def ours_real():
            return spectral_geometry(accumulate(model, batches, progress=False, with_loss=False).covariances[-1])

        t_ours = t_bare = float("inf")
        for _ in range(2):  # interleaved, best of each
            t_bare = min(t_bare, timed(bare_forward, model, batches, repeat=1))
            t_ours = min(t_ours, timed(ours_real, repeat=1))
        t_paper = timed(paper_procedure, model, tokenizer, texts, max_length, repeat=1)
        jackknife = jackknife_ratio(model, batches)
        tokens = sum(int(batch["attention_mask"].sum()) for batch in batches)
        suite = suite_ratios(model, tokenizer, texts, max_length)
    planned = 2 * model.num_parameters() * tokens / (measure_tflops("cpu") * 1e12)
    return (
        f"(f) SmolLM2-135M (d={model.config.hidden_size}), {n} English texts x {max_length} tokens: "
        f"vs bare batched forward {t_ours / t_bare:6.3f}x time ({t_ours:.1f}s vs {t_bare:.1f}s); "
        f"vs the authors' procedure {t_paper / t_ours:5.1f}x sequences/s ({t_paper:.1f}s)\n"
        f"(g) SmolLM2-135M with jackknife error bars (probe.jackknife=10) vs without: {jackknife:6.3f}x time"
        f"   target <= 1.3x\n"
        f"(h) SmolLM2-135M: measured over plan=true's time {t_ours / planned:6.2f}x ({t_ours:.1f}s vs {planned:.1f}s)\n"
        f"{suite}"
    )


def suite_ratios(model, tokenizer, texts, max_length: int) -> str:
    """(i): the suite at every layer, TwoNN and the weight spectra, each against the paper's two on the final layer
    (same texts, error bars on, best of 2)."""
    base = ProbeConfig(n_sequences=len(texts), max_length=max_length, batch_size=32, loss=False)
    covariance = [name for name in METRICS if name != "twonn"]
    settings = {
        "paper": base,
        "suite": dataclasses.replace(base, layers="all", metrics=covariance),
        "twonn": dataclasses.replace(base, metrics=["rankme", "alpha_req", "twonn"]),
    }
    seconds = {}
    for _ in range(2):
        for name, probe in settings.items():
            t = timed(measure_model, model, tokenizer, texts, probe, False, repeat=1)
            seconds[name] = min(seconds.get(name, float("inf")), t)
    start = time.perf_counter()
    spectra = weight_spectra(model)
    t_weights = time.perf_counter() - start
    line = (
        f"(i) SmolLM2-135M suite, {model.config.num_hidden_layers + 1} layers x {len(covariance)} measures with error "
        f"bars vs RankMe + alpha on the final layer: {seconds['suite'] / seconds['paper']:6.3f}x time   target <= "
        f"1.5x\n    TwoNN on the final layer (reservoir {base.reservoir}) adds "
        f"{(seconds['twonn'] - seconds['paper']) / seconds['paper']:6.3f}x; probe.weights ({len(spectra)} matrices) "
        f"adds {t_weights / seconds['paper']:6.3f}x ({t_weights:.1f}s)"
    )
    try:
        import powerlaw  # noqa: PLC0415  optional: the dev extra's
    except ImportError:
        return line + "\n    (powerlaw not installed: the fit is not compared with powerlaw.Fit)"
    sample = spectra[: min(len(spectra), 7)]  # one block's matrices: the library takes seconds each
    start = time.perf_counter()
    theirs = [powerlaw.Fit(s.eigs.numpy(), verbose=False, parameter_ranges={"alpha": [1, 1000]}) for s in sample]
    t_theirs = time.perf_counter() - start
    start = time.perf_counter()
    mine = [power_law_fit(s.eigs) for s in sample]
    t_mine = time.perf_counter() - start
    worst = max(abs(a.alpha - b.alpha) / b.alpha for a, b in zip(mine, theirs))
    return line + (
        f"\n    power-law fit vs powerlaw.Fit on {len(sample)} of its spectra: {t_theirs / t_mine:6.1f}x faster, "
        f"alpha within {worst:.1e}"
    )


def jackknife_ratio(model, batches, groups: int = 10) -> float:
    """Time of a measurement with K-group jackknife error bars over the time without (same batches, best of 2
    interleaved): the K leave-one-out spectra against the forward passes."""

    def plain():
        spectral_geometry(accumulate(model, batches, progress=False, with_loss=False).covariances[-1])

    def with_errors():
        n_sequences = sum(len(batch["input_ids"]) for batch in batches)
        assignment = jackknife_groups(n_sequences, groups)
        reps = accumulate(model, batches, progress=False, with_loss=False, groups=assignment)
        spectral_geometry(reps.covariances[-1])
        jackknife_errors(reps.groups[-1])

    t_plain = t_errors = float("inf")
    for _ in range(2):
        t_plain = min(t_plain, timed(plain, repeat=1))
        t_errors = min(t_errors, timed(with_errors, repeat=1))
    return t_errors / t_plain


def trace_seconds(cache_dir: str, texts, prefetch: bool) -> float:
    """Load and measure every toy checkpoint in order, as run_trace does."""
    toy = bench_toy()
    checkpoints = local_revisions(ensure_pretrained(toy, cache_dir), toy.tokens_per_step)
    start = time.perf_counter()
    for _, model, tokenizer in loaded(checkpoints, "cpu", "float32", prefetch=prefetch):
        ours(model, tokenizer, texts)
    return time.perf_counter() - start


def peak_rss_mb(n: int, cache_dir: str) -> float:
    """Peak RSS of a fresh process that measures n sequences (run as a subprocess by the parent)."""
    model, tokenizer = final_checkpoint(cache_dir)
    texts = probe_documents(bench_toy(), n, seed=7)
    ours(model, tokenizer, texts)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def arguments(parser: argparse.ArgumentParser) -> None:
    """This command's options (``python -m geomsweep.devtools bench --help``)."""
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--n", type=int, default=2000, help="sequences for the speed comparisons")
    parser.add_argument("--peak-rss", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--vllm-only", action="store_true", help="(d)'s vLLM figures only (in .venv-vllm)")


def command(args: argparse.Namespace) -> None:
    cache_dir = args.cache_dir or default_cache_dir()
    if args.vllm_only:
        print(vllm_ratios(*final_checkpoint(cache_dir)))
        return
    if args.peak_rss is not None:
        print(json.dumps({"peak_rss_mb": peak_rss_mb(args.peak_rss, cache_dir)}))
        return
    torch.manual_seed(0)
    model, tokenizer = final_checkpoint(cache_dir)
    texts = probe_documents(bench_toy(), args.n, seed=7)
    batches = list(encode_batches(tokenizer, texts, BATCH, MAX_LEN))
    ours_rankme, paper_rankme = ours(model, tokenizer, texts), paper_procedure(model, tokenizer, texts)
    t_ours = timed(ours, model, tokenizer, texts)
    t_paper = timed(paper_procedure, model, tokenizer, texts, repeat=1)
    # (b) is a small difference between two similar timings: interleave the two and keep each one's best.
    t_bare = t_ours_pre_encoded = t_geometry_only = float("inf")
    for _ in range(5):
        t_bare = min(t_bare, timed(bare_forward, model, batches, repeat=1))
        t_ours_pre_encoded = min(
            t_ours_pre_encoded,
            timed(lambda: spectral_geometry(accumulate(model, batches, progress=False).covariances[-1]), repeat=1),
        )
        t_geometry_only = min(
            t_geometry_only,
            timed(
                lambda: spectral_geometry(accumulate(model, batches, progress=False, with_loss=False).covariances[-1]),
                repeat=1,
            ),
        )

    def rss(n: int) -> float:
        out = subprocess.run(
            [sys.executable, "-m", "geomsweep.devtools.bench", "--cache-dir", cache_dir, "--peak-rss", str(n)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]

    rss_1k, rss_20k = rss(1000), rss(20000)
    print(
        f"toy model d={model.config.hidden_size}, {args.n} sequences, batch {BATCH}, max_length {MAX_LEN}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"RankMe: ours {ours_rankme:.3f} vs paper procedure {paper_rankme:.3f} (same up to padding-free numerics)")
    print(
        f"(a) speed vs paper procedure:   {t_paper / t_ours:6.1f}x sequences/s "
        f"({args.n / t_ours:.0f} vs {args.n / t_paper:.0f} seq/s)   target >= 20x"
    )
    print(f"    ceiling here: bare batched forward alone is {t_paper / t_bare:.1f}x the paper procedure")
    print(
        f"(b) time vs bare batched forward: {t_ours_pre_encoded / t_bare:6.3f}x "
        f"({t_ours_pre_encoded:.2f}s vs {t_bare:.2f}s, same pre-encoded batches, probe loss included)"
        "   target <= 1.15x"
    )
    print(f"    geometry only (probe.loss=false): {t_geometry_only / t_bare:6.3f}x")
    print(
        f"(g) jackknife error bars (probe.jackknife=10) vs without, toy d={model.config.hidden_size}: "
        f"{jackknife_ratio(model, batches):6.3f}x time   target <= 1.3x"
    )
    print(
        f"(c) peak RSS 20k vs 1k sequences: {rss_20k / rss_1k:6.3f}x ({rss_20k:.0f} MB vs {rss_1k:.0f} MB)"
        f"   target <= 1.10x"
    )
    speeds = sampling_speeds(model, tokenizer)
    print(
        f"(d) sampling: hf sampler vs one generate call per sample: "
        f"{speeds['hf'] / speeds['hf, one sample per call']:6.1f}x tokens/s "
        f"({speeds['hf']:.0f} vs {speeds['hf, one sample per call']:.0f} tokens/s)"
    )
    print(vllm_ratios(model, tokenizer))
    trace_texts = texts[:256]
    t_in_turn = t_prefetch = float("inf")
    for _ in range(2):  # interleaved, best of each
        t_in_turn = min(t_in_turn, trace_seconds(cache_dir, trace_texts, prefetch=False))
        t_prefetch = min(t_prefetch, trace_seconds(cache_dir, trace_texts, prefetch=True))
    n_checkpoints = len(local_revisions(ensure_pretrained(bench_toy(), cache_dir), None))
    print(
        f"(e) {n_checkpoints}-checkpoint trace, {len(trace_texts)} sequences each: prefetch vs in turn "
        f"{t_prefetch / t_in_turn:6.3f}x time ({t_prefetch:.2f}s vs {t_in_turn:.2f}s)"
    )
    trace_tokens = n_checkpoints * sum(
        int(batch["attention_mask"].sum()) for batch in encode_batches(tokenizer, trace_texts, BATCH, MAX_LEN)
    )
    planned = 2 * model.num_parameters() * trace_tokens / (measure_tflops("cpu") * 1e12)
    print(
        f"(h) toy trace: measured over plan=true's time {t_in_turn / planned:6.2f}x ({t_in_turn:.2f}s vs "
        f"{planned:.2f}s; small matrices run far below the throughput of large ones)"
    )
    print(real_model_ratios(cache_dir))
