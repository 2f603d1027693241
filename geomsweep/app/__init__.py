"""The app, on top of everything but post-training: the Hydra job (one MLflow run), the sweep (its parent run),
plans, roll-ups, reports, comparisons, the benchmark and the UI check."""
