"""The config: the typed schema (``schema``), its checks, and reading command-line overrides (``overrides``).
Light on purpose: importing it loads no torch, transformers or mlflow, so a bad value is refused in a second."""
