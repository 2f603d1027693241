"""The choices a measurement is defined by, and the study's reference settings: defined here once, in pure Python,
so the config's schema imports them without loading torch. Two runs are comparable only when these match.

StrEnum members compare equal to, and print as, their plain string values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

# The reference (the study's code): PCA keeps min(2048, N, D) components; alpha is fit over 1-based ranks 12..100.
REFERENCE_MAX_EIGS = 2048
REFERENCE_FIT = (12, 100)


class Norm(StrEnum):
    post = "post"  # the final layer after the final norm (what the unembedding sees; the study's)
    pre = "pre"  # the residual stream before the final norm


ALL_LAYERS = "all"  # probe.layers=all: every hidden state, embeddings included


def headline_layer(layers) -> int:
    """The layer whose values are the run's metrics: the first named, or the final one for ``all``."""
    return -1 if layers == ALL_LAYERS else layers[0]


# The measures probe.metrics may name (core/suite.py); RankMe and alpha-ReQ are always measured.
PAPER_METRICS = ("rankme", "alpha_req")
METRICS = (
    *PAPER_METRICS,
    "participation_ratio",
    "participation_ratio_corrected",
    "stable_rank",
    "top10_variance",
    "anisotropy",
    "twonn",
)


class JackknifeGroups(StrEnum):
    block = "block"  # contiguous runs of the probe order: overlapping windows and neighbours share a group
    interleaved = "interleaved"  # sequence i in group i mod K: right only when neighbouring texts are independent


class RankMeVariant(StrEnum):
    eigen = "eigen"  # entropy of the eigenvalues (the study)
    singular = "singular"  # entropy of the singular values (Garrido et al.)


class PaddingSide(StrEnum):
    right = "right"
    left = "left"


class Dtype(StrEnum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


def choice(enum: type[StrEnum], value, key: str):
    """``value`` as a member of ``enum``, or a ValueError naming ``key``, the value and the valid ones (for callers
    that bypass the config, such as the evaluator plugin)."""
    try:
        return enum(value)
    except ValueError:
        raise ValueError(f"{key}={value!r}; valid: {', '.join(enum)}") from None


@dataclass
class PhaseRule:
    """How a RankMe trajectory is cut into phases (the ``phases`` config group's schema and defaults)."""

    min_change: float = field(
        default=0.15, metadata={"help": "a swing counts as a phase when RankMe moves by at least this fraction"}
    )
    bandwidth: float = field(default=0.25, metadata={"help": "smoothing width in log(step + 1) (0: none)"})

    def __post_init__(self) -> None:
        if not self.min_change > 0:
            raise ValueError(f"phases.min_change={self.min_change} must be > 0")
        if self.bandwidth < 0:
            raise ValueError(f"phases.bandwidth={self.bandwidth} must be >= 0 (0: no smoothing)")
