"""What a trace leaves in its run besides metrics: spectra and per-layer tables, and the two figures."""

from __future__ import annotations

import pandas as pd

from geomsweep import plots


def spectra_table(points, layer: int) -> pd.DataFrame:
    """Long table (step, rank, eigenvalue, explained-variance ratio) of one layer's spectra."""
    frames = []
    for p in points:
        eigs = p.geometry[layer].eigs
        frames.append(pd.DataFrame({
            "step": p.checkpoint.step, "revision": p.checkpoint.revision, "rank": range(1, len(eigs) + 1),
            "eigenvalue": eigs.numpy(), "explained_variance_ratio": (eigs / eigs.sum()).numpy(),
        }))
    return pd.concat(frames, ignore_index=True)


def layers_table(points) -> pd.DataFrame:
    """One row per (checkpoint, layer): every spectral metric, for layers beyond the headline one."""
    return pd.DataFrame([
        {"step": p.checkpoint.step, "revision": p.checkpoint.revision, "tokens": p.checkpoint.tokens,
         "layer": layer, "n_sequences": g.n_samples, "probe_loss": p.loss, **g.metrics()}
        for p in points for layer, g in p.geometry.items()
    ])


def log_phases(points, probe, phases_cfg, log):
    """Detect phases on the headline layer's RankMe; log ``geometry/phase`` per checkpoint and the boundaries."""
    from geomsweep import phases as ph

    layer = probe.layers[0]
    found = ph.detect([p.checkpoint.step for p in points], [p.geometry[layer].rankme for p in points],
                      min_change=phases_cfg.min_change, bandwidth=phases_cfg.bandwidth)
    log.history({"geometry/phase": {p.checkpoint.step: label for p, label in zip(points, found.labels)}})
    log.tags({"geomsweep.phases": found.describe(),
              "geomsweep.phase_boundaries": ",".join(map(str, found.boundaries)) or "none"})
    return found


def log_trace_artifacts(points, probe, log, phases=None) -> None:
    layer = probe.layers[0]
    log.table(spectra_table(points, layer), "spectra/eigenspectra.csv")
    log.table(layers_table(points), "spectra/metrics_by_layer.csv")
    log.figure(plots.eigenspectra({p.checkpoint.step: p.geometry[layer].eigs for p in points},
                                  {p.checkpoint.step: p.geometry[layer].fit for p in points},
                                  probe.fit_start, probe.fit_end), "plots/eigenspectrum.png")
    if len(points) > 1:
        log.figure(plots.trajectory([p.checkpoint.step for p in points],
                                    [p.geometry[layer].rankme for p in points],
                                    [p.geometry[layer].fit.alpha for p in points],
                                    loss=[p.loss for p in points] if probe.loss else None,
                                    phases=phases.labels if phases else None), "plots/trajectory.png")


def log_ablation_table(points, phases, log) -> None:
    """``ablation/tail_ablation.csv``: Table 1 of the paper, one row per (checkpoint, task)."""
    from geomsweep import ablation

    labels = phases.labels if phases else [None] * len(points)
    rows = [{"step": p.checkpoint.step, "phase": label, "results": p.ablation}
            for p, label in zip(points, labels) if p.ablation]
    if rows:
        log.table(ablation.table(rows), "ablation/tail_ablation.csv")


def log_post_training_artifacts(history: dict[int, dict[str, float]], method: str, log) -> None:
    """``post_training/history.csv`` (every measurement by post-training step) and the trajectory over it."""
    frame = pd.DataFrame.from_dict(history, orient="index").rename_axis("step").reset_index()
    log.table(frame, "post_training/history.csv")
    geometry = frame.dropna(subset=["geometry/rankme"])
    if len(geometry) > 1:
        fig = plots.trajectory(list(geometry["step"]), list(geometry["geometry/rankme"]),
                               list(geometry["geometry/alpha_req"]),
                               loss=list(geometry["eval/probe_loss"]) if "eval/probe_loss" in geometry else None,
                               xlabel=f"{method} step")
        log.figure(fig, "plots/trajectory.png")
