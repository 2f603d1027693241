"""MLflow bookkeeping, one concern a module: ``keys`` (every tag key), ``store`` (the store and experiment),
``identity`` (a cell's hash), ``liveness`` (earlier runs of a cell), ``writer`` (``RunLogger``, the one writer),
``context`` (the Hydra job a run belongs to) and ``server`` (a local ``mlflow server``)."""
