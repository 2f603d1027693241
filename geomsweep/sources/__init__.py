"""Where models and texts come from: checkpoints (hub, local, GGUF, MLflow, the toy), the hub cache, probe data,
post-training tasks and the embedded toy world. Light at import: ``choices`` loads no torch."""
