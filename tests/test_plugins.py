"""geomsweep's MLflow plugin entry points, through MLflow's own plugin loading."""

from importlib import metadata
from pathlib import Path

import mlflow
import pandas as pd
import pytest

import geomsweep
from geomsweep.config.measurement import ProbeConfig
from geomsweep.core.extract import accumulate, encode_batches
from geomsweep.core.measure import measure_model
from geomsweep.core.spectra import spectral_geometry
from geomsweep.core.weights import weight_metrics, weight_spectra
from geomsweep.sources.checkpoints import Checkpoint
from geomsweep.sources.toy.pretrain import ToyConfig, probe_documents
from geomsweep.tracking.running_job import CURRENT_JOB
from tests.conftest import TINY_TOY


@pytest.fixture
def tracked(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    yield mlflow.MlflowClient(store)
    mlflow.end_run()


def test_entry_points_are_registered():
    from mlflow.models.evaluation.base import list_evaluators
    from mlflow.tracking.context.registry import _run_context_provider_registry

    assert "geometry" in list_evaluators()
    assert "GeomsweepRunContext" in [type(p).__name__ for p in _run_context_provider_registry]


def test_geometry_evaluator_on_a_logged_transformers_model(tracked, tiny_checkpoints, tmp_path):
    import transformers

    path = str(tiny_checkpoints / "step40")
    texts = probe_documents(ToyConfig(**TINY_TOY), 64)
    config = {"fit_start": 2, "fit_end": 20, "max_length": 48, "batch_size": 16}
    pipe = transformers.pipeline("text-generation", model=path, tokenizer=path)
    with mlflow.start_run() as run:
        info = mlflow.transformers.log_model(pipe, name="lm", pip_requirements=["transformers", "torch"])
        result = mlflow.models.evaluate(
            info.model_uri,
            pd.DataFrame({"text": texts}),
            model_type="text",
            evaluators=["geometry"],
            evaluator_config={"geometry": config},
        )
    model, tokenizer = Checkpoint("step40", 40, None, path).load()
    reps = accumulate(model, encode_batches(tokenizer, texts, 16, 48), progress=False)
    expected = spectral_geometry(reps.covariances[-1], fit_start=2, fit_end=20)
    assert result.metrics["geometry/rankme"] == pytest.approx(expected.rankme, rel=1e-5)
    assert result.metrics["geometry/alpha_req"] == pytest.approx(expected.fit.alpha, rel=1e-5)
    logged = tracked.get_run(run.info.run_id)
    assert logged.data.metrics["geometry/rankme"] == pytest.approx(expected.rankme, rel=1e-5)
    assert {"spectra/eigenspectrum.csv"} <= {a.path for a in tracked.list_artifacts(run.info.run_id, "spectra")}
    assert {"plots/eigenspectrum.png"} <= {a.path for a in tracked.list_artifacts(run.info.run_id, "plots")}
    assert "geometry/rankme_se" in result.metrics and "weights/alpha" not in result.metrics
    # the weight spectra beside, and jackknife groups that keep named documents whole: the same figures as the job's
    documents = [f"d{i // 9}" for i in range(len(texts))]
    with mlflow.start_run():
        more = mlflow.models.evaluate(
            info.model_uri,
            pd.DataFrame({"text": texts, "doc": documents}),
            model_type="text",
            evaluators=["geometry"],
            evaluator_config={"geometry": {**config, "weights": True, "document_column": "doc"}},
        )
    probe = ProbeConfig(n_sequences=len(texts), weights=True, **config)
    job = measure_model(model, tokenizer, texts, probe, progress=False, documents=documents).metrics(-1)
    assert more.metrics["geometry/rankme_se"] == pytest.approx(job["geometry/rankme_se"], rel=1e-6)
    assert more.metrics["geometry/rankme_se"] != pytest.approx(result.metrics["geometry/rankme_se"], rel=1e-3)
    assert more.metrics["weights/alpha"] == pytest.approx(weight_metrics(weight_spectra(model))["weights/alpha"])
    for bad in ({"document_column": "source"}, {"text_column": "prompt"}):  # each column named when missing
        key, column = next(iter(bad.items()))
        with mlflow.start_run(), pytest.raises(Exception, match=f"{key} '{column}' is not in the data"):
            mlflow.models.evaluate(
                info.model_uri,
                pd.DataFrame({"text": texts}),
                model_type="text",
                evaluators=["geometry"],
                evaluator_config={"geometry": {**config, **bad}},
            )
    # texts that are not non-empty strings are refused by column, not measured as "None" or as digits
    for bad_value in (None, 7, ""):
        column = [*texts[:-1], bad_value]
        with (
            mlflow.start_run(),
            pytest.raises(Exception, match=r"text_column 'text' must hold non-empty strings; 1 of"),
        ):
            mlflow.models.evaluate(
                info.model_uri,
                pd.DataFrame({"text": column}),
                model_type="text",
                evaluators=["geometry"],
                evaluator_config={"geometry": config},
            )


def test_run_context_tags_runs_started_in_a_job(tracked, monkeypatch):
    with mlflow.start_run() as outside:
        pass
    assert not any(k.startswith("geomsweep.") for k in tracked.get_run(outside.info.run_id).data.tags)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    token = CURRENT_JOB.set({"geomsweep.model": "tiny", "geomsweep.model_revision": "final"})
    try:
        with mlflow.start_run() as inside:
            pass
    finally:
        CURRENT_JOB.reset(token)
    tags = tracked.get_run(inside.info.run_id).data.tags
    assert tags["geomsweep.model"] == "tiny" and tags["geomsweep.model_revision"] == "final"
    assert tags["geomsweep.slurm_job_id"] == "4242"
    assert tags["geomsweep.version"] == geomsweep.__version__ == metadata.version("geomsweep")
    from geomsweep.plugins.run_context import git_commit

    if git_commit():
        assert tags["geomsweep.git_commit"] == git_commit() and len(git_commit()) == 40


def hostile_logged_model(tmp_path, tiny_checkpoints, marker):
    """A model logged with mlflow.transformers, then edited as a hostile file would be: its flavor names a class
    transformers lacks, and its folder's config maps that class to code that, run, writes ``marker``."""
    import json

    import transformers
    import yaml

    path = str(tiny_checkpoints / "step40")
    pipe = transformers.pipeline("text-generation", model=path, tokenizer=path)
    with mlflow.start_run():
        info = mlflow.transformers.log_model(pipe, name="lm", pip_requirements=["transformers", "torch"])
    folder = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "logged")))
    spec = yaml.safe_load((folder / "MLmodel").read_text())
    spec["flavors"]["transformers"]["pipeline_model_type"] = "HostileModel"
    (folder / "MLmodel").write_text(yaml.safe_dump(spec))
    config_path = folder / "model" / "config.json"
    config = json.loads(config_path.read_text())
    config |= {"architectures": ["HostileModel"], "model_type": "hostile_neox"}
    config["auto_map"] = {
        "AutoConfig": "configuration_hostile.HostileConfig",
        "AutoModelForCausalLM": "modeling_hostile.HostileModel",
    }
    config_path.write_text(json.dumps(config))
    payload = f"open({str(marker)!r}, 'w').write('ran')\n"
    (folder / "model" / "configuration_hostile.py").write_text(
        payload + "from transformers import GPTNeoXConfig as HostileConfig\n"
    )
    (folder / "model" / "modeling_hostile.py").write_text(
        payload + "from transformers import GPTNeoXForCausalLM as HostileModel\n"
    )
    return folder


@pytest.mark.slow
def test_the_evaluator_never_runs_a_logged_models_folder_code_unless_asked(tracked, tiny_checkpoints, tmp_path):
    marker = tmp_path / "REMOTE_CODE_RAN"
    folder = hostile_logged_model(tmp_path, tiny_checkpoints, marker)
    texts = probe_documents(ToyConfig(**TINY_TOY), 32)
    with pytest.raises(Exception, match="GEOMSWEEP_TRUST_REMOTE_CODE=1") as refused:
        mlflow.models.evaluate(str(folder), pd.DataFrame({"text": texts}), model_type="text", evaluators=["geometry"])
    assert "'HostileModel' is not a class of transformers" in str(refused.value)
    assert not marker.exists()
