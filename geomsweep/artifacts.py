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


def log_trace_artifacts(points, probe, log) -> None:
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
                                    loss=[p.loss for p in points]), "plots/trajectory.png")
