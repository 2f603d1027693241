"""Sampled behavior of a model on a task's verifiable splits: pass@k, diversity, the geometry of its own samples.

``SamplingProbe.update(model, tokenizer, step)`` samples ``sampler.n`` completions per problem of each split and
returns the ``behavior/*`` metrics and the completions as tables (the caller logs them); ``curves`` keeps each
pass@k curve for the job's plot. Metric names: ``behavior/pass_at_<k>``, ``behavior/distinct_<m>``,
``behavior/unique_answers``, ``behavior/answer_entropy``, ``behavior/self_jaccard``, ``behavior/sample_rankme``
for the ID split, and the same under ``behavior/<split>/`` for the others (``behavior/ood/pass_at_8``). Their 95%
bootstrap intervals are one table, ``INTERVALS`` (``interval_table``), not two metrics each.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd

from geomsweep.behavior.diversity import prompt_diversity
from geomsweep.behavior.passk import bootstrap_interval, default_ks, per_problem_pass_at_k
from geomsweep.behavior.sampling import Samples, SampleSettings, make_sampler
from geomsweep.core.definitions import headline_layer
from geomsweep.core.extract import accumulate, encode_batches, eval_mode
from geomsweep.core.spectra import eigenspectrum, rankme
from geomsweep.keys import metrics as M
from geomsweep.sources.tasks import answer_of, load_task

SPLITS = ("id", "ood")
INTERVALS = "behavior/pass_at_k_intervals.csv"  # the run's artifact: step, split, k, measure, value, lo, hi


def settings_from_cfg(sampler_cfg, task_cfg) -> SampleSettings:
    max_tokens = sampler_cfg.max_tokens if sampler_cfg.max_tokens is not None else task_cfg.max_new_tokens
    return SampleSettings(
        n=sampler_cfg.n,
        temperature=sampler_cfg.temperature,
        top_p=sampler_cfg.top_p,
        max_tokens=max_tokens,
        seed=sampler_cfg.seed,
        batch_size=sampler_cfg.batch_size,
    )


def checked_ks(ks, n: int) -> list[int]:
    if ks is None:
        return default_ks(n)
    bad = [k for k in ks if not 1 <= k <= n]
    if bad:
        raise ValueError(f"sampler.ks has {bad}, outside 1..sampler.n={n}: pass@k needs at least k samples per problem")
    return sorted(set(ks))


def sample_rankme(model, tokenizer, samples: Samples, probe) -> float:
    """RankMe of the model's own last-token representations of prompt + completion, over every sample."""
    texts = [p + t for p, ts in zip(samples.prompts, samples.texts) for t in ts]
    with eval_mode(model, tokenizer):
        batches = encode_batches(tokenizer, texts, probe.batch_size, probe.max_length, probe.padding_side)
        reps = accumulate(model, batches, [headline_layer(probe.layers)], probe.norm, progress=False, with_loss=False)
    return rankme(eigenspectrum(reps.covariances[headline_layer(probe.layers)].compute()), probe.rankme)


def score(samples: Samples, references: list[str], extractor: str, ks: list[int]):
    """(metrics without the representation RankMe, pass@k curve, completions table, each problem's pass@k, each
    k's 95% bootstrap interval over the problems) of one split's samples."""
    answers = [[answer_of(t, extractor) for t in texts] for texts in samples.texts]
    correct = [[a == str(ref) for a in row] for row, ref in zip(answers, references)]
    n = len(samples.texts[0])
    per_problem = per_problem_pass_at_k(n, [sum(row) for row in correct], ks)
    curve = {k: float(values.mean()) for k, values in per_problem.items()}
    per_prompt = [prompt_diversity(ids, row) for ids, row in zip(samples.token_ids, answers)]
    metrics = {f"pass_at_{k}": v for k, v in curve.items()}
    intervals = {k: bootstrap_interval(values) for k, values in per_problem.items()}
    metrics |= {key: float(np.nanmean([d[key] for d in per_prompt])) for key in per_prompt[0]}
    table = {"prompt": [], "sample": [], "completion": [], "answer": [], "reference": [], "correct": []}
    for prompt, texts, row, ref, ok in zip(samples.prompts, samples.texts, answers, references, correct):
        for j, (text, answer, right) in enumerate(zip(texts, row, ok)):
            for column, value in zip(table, (prompt, j, text, answer or "", str(ref), right)):
                table[column].append(value)
    return metrics, curve, table, per_problem, intervals


