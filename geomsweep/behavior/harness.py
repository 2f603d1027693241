"""Downstream accuracy through lm-evaluation-harness, on the model already in memory.

The tasks are built once per job (their datasets loaded, few-shot settings applied, as ``lm_eval.simple_evaluate``
does) and scored at every measured checkpoint by ``lm_eval.evaluator.evaluate`` on an ``HFLM`` that wraps the loaded
model and its tokenizer: never a second load, never a hub call for the tokenizer. Only the include path's tasks are
indexed unless a task is not among them (indexing lm-eval's built-in tasks takes seconds).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from geomsweep.behavior.harness_tasks import TOY_TASKS, write_toy_tasks
from geomsweep.config.errors import ConfigError
from geomsweep.config.measurement import HarnessConfig
from geomsweep.config.toy import ToyConfig
from geomsweep.keys import metrics as M
from geomsweep.sources.models import model_source

FEWSHOT_SEED = 1234  # lm_eval.simple_evaluate's default few-shot seed
LOCAL_HINT = (
    "point eval.harness.include_path at a folder of task YAMLs over local files (dataset_path: json, "
    "dataset_kwargs: {data_files: {test: <file.jsonl>}}, test_split: test)"
)


@dataclass(frozen=True)
class HarnessResult:
    metrics: dict[str, float]  # downstream/<task>/<metric> and <metric>_stderr
    results: dict  # lm-eval's results (the JSON it would write), samples left out
    samples: dict[str, list[dict]]  # per task, each item's scores (what paired changes are computed from)

    def item_scores(self) -> dict[str, list[float]]:
        """``<task>/<metric>`` -> each item's score in item order, for every metric the task reports per item."""
        scores = {}
        for task, rows in self.samples.items():
            rows = sorted(rows, key=lambda row: row["doc_id"])
            for key in self.metrics:
                if not key.startswith(f"{M.DOWNSTREAM}{task}/") or "_stderr" in key:
                    continue
                metric = key.removeprefix(f"{M.DOWNSTREAM}{task}/")
                if rows and isinstance(rows[0].get(metric), int | float):
                    scores[f"{task}/{metric}"] = [float(row[metric]) for row in rows]
        return scores


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """lm-eval's notices silenced while it runs (warnings about a model passed as an object are expected here), and
    the bar a task draws while it builds its requests: it takes no ``disable`` argument, so its module's ``tqdm`` is
    swapped for a silent one for the call."""
    import lm_eval.api.task as task_module  # noqa: PLC0415

    loggers = [logging.getLogger(name) for name in ("lm_eval", "lm-eval")]
    levels = [logger.level for logger in loggers]
    bar = task_module.tqdm
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    task_module.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        task_module.tqdm = bar
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextlib.contextmanager
def no_dataset_bars() -> Iterator[None]:
    """``datasets``' bar while a task loads its data (once per job), off for the block."""
    from datasets.utils import logging as datasets_logging  # noqa: PLC0415

    shown = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            datasets_logging.enable_progress_bar()


@functools.cache
def quiet_hflm() -> type:
    """lm-eval's HFLM without its per-call progress bars (the trace has its own, one step per checkpoint)."""
    from lm_eval.models.huggingface import HFLM  # noqa: PLC0415  lm-eval imports in seconds: only when asked for

    class QuietHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = True):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = True):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = True):
            return super().generate_until(requests, disable_tqdm=True)

    return QuietHFLM


class Harness:
    """``eval.harness``'s tasks, built once; ``evaluate(model, tokenizer)`` scores them on one checkpoint."""

    def __init__(self, cfg: HarnessConfig, include_paths: list[Path]):
        from lm_eval.tasks import TaskManager  # noqa: PLC0415  lm-eval imports in seconds: only when asked for

        self.cfg = cfg
        unreadable(include_paths)
        paths = [str(p) for p in include_paths]
        with quiet(), no_dataset_bars():
            manager = TaskManager(include_path=paths or None, include_defaults=False)
            if not set(cfg.tasks) <= known_names(manager):
                manager = TaskManager(include_path=paths or None, include_defaults=True)
            self.tasks = self._load(manager)
        for task in self.tasks["tasks"].values():
            if cfg.num_fewshot is not None and task.get_config("num_fewshot") != 0:
                task.set_config(key="num_fewshot", value=cfg.num_fewshot)
            elif task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=FEWSHOT_SEED)

    def _load(self, manager) -> dict:
        """Each task built with its data, or one line naming the task that cannot be had and what to do."""
        known = known_names(manager)
        for task in self.cfg.tasks:
            if task not in known:
                where = f" or in {self.cfg.include_path}" if self.cfg.include_path else ""
                raise ConfigError(
                    f"eval.harness.tasks: no task {task!r} among lm-eval's {len(known)} tasks{where}; list them "
                    f"with: lm-eval ls tasks, or {LOCAL_HINT}"
                )
        loaded = {"tasks": {}, "groups": {}, "group_map": {}}
        for task in self.cfg.tasks:
            try:
                one = manager.load([task])
            except Exception as err:  # a YAML lm-eval cannot read, a dataset that cannot be had (offline, no file)
                cause = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise ConfigError(
                    f"eval.harness.tasks: task {task!r} cannot be built ({cause}); {LOCAL_HINT}"
                ) from None
            for key in loaded:
                loaded[key].update(one[key])
        return loaded

    def requests(self) -> int:
        """The model calls one checkpoint's evaluation makes (lm-eval's instances: one per choice of a multiple-choice
        item), for a plan; built as the evaluation builds them, without a model."""
        total = 0
        with quiet():
            for task in self.tasks["tasks"].values():
                task.build_all_requests(limit=self.cfg.limit, rank=0, world_size=1)
                total += len(task.instances)
        return total

    def evaluate(self, model, tokenizer) -> HarnessResult:
        """Every task scored on ``model`` as it is (lm-eval's HFLM around the loaded object)."""
        from lm_eval.evaluator import evaluate  # noqa: PLC0415

        with quiet():
            lm = quiet_hflm()(pretrained=model, tokenizer=tokenizer, batch_size=self.cfg.batch_size)
            out = evaluate(
                lm=lm,
                task_dict=self.tasks,
                limit=self.cfg.limit,
                log_samples=True,
                bootstrap_iters=self.cfg.bootstrap_iters,
                verbosity="ERROR",
            )
        samples = out.pop("samples", {})
        return HarnessResult(downstream_metrics(out["results"]), out, samples)


