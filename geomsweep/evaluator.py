"""The ``geometry`` MLflow model evaluator (entry point ``mlflow.model_evaluator``, see pyproject.toml).

``mlflow.models.evaluate(model_uri, data, evaluators=["geometry"])`` on a logged transformers text-generation
model and a text column logs RankMe, alpha-ReQ and the spectrum artifacts, measured exactly as geomsweep's probe
does (last non-padding token, final layer after the norm). ``evaluator_config={"geometry": {...}}`` takes the
keys of GEOMETRY_DEFAULTS.
"""

from __future__ import annotations

import pandas as pd
from mlflow.models.evaluation.base import EvaluationResult, ModelEvaluator

# evaluator_config keys of the geometry evaluator, with their defaults (those of conf/probe/last_token.yaml)
GEOMETRY_DEFAULTS = {"text_column": "text", "batch_size": 64, "max_length": 512, "layer": -1, "norm": "post",
                     "rankme": "eigen", "fit_start": 12, "fit_end": 100}


def transformers_components(model):
    """(model, tokenizer) inside an MLflow pyfunc model of the transformers flavor, or a clear error."""
    try:
        pipeline = model.get_raw_model()
        return pipeline.model, pipeline.tokenizer
    except (AttributeError, NotImplementedError) as err:
        raise ValueError(f"the geometry evaluator needs a transformers model logged with mlflow.transformers "
                         f"(a text-generation pipeline); got {type(model).__name__}") from err


class GeometryEvaluator(ModelEvaluator):
    @classmethod
    def can_evaluate(cls, *, model_type, evaluator_config, **kwargs) -> bool:
        return model_type in (None, "text", "question-answering", "text-summarization")

    def evaluate(self, *, model_type, dataset, run_id, evaluator_config, model=None, **kwargs):
        import mlflow

        from geomsweep import plots
        from geomsweep.extract import accumulate, encode_batches
        from geomsweep.spectra import measure

        unknown = sorted(set(evaluator_config) - set(GEOMETRY_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown geometry evaluator_config keys {unknown}; valid: {sorted(GEOMETRY_DEFAULTS)}")
        cfg = GEOMETRY_DEFAULTS | dict(evaluator_config)
        if model is None:
            raise ValueError("the geometry evaluator measures a model's representations: pass model=")
        lm, tokenizer = transformers_components(model)
        features = dataset.features_data
        if cfg["text_column"] not in features.columns:
            raise ValueError(f"text_column {cfg['text_column']!r} is not in the data; its columns: "
                             f"{list(features.columns)}")
        texts = [str(t) for t in features[cfg["text_column"]]]
        batches = encode_batches(tokenizer, texts, cfg["batch_size"], cfg["max_length"])
        reps = accumulate(lm, batches, [cfg["layer"]], cfg["norm"], progress=False)
        geometry = measure(reps.covariances[cfg["layer"]], rankme_variant=cfg["rankme"], fit_start=cfg["fit_start"],
                           fit_end=cfg["fit_end"])
        metrics = geometry.metrics() | {"eval/probe_loss": reps.loss}
        client = mlflow.MlflowClient()
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
        eigs = geometry.eigs
        table = pd.DataFrame({"rank": range(1, len(eigs) + 1), "eigenvalue": eigs.numpy(),
                              "explained_variance_ratio": (eigs / eigs.sum()).numpy()})
        client.log_text(run_id, table.to_csv(index=False), "spectra/eigenspectrum.csv")
        fig = plots.eigenspectra({0: eigs}, {0: geometry.fit}, cfg["fit_start"], cfg["fit_end"])
        client.log_figure(run_id, fig, "plots/eigenspectrum.png")
        return EvaluationResult(metrics=metrics, artifacts={}, run_id=run_id)
