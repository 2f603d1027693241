"""``make bench`` (f), (g), (h), (i), (j) and (k) on a real model: SmolLM2-135M offline, on English text."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_module

from geomsweep.behavior.harness import Harness
from geomsweep.behavior.harness_tasks import write_english_next_word
from geomsweep.behavior.infinigram import LocalEngine
from geomsweep.behavior.memorization import Memorization, encoder, infgram_side
from geomsweep.config.checks import check
from geomsweep.config.measurement import HarnessConfig, ProbeConfig
from geomsweep.core.definitions import METRICS
from geomsweep.core.extract import accumulate, encode_batches, eval_mode
from geomsweep.core.measure import measure_model
from geomsweep.core.spectra import jackknife_errors, spectral_geometry
from geomsweep.core.states import jackknife_groups
from geomsweep.core.weights import power_law_fit, weight_spectra
from geomsweep.devtools.baselines import bare_forward, paper_procedure, timed
from geomsweep.keys import metrics as M
from geomsweep.sources.corpus_index import build_index
from geomsweep.sources.data import english_texts
from geomsweep.sources.models import available
from geomsweep.sources.qa_items import QAItem
from geomsweep.trace.plan import measure_tflops


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
        harness = harness_ratio(model, tokenizer, texts, max_length, "SmolLM2-135M")
        with tempfile.TemporaryDirectory() as scratch:
            corpus = english_texts()[ENGLISH_ITEM_TEXTS:]  # the items' texts held out of the index
            index = Path(scratch) / "index"
            build_index(corpus, index, tokenizer, tokenizer.name_or_path)
            memorization = memorization_ratio(
                model, tokenizer, texts, max_length, "SmolLM2-135M", english_items(), index
            )
    planned = 2 * model.num_parameters() * tokens / (measure_tflops("cpu") * 1e12)
    return (
        f"(f) SmolLM2-135M (d={model.config.hidden_size}), {n} English texts x {max_length} tokens: "
        f"vs bare batched forward {t_ours / t_bare:6.3f}x time ({t_ours:.1f}s vs {t_bare:.1f}s); "
        f"vs the authors' procedure {t_paper / t_ours:5.1f}x sequences/s ({t_paper:.1f}s)\n"
        f"(g) SmolLM2-135M with jackknife error bars (probe.jackknife=10) vs without: {jackknife:6.3f}x time"
        f"   target <= 1.3x\n"
        f"(h) SmolLM2-135M: measured over plan=true's time {t_ours / planned:6.2f}x ({t_ours:.1f}s vs {planned:.1f}s)\n"
        f"{suite}\n{harness}\n{memorization}"
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


def harness_ratio(model, tokenizer, texts, max_length: int, name: str, tasks: tuple[Path, list[str]] | None = None):
    """(j): lm-evaluation-harness's time per checkpoint (its tasks on the loaded model) against the geometry's
    (RankMe + alpha on the same texts), best of 2."""
    with tempfile.TemporaryDirectory() as scratch:
        folder, names = tasks or (write_english_next_word(Path(scratch)), ["english_next_word"])
        harness = Harness(HarnessConfig(tasks=names), [folder])
        probe = ProbeConfig(n_sequences=len(texts), max_length=max_length, batch_size=32, loss=False)
        t_geometry = min(timed(measure_model, model, tokenizer, texts, probe, False, repeat=1) for _ in range(2))
        t_harness = min(timed(harness.evaluate, model, tokenizer, repeat=1) for _ in range(2))
        items = sum(len(rows) for rows in harness.evaluate(model, tokenizer).samples.values())
    return (
        f"(j) {name}: lm-evaluation-harness ({', '.join(names)}: {items} items) per checkpoint vs the geometry of "
        f"{len(texts)} texts: {t_harness / t_geometry:6.3f}x time ({t_harness:.2f}s vs {t_geometry:.2f}s)"
    )


ENGLISH_ITEM_TEXTS = 100


def english_items(per_text: int = 10) -> list[QAItem]:
    """(k)'s items on SmolLM2: words of the first English texts after their first few, each the answer to its
    prefix (the index holds the other texts)."""
    items = []
    for number, text in enumerate(english_texts()[:ENGLISH_ITEM_TEXTS]):
        words = text.split()
        items += [QAItem(" ".join(words[:cut]), words[cut], number) for cut in range(5, min(5 + per_text, len(words)))]
    return items


def memorization_ratio(model, tokenizer, texts, max_length: int, name: str, items: list[QAItem], index: Path) -> str:
    """(k): memorization's time per checkpoint (the model's side over its items; the ∞-gram side is computed once
    per job and reported apart) against the geometry's (RankMe + alpha on the same texts), best of 2."""
    engine = LocalEngine(str(index))
    start = time.perf_counter()
    reference = infgram_side(items, engine, encoder(engine.info.tokenizer, "the bench index's tokenizer"))
    t_infgram = time.perf_counter() - start
    measure = Memorization(items, reference, groups=20)
    probe = ProbeConfig(n_sequences=len(texts), max_length=max_length, batch_size=32, loss=False)
    t_geometry = min(timed(measure_model, model, tokenizer, texts, probe, False, repeat=1) for _ in range(2))
    t_memorization = min(timed(measure.measure, model, tokenizer, repeat=1) for _ in range(2))
    rho = measure.measure(model, tokenizer).metrics[M.MEMORIZATION]
    return (
        f"(k) {name}: memorization ({len(items)} items, rho {rho:.3f}) per checkpoint vs the geometry of {len(texts)} "
        f"texts: {t_memorization / t_geometry:6.3f}x time ({t_memorization:.2f}s vs {t_geometry:.2f}s); its "
        f"infini-gram side, once per job: {t_infgram:.2f}s"
    )
