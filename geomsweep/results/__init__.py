"""Tables and figures made from measurements: the artifacts a run logs (spectra, per-layer metrics, trace
summaries) and their plots."""
