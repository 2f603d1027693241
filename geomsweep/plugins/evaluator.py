"""The ``geometry`` MLflow model evaluator (entry point ``mlflow.model_evaluator``, see pyproject.toml).

``mlflow.models.evaluate(model_uri, data, evaluators=["geometry"])`` on a logged transformers text-generation
model and a text column logs RankMe, alpha-ReQ and the spectrum artifacts, measured exactly as geomsweep's probe
does (last non-padding token, final layer after the norm). ``evaluator_config={"geometry": {...}}`` takes the
keys of ``geometry_defaults()``: the probe's own defaults (ProbeConfig; ``weights=True`` adds the weight spectra),
the text column and, for chunks of longer documents, the column naming each one's document.

No code from a model's folder runs. MLflow loads the model before any evaluator sees it, and its transformers
loader trusts the folder's Python (``trust_remote_code=True``) whenever the logged class or a component is not one
of transformers' own. MLflow imports this module (the entry point) inside ``mlflow.models.evaluate`` before that
load, so importing it guards the loader: such a model is refused, naming the folder, its class and the opt-in
``GEOMSWEEP_TRUST_REMOTE_CODE=1`` (the evaluator's counterpart of ``model.trust_remote_code``). Models whose
classes transformers knows load as before.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import mlflow
import mlflow.transformers.model_io as mlflow_model_io
import transformers
from mlflow.exceptions import MlflowException
from mlflow.models.evaluation.artifacts import CsvEvaluationArtifact, ImageEvaluationArtifact
from mlflow.models.evaluation.base import EvaluationResult, ModelEvaluator

from geomsweep.config.measurement import ProbeConfig
from geomsweep.core.definitions import headline_layer
from geomsweep.core.measure import measure_model
from geomsweep.core.weights import weight_metrics, weight_spectra
from geomsweep.results import plots
from geomsweep.results.artifacts import spectrum_table
from geomsweep.tracking.writer import RunLogger

REMOTE_CODE_OPT_IN = "GEOMSWEEP_TRUST_REMOTE_CODE"


def refuse_remote_code(where: str, what: str) -> None:
    """Unless the opt-in is set: a one-line refusal naming the model, the class that would need its code, the key."""
    if os.environ.get(REMOTE_CODE_OPT_IN) == "1":
        return
    raise MlflowException(
        f"geomsweep refuses to load {where}: {what} is not a class of transformers, so loading it would run the "
        f"Python code shipped with the model; set {REMOTE_CODE_OPT_IN}=1 to trust that code"
    )


def _guard_model_class(load_class):
    """MLflow's loader of a model class that transformers lacks (it reads the folder's auto_map, trusting its code)."""

    @functools.wraps(load_class)
    def guarded(model_name_or_path, revision=None):
        config = Path(model_name_or_path) / "config.json"
        named = json.loads(config.read_text()).get("architectures", ["?"])[0] if config.is_file() else "its class"
        refuse_remote_code(f"the model at {model_name_or_path}", repr(named))
        return load_class(model_name_or_path, revision=revision)

    guarded.geomsweep_guard = True
    return guarded


def _guard_component(load_component):
    """MLflow's loader of a tokenizer or processor, which trusts a folder's code for a class transformers lacks."""

    @functools.wraps(load_component)
    def guarded(flavor_conf, name, local_path=None, repo_id=None):
        component = flavor_conf.get(mlflow_model_io.FlavorKey.COMPONENT_TYPE.format(name), "")
        if component and not hasattr(transformers, component):
            refuse_remote_code(f"the {name} at {local_path or repo_id}", repr(component))
        return load_component(flavor_conf, name, local_path=local_path, repo_id=repo_id)

    guarded.geomsweep_guard = True
    return guarded


if not getattr(mlflow_model_io._load_class_from_transformers_config, "geomsweep_guard", False):
    mlflow_model_io._load_class_from_transformers_config = _guard_model_class(
        mlflow_model_io._load_class_from_transformers_config
    )
    mlflow_model_io._load_component = _guard_component(mlflow_model_io._load_component)

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


def text_values(column, key: str, name: str) -> list[str]:
    """The column's texts, or one error naming the column and the rows that are not non-empty strings (a None
    would be measured as the text "None", a number as its digits)."""
    bad = [(i, value) for i, value in enumerate(column) if not isinstance(value, str) or not value.strip()]
    if bad:
        shown = ", ".join(f"row {i}: {value!r}" for i, value in bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise ValueError(
            f"{key} {name!r} must hold non-empty strings; {len(bad)} of {len(column)} rows do not ({shown})"
        )
    return list(column)


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
        texts = text_values(features[cfg["text_column"]], "text_column", cfg["text_column"])
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