@contextmanager
def sampling_probe(settings) -> Iterator[SamplingProbe | None]:
    """The job's sampling probe (``settings``: the typed Config), or None when ``sampler.n=0``; one per job, so
    one vLLM engine serves every checkpoint, closed when the job's sampling ends."""
    if not settings.sampler.n:
        yield None
        return
    probe = SamplingProbe(settings.sampler, settings.task, settings.probe, seed=settings.seed)
    try:
        yield probe
    finally:
        probe.sampler.close()


class SamplingProbe:
    def __init__(self, sampler_cfg, task_cfg, probe, seed: int = 0):
        self.settings = settings_from_cfg(sampler_cfg, task_cfg)
        self.ks = checked_ks(sampler_cfg.ks, self.settings.n)
        unknown = [s for s in sampler_cfg.splits if s not in SPLITS]
        if unknown:
            raise ValueError(f"sampler.splits has {unknown}; valid: {', '.join(SPLITS)}")
        self.sampler = make_sampler(sampler_cfg.name, self.settings, sampler_cfg.engine)
        self.extractor, self.probe = task_cfg.extractor, probe
        task = load_task(task_cfg, seed=seed)
        self.splits = {}
        for name in sampler_cfg.splits:
            split = {"id": task.id_eval, "ood": task.ood_eval}[name]
            if split is None or "answer" not in split.column_names:
                warnings.warn(
                    f"sampler: task {task.name!r} has no checkable answers in its {name} split; not sampled",
                    stacklevel=2,
                )
                continue
            self.splits[name] = split
        self.curves: dict[str, dict[int, float]] = {}  # "<split> step <N>" -> {k: pass@k}
        self.per_problem: dict[tuple[str, int], dict[int, np.ndarray]] = {}  # (split, step) -> {k: each problem's}
        self.intervals: list[dict] = []  # rows of the INTERVALS table

    @staticmethod
    def prefix(split: str) -> str:
        return M.behavior_prefix(split)

    def update(self, model, tokenizer, step: int) -> tuple[dict[str, float], dict[str, dict[str, list]]]:
        """(``behavior/*`` metrics, completions tables by artifact path) of the model at ``step``."""
        metrics, tables = {}, {}
        for name, split in self.splits.items():
            samples = self.sampler.sample(model, tokenizer, list(split["prompt"]))
            values, curve, table, per_problem, intervals = score(
                samples, list(split["answer"]), self.extractor, self.ks
            )
            self.per_problem[(name, step)] = per_problem
            self.intervals += [
                {"step": step, "split": name, "k": k, "measure": "pass_at_k", "value": curve[k], "lo": lo, "hi": hi}
                for k, (lo, hi) in intervals.items()
            ]
            values["sample_rankme"] = sample_rankme(model, tokenizer, samples, self.probe)
            metrics |= {self.prefix(name) + key: value for key, value in values.items()}
            self.curves[f"{name} step {step}"] = curve
            tables[f"sampling/{name}_step{step}.json"] = table
        return metrics, tables

    def change(self) -> dict[str, float]:
        """pass@k at the last sampled step minus the first, on the same problems (``behavior/pass_at_<k>_change``);
        its paired 95% bootstrap interval over problems joins the INTERVALS table."""
        metrics = {}
        for name in self.splits:
            steps = sorted(step for split, step in self.per_problem if split == name)
            if len(steps) < 2:
                continue
            before, after = steps[0], steps[-1]
            for k, first in self.per_problem[(name, before)].items():
                difference = self.per_problem[(name, after)][k] - first
                key = f"{self.prefix(name)}pass_at_{k}_change"
                metrics[key] = float(difference.mean())
                lo, hi = bootstrap_interval(difference)
                self.intervals.append(
                    {"step": after, "split": name, "k": k, "measure": "pass_at_k_change"}
                    | {"value": metrics[key], "lo": lo, "hi": hi}
                )
        return metrics

    def interval_table(self) -> pd.DataFrame:
        """Every pass@k and pass@k change with its 95% interval: the INTERVALS artifact."""
        return pd.DataFrame(self.intervals, columns=["step", "split", "k", "measure", "value", "lo", "hi"])
