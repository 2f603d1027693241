"""The ``geometry`` MLflow model evaluator (entry point ``mlflow.model_evaluator``, see pyproject.toml).

``mlflow.models.evaluate(model_uri, data, evaluators=["geometry"])`` on a logged transformers text-generation
model and a text column logs RankMe, alpha-ReQ and the spectrum artifacts, measured exactly as geomsweep's probe
does (last non-padding token, final layer after the norm). ``evaluator_config={"geometry": {...}}`` takes the
keys of ``geometry_defaults()``: the probe's own defaults (ProbeConfig; ``weights=True`` adds the weight spectra),
the text column and, for chunks of longer documents, the column naming each one's document.
"""

from __future__ import annotations

import mlflow
from mlflow.models.evaluation.artifacts import CsvEvaluationArtifact, ImageEvaluationArtifact
from mlflow.models.evaluation.base import EvaluationResult, ModelEvaluator

from geomsweep.config.schema import ProbeConfig
from geomsweep.core.definitions import headline_layer
from geomsweep.core.measure import measure_model
from geomsweep.core.weights import weight_metrics, weight_spectra
from geomsweep.results import plots
from geomsweep.results.artifacts import spectrum_table
from geomsweep.tracking.writer import RunLogger

EVALUATOR_KEYS = (
    "text_column",
    "batch_size",
    "max_length",
    "layer",
    "norm",
    "rankme",
    "fit_start",
    "fit_end",
    "max_eigs",
    "jackknife",
    "jackknife_groups",
    "weights",
)


def geometry_defaults() -> dict:
    """evaluator_config keys and their defaults: those of the probe (geomsweep.config.schema.ProbeConfig)."""
    probe = ProbeConfig()
    return {
        "text_column": "text",
        "document_column": None,  # names each text's document: block jackknife groups keep documents whole
        "layer": headline_layer(probe.layers),
        **{key: getattr(probe, key) for key in EVALUATOR_KEYS if hasattr(probe, key)},
    }


def transformers_components(model):
    """(model, tokenizer) inside an MLflow pyfunc model of the transformers flavor, or a clear error."""
    try:
        pipeline = model.get_raw_model()
        return pipeline.model, pipeline.tokenizer
    except (AttributeError, NotImplementedError) as err:
        raise ValueError(
            f"the geometry evaluator needs a transformers model logged with mlflow.transformers "
            f"(a text-generation pipeline); got {type(model).__name__}"
        ) from err


class GeometryEvaluator(ModelEvaluator):
    @classmethod
    def can_evaluate(cls, *, model_type, evaluator_config, **kwargs) -> bool:
        return model_type in (None, "text", "question-answering", "text-summarization")

    def evaluate(self, *, model_type, dataset, run_id, evaluator_config, model=None, **kwargs):
        defaults = geometry_defaults()
        unknown = sorted(set(evaluator_config) - set(defaults))
        if unknown:
            raise ValueError(f"unknown geometry evaluator_config keys {unknown}; valid: {sorted(defaults)}")
        cfg = defaults | dict(evaluator_config)
        if model is None:
            raise ValueError("the geometry evaluator measures a model's representations: pass model=")
        lm, tokenizer = transformers_components(model)
        features = dataset.features_data
        for key in ("text_column", "document_column"):
            if cfg[key] is not None and cfg[key] not in features.columns:
                raise ValueError(f"{key} {cfg[key]!r} is not in the data; its columns: {list(features.columns)}")
        probe_fields = {k: v for k, v in cfg.items() if k not in ("text_column", "document_column", "layer")}
        probe = ProbeConfig(**probe_fields, layers=[cfg["layer"]], n_sequences=len(features))
        texts = [str(t) for t in features[cfg["text_column"]]]
        documents = [str(d) for d in features[cfg["document_column"]]] if cfg["document_column"] else None
        measured = measure_model(lm, tokenizer, texts, probe, progress=False, documents=documents)
        geometry = measured.geometry[cfg["layer"]]
        metrics = measured.metrics(cfg["layer"])
        if probe.weights:  # data-free: the spectra of the model's block matrices (core/weights.py)
            metrics |= weight_metrics(weight_spectra(lm))
        log = RunLogger(run_id, mlflow.MlflowClient())
        log.metrics(metrics, step=0)
        table, figure = (
            spectrum_table(geometry.eigs),
            plots.eigenspectra({0: geometry.eigs}, {0: geometry.fit}, probe.fit_start, probe.fit_end),
        )
        log.table(table, "spectra/eigenspectrum.csv")
        log.figure(figure, "plots/eigenspectrum.png")
        uri = log.client.get_run(run_id).info.artifact_uri
        artifacts = {
            "eigenspectrum_table": CsvEvaluationArtifact(f"{uri}/spectra/eigenspectrum.csv", table),
            "eigenspectrum_plot": ImageEvaluationArtifact(f"{uri}/plots/eigenspectrum.png"),
        }
        return EvaluationResult(metrics=metrics, artifacts=artifacts, run_id=run_id)