def known_names(manager) -> set[str]:
    """Every task, group and tag name a TaskManager has indexed."""
    return set(manager.all_tasks + manager.all_groups + manager.all_tags)


def paired_change(before, after) -> tuple[float, float]:
    """The mean change over the same items and its SE, sd(after - before) / sqrt(n) (NaN below two items)."""
    diff = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")


def unreadable(folders: list[Path]) -> None:
    """A task YAML lm-eval cannot read is skipped by its index without a word (its task then looks unknown): named
    here instead, with the reason."""
    from lm_eval.tasks._index import load_yaml  # noqa: PLC0415

    for folder in folders:
        for path in sorted(folder.glob("**/*.yaml")):
            try:
                load_yaml(path, resolve_func=False, recursive=True)
            except Exception as err:
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise ConfigError(
                    f"eval.harness.include_path: lm-eval cannot read {path} ({reason}); fix it or move it out"
                ) from None


def downstream_metrics(results: dict[str, dict]) -> dict[str, float]:
    """lm-eval's ``{"acc,none": 0.5, "acc_stderr,none": 0.05, ...}`` per task as ``downstream/<task>/acc`` and
    ``downstream/<task>/acc_stderr`` (a stderr lm-eval could not compute, "N/A", is left out)."""
    metrics = {}
    for task, values in results.items():
        for key, value in values.items():
            if "," not in key or isinstance(value, str) or value is None:
                continue
            metric, filter_name = key.split(",", 1)
            metrics[M.downstream(task, metric, filter_name)] = float(value)
    return metrics


_BUILT: dict[str, Harness] = {}  # per process: the job reuses what its preflight built


def harness_for(settings) -> Harness | None:
    """The job's harness, built once per process (None when ``eval.harness.tasks`` is empty). The toy's own tasks
    (toy_recall, toy_arithmetic) are written beside its cache and need the toy model; with ``eval.toy_n_docs=0``
    (toy evaluation off) they are left out."""
    cfg = settings.eval.harness
    tasks, paths = list(cfg.tasks), [Path(cfg.include_path).expanduser()] if cfg.include_path else []
    toy_tasks = [task for task in tasks if task in TOY_TASKS]
    if toy_tasks and not settings.eval.toy_n_docs:  # the toy's evaluation is off
        tasks, toy_tasks = [task for task in tasks if task not in TOY_TASKS], []
    if toy_tasks and not model_source(settings.model).toy_world:
        raise ConfigError(
            f"eval.harness.tasks {toy_tasks} are the toy world's tasks, in its language: model.source=toy only; "
            f"valid for model={settings.model.name}: lm-eval tasks, or your own (eval.harness.include_path)"
        )
    if toy_tasks:
        toy = ToyConfig.from_cfg(settings.model.toy)
        folder = Path(settings.cache_dir).expanduser() / "harness-tasks" / toy.key()
        try:
            paths.append(write_toy_tasks(toy, folder, settings.eval.toy_n_docs, settings.seed + 7))
        except OSError as err:
            raise ConfigError(
                f"cannot write the toy's task files into {folder} ({err.strerror or err}): cache_dir must be writable"
            ) from None
    for path in paths:
        if not path.is_dir():
            raise ConfigError(f"eval.harness.include_path={str(path)!r} is not a folder; {LOCAL_HINT}")
    if not tasks:
        return None
    key = repr((tasks, [str(p) for p in paths], cfg))
    if key not in _BUILT:
        _BUILT[key] = Harness(replace(cfg, tasks=tasks), paths)
    return _BUILT[key]
