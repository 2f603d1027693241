"""geomsweep's MLflow plugins: the ``geometry`` model evaluator and the run-context provider (entry points in
pyproject.toml). Tiny and stateless: each acts only where it belongs."""
