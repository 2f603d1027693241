"""Figures a user looks at first: the eigenspectra with their power-law fits, and the RankMe / alpha trajectory."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib
import torch
from matplotlib.colors import SymLogNorm
from matplotlib.figure import Figure

from geomsweep.core.phases import NAMES

ZERO_EIGENVALUE = 1e-10  # relative to the largest: below it an eigenvalue is round-off, not variance
# Figures are built as plain matplotlib Figures, never through pyplot: no GUI backend, no global figure registry,
# nothing to close, safe in worker processes and notebooks alike.


def eigenspectra(spectra: dict[int, torch.Tensor], fits: dict, fit_start: int, fit_end: int, title: str = ""):
    """Log-log eigenspectra (explained-variance ratio), one line per step coloured by log step (where warmup and
    entropy-seeking happen, early checkpoints get colours of their own), with the fit of the last step drawn over
    its fit range. Eigenvalues below 1e-10 x the largest (numerically zero) are left out, and counted."""
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.subplots()
    steps = sorted(spectra)
    cmap = matplotlib.colormaps["viridis"]
    norm = SymLogNorm(linthresh=1, vmin=steps[0], vmax=max(steps[-1], steps[0] + 1))
    dropped = 0
    for step in steps:
        eigs = spectra[step]
        ratio = eigs / eigs.sum()
        kept = eigs > ZERO_EIGENVALUE * eigs.max()
        dropped = max(dropped, int((~kept).sum()))
        ranks = torch.arange(1, len(ratio) + 1)
        ax.loglog(ranks[kept], ratio[kept], color=cmap(norm(step)), lw=1, label=f"step {step}")
    last = steps[-1]
    fit = fits[last]
    if fit.alpha == fit.alpha:  # not NaN
        k = torch.arange(fit_start, fit_end + 1, dtype=torch.float64)
        scale = spectra[last].sum()
        ax.loglog(
            k,
            (fit.intercept - fit.alpha * k.log()).exp() / scale,
            "r--",
            lw=2,
            label=f"fit step {last}: α={fit.alpha:.2f}, R²={fit.r2:.3f}",
        )
    ax.set_xlabel("rank k" + (f" ({dropped} eigenvalues < 1e-10 λ₁ not drawn)" if dropped else ""))
    ax.set_ylabel("λ_k / Σλ")
    ax.set_title(_titled(title, "Eigenspectrum of last-token representations"))
    if len(steps) <= 8:
        ax.legend(fontsize=7)
    else:
        fig.colorbar(matplotlib.cm.ScalarMappable(cmap=cmap, norm=norm), ax=ax, label="step (log)")
        ax.legend(handles=ax.lines[-1:], fontsize=7)
    fig.tight_layout()
    return fig


def _titled(title: str, what: str, width: int = 60) -> str:
    """A figure's title: the run or sweep it shows (wrapped, so a long run name never runs off the figure), then
    what it shows."""
    return "\n".join([*textwrap.wrap(title, width, break_on_hyphens=False), what]) if title else what


def trajectory(
    steps: Sequence[int],
    rankme: Sequence[float],
    alpha: Sequence[float],
    loss: Sequence[float] | None = None,
    phases: Sequence[int] | None = None,
    xlabel: str = "step",
    stages: Sequence[str] | None = None,
    spans: Sequence[tuple[str, float, float]] | None = None,
    errors: tuple[Sequence[float], Sequence[float]] | None = None,
    title: str = "",
    names: tuple[str, str] = ("RankMe", "α-ReQ"),
    log_x: bool = True,
    accuracy: dict[str, Sequence[float]] | None = None,
    accuracy_label: str = "accuracy",
):
    """RankMe and alpha-ReQ (and the loss, when given) against step on a symlog axis (``log_x``: pretraining's
    log-spaced checkpoints; else linear, for post-training's evenly spaced steps); shaded by phase if given.
    With ``stages`` (released stages traced as checkpoints) the x axis is the stages in order, labelled by name;
    ``spans`` (name, first step, last step) shade the stages of a post-training pipeline on the step axis;
    ``errors`` (RankMe's and alpha's standard errors) draw +-1 SE bands; ``accuracy`` (task -> one value per step)
    adds a panel of downstream accuracy on the same axis, a line per task."""
    bands = errors or (None, None)
    panels = [(names[0], rankme, "tab:blue", bands[0]), (names[1], alpha, "tab:orange", bands[1])]
    if loss is not None:
        panels.append(("loss", loss, "tab:gray", None))
    if accuracy:
        panels.append((accuracy_label, accuracy, None, None))
    fig = Figure(figsize=(7, 2.2 * len(panels)))
    axes = fig.subplots(len(panels), 1, sharex=True)
    for ax, (name, values, color, se) in zip(axes, panels):
        if isinstance(values, dict):  # one line per task
            for task, series in values.items():
                ax.plot(steps, series, "o-", ms=3, label=task)
            ax.legend(loc="best", fontsize=7)
        else:
            ax.plot(steps, values, "o-", color=color, ms=3)
        if se is not None:
            low = [v - e for v, e in zip(values, se)]
            ax.fill_between(steps, low, [v + e for v, e in zip(values, se)], color=color, alpha=0.25, lw=0)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if phases is not None:
            shade_phases(ax, steps, phases)
        for i, (name, first, last) in enumerate(spans or ()):
            ax.axvspan(first, last, color=STAGE_COLORS[i % len(STAGE_COLORS)], alpha=0.5, lw=0, label=name)
    if phases is not None or spans:
        axes[0].legend(loc="best", fontsize=7)
    if stages:
        axes[-1].set_xticks(list(steps), list(stages))
        axes[-1].set_xlabel("stage")
    elif spans or not log_x:  # post-training steps: evenly spaced
        axes[-1].set_xlabel(xlabel)
    else:
        # linear only below the first checkpoint after 0 (step 1, or the tokens it had seen): log above it
        axes[-1].set_xscale("symlog", linthresh=min((x for x in steps if x > 0), default=1))
        axes[-1].set_xlabel(xlabel)
    axes[0].set_title(_titled(title, "Representation geometry over training"))
    fig.tight_layout()
    return fig


PHASE_COLORS = {0: "#dddddd", 1: "#cfe8ff", 2: "#ffe0c2"}


STAGE_COLORS = ("#dde8f5", "#f5e6d3", "#e0f0dc", "#eee0f3")


def shade_phases(ax, steps: Sequence[int], phases: Sequence[int]) -> None:
    """Shade contiguous runs of one phase label; edges sit halfway between checkpoints in log(step + 1)."""
    edges = [steps[0]] + [((a + 1) * (b + 1)) ** 0.5 - 1 for a, b in zip(steps, steps[1:])] + [steps[-1]]
    start = 0
    for i in range(1, len(phases) + 1):
        if i < len(phases) and phases[i] == phases[start]:
            continue
        label = phases[start]
        if label in PHASE_COLORS:  # -1: no phase detected, left unshaded
            seen = ax.get_legend_handles_labels()[1]
            ax.axvspan(
                edges[start],
                edges[i],
                color=PHASE_COLORS[label],
                alpha=0.6,
                lw=0,
                label=None if NAMES[label] in seen else NAMES[label],
            )
        start = i


def pass_at_k(curves: dict[str, dict[int, float]], n: int, title: str = ""):
    """pass@k against k (log2 axis), one line per labelled curve (e.g. a split before and after post-training);
    ``title`` names the run or sweep."""
    fig = Figure(figsize=(6, 3.8))
    ax = fig.subplots()
    for label, curve in curves.items():
        ks = sorted(curve)
        ax.plot(ks, [curve[k] for k in ks], "o-", ms=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("pass@k")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(_titled(title, f"pass@k (unbiased estimate from n={n} samples)"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def layer_heatmap(table, metric: str, title: str = "", of: str = "layer"):
    """One measure over layer x step (``table``: artifacts.layers_table or weights_table, several rows of a cell
    averaged: a block's matrices), steps evenly spaced in their order (checkpoints are log-spaced) and labelled;
    the final layer listed as -1 sits on top."""
    rows = table[table["metric"] == metric]
    grid = rows.pivot_table(index="layer", columns="step", values="value", aggfunc="mean")
    grid = grid.reindex(sorted(grid.index, key=lambda layer: (layer == -1, layer)))  # a final layer as -1: on top
    fig = Figure(figsize=(max(5.0, 0.35 * grid.shape[1] + 2.5), max(3.0, 0.3 * grid.shape[0] + 1.5)))
    ax = fig.subplots()
    image = ax.imshow(grid.to_numpy(), aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(grid.index)), [str(layer) for layer in grid.index])
    ticks = list(range(0, grid.shape[1], max(1, grid.shape[1] // 12)))
    ax.set_xticks(ticks, [str(grid.columns[i]) for i in ticks], rotation=45)
    ax.set_xlabel("step")
    ax.set_ylabel("layer (hidden state; 0: embeddings)" if of == "layer" else "block (its output's hidden state)")
    fig.colorbar(image, ax=ax, label=metric)
    what = (
        f"{metric} by layer and step"
        if of == "layer"
        else f"weights' {metric} by block and step (mean of its matrices)"
    )
    ax.set_title(_titled(title, what), fontsize=9)
    fig.tight_layout()
    return fig
