"""Every MLflow metric key geomsweep writes, and the families they come in, spelled once.

Families: ``geometry/<measure>`` (the spectral measures of the probe's representations) with ``_se`` (jackknife
standard error), ``_change`` and ``_change_se`` (paired change from the base model); ``weights/<measure>`` (the
block matrices' spectra); ``eval/<task>_acc`` and ``eval/probe_loss`` (greedy evaluation); ``behavior/...``
(sampled behavior: pass@k, diversity; ``behavior/<split>/...`` for splits other than ID); ``downstream/<task>/
<metric>`` and ``<metric>_stderr`` (lm-evaluation-harness tasks; ``<metric>.<filter>`` for a filter other than
``none``); ``ablation/<variant>/...``
(the spectral-tail ablation); ``post_training/...`` (a post-training job's own figures).
"""

from __future__ import annotations

import re

GEOMETRY, WEIGHTS, EVAL, BEHAVIOR, ABLATION = "geometry/", "weights/", "eval/", "behavior/", "ablation/"
DOWNSTREAM = "downstream/"

RANKME = "geometry/rankme"
ALPHA_REQ = "geometry/alpha_req"
ALPHA_R2, ALPHA_R2_WIDE = "geometry/alpha_r2", "geometry/alpha_r2_wide"  # the power-law fit's R² (fit range, wide)
N_EIGS = "geometry/n_eigs"
PHASE = "geometry/phase"  # the phase label (an integer) at each step of a trace
PROBE_LOSS = "eval/probe_loss"
MEMORIZATION = "behavior/memorization"  # Spearman ρ of model vs ∞-gram answer log-probabilities (eval.memorization)
MEMORIZATION_SE = "behavior/memorization_se"  # its jackknife standard error over items
MEMORIZATION_ITEMS = "behavior/memorization_items"  # the items with an ∞-gram estimate, that ρ is over
MEMORIZATION_ITEMS_TABLE = "memorization/items_step"  # + <step>.csv: each item's two log-probabilities (artifact)
WEIGHTS_ALPHA = "weights/alpha"  # probe.weights: the mean power-law alpha of the block matrices
STAGE = "post_training/stage"  # a pipeline's stage (0, 1, ...) at each measured step
POST_TRAINING_SECONDS = "post_training/seconds"

PASS_AT = re.compile(r"behavior/pass_at_(\d+)")
PASS_AT_VARIANTS = re.compile(r"behavior/pass_at_(\d+)(_lo|_hi|_change|_change_lo|_change_hi)?")


def geometry(measure: str) -> str:
    """``geometry/<measure>``: one of core.definitions.METRICS, or a suffixed one (``rankme_change``)."""
    return GEOMETRY + measure


def weights(measure: str) -> str:
    return WEIGHTS + measure


def se(key: str) -> str:
    """The key of ``key``'s jackknife standard error."""
    return key + "_se"


def change(key: str) -> str:
    """The key of ``key``'s paired change from the base model."""
    return key + "_change"


def paired_over_items(key: str) -> str | None:
    """The name a change paired over the same items by its job goes by in comparisons (``toy_recall/acc_change``
    for ``downstream/toy_recall/acc_change``, ``memorization_change`` for ``behavior/memorization_change``), or None
    for any other key: seeds share those items, so their noise is shared."""
    if key.startswith(DOWNSTREAM) and key.endswith("_change"):
        return key.removeprefix(DOWNSTREAM)
    return key.removeprefix(BEHAVIOR) if key == change(MEMORIZATION) else None


def accuracy(task: str) -> str:
    """``eval/<task>_acc``: greedy accuracy on a task (or a split of one)."""
    return f"{EVAL}{task}_acc"


def behavior_prefix(split: str) -> str:
    """Where a split's sampled behavior goes: ``behavior/`` for ID, ``behavior/<split>/`` for the others."""
    return BEHAVIOR if split == "id" else f"{BEHAVIOR}{split}/"


def pass_at(k: int, split: str = "id") -> str:
    return f"{behavior_prefix(split)}pass_at_{k}"


def downstream(task: str, metric: str, filter_name: str = "none") -> str:
    """``downstream/<task>/<metric>``: lm-eval's ``<metric>,<filter>`` result as a legal MLflow key."""
    return f"{DOWNSTREAM}{task}/{metric}" + ("" if filter_name == "none" else f".{filter_name}")


def ablation(name: str) -> str:
    return ABLATION + name


RANKME_SE, ALPHA_SE = se(RANKME), se(ALPHA_REQ)  # probe.jackknife's error bars
RANKME_CHANGE, ALPHA_CHANGE = change(RANKME), change(ALPHA_REQ)
