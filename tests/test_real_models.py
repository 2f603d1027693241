"""Real models the paper's way: the reference probe texts and settings, real post-training recipes, released
post-training stages traced as one run. Tested offline on files and locally saved models in the hub's layouts."""

import json
import shutil
from pathlib import Path

import mlflow
import pytest
from datasets import IterableDataset
from hydra import compose, initialize_config_dir

from geomsweep.config.checks import check
from geomsweep.config.measurement import DataConfig
from geomsweep.sources.data import document_rows, english_texts, english_windows, probe_set, probe_texts
from geomsweep.sources.revisions import local_revisions
from tests.conftest import REPO, TINY_PROBE, run_app, runs_of


def settings(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return check(compose("config", overrides=list(overrides)))


def test_a_local_fineweb_copy_passes_the_token_filter_in_order(tmp_path, tiny_checkpoints):
    """data=fineweb offline: a local file in FineWeb's schema, the same min_tokens rule, the file's own order."""
    tokenizer = local_revisions(tiny_checkpoints, None)[-1].load_tokenizer()
    words = "sum one plus two is three so the".split()
    rows = [{"text": " ".join(words[: 1 + i % len(words)]), "url": f"u{i}"} for i in range(40)]
    path = tmp_path / "fineweb.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = settings("data=fineweb", f"data.path={path}", "data.source=files", "data.min_tokens=5").data
    texts = probe_texts(data, None, 10, tokenizer=tokenizer)
    lengths = {r["text"]: len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in rows}
    expected = [r["text"] for r in rows if lengths[r["text"]] > 5][:10]
    assert texts == expected and len(texts) == 10 and min(lengths[t] for t in texts) > 5
    with pytest.raises(ValueError, match="data.min_tokens=5 counts tokens under the measured model's tokenizer"):
        probe_texts(data, None, 10)
    with pytest.raises(ValueError, match="no text of at least 1 characters and more than 500 tokens"):
        probe_texts(DataConfig(source="files", path=str(path), min_tokens=500), None, 10, tokenizer=tokenizer)


def test_the_english_texts_are_windows_of_one_licence_each_with_no_licence_twice():
    """data=english names each window's licence, so block jackknife groups keep a licence whole; a window never
    spans two licences, and a licence under two names (GPL, GPL-3) is read once."""
    windows = english_windows()
    licences = {}
    for path in sorted(Path("/usr/share/common-licenses").glob("*")):
        if path.is_file():
            licences.setdefault(path.read_text(), path.resolve().name)  # one name per distinct text
    assert [name for name, _ in windows] == sorted([name for name, _ in windows], key=[*licences.values()].index)
    assert {name for name, _ in windows} == set(licences.values())
    texts = [text for _, text in windows]
    assert len(set(texts)) == len(texts)  # no window twice
    by_name = {name: " ".join(text.split()) for text, name in licences.items()}
    assert all(text in by_name[name] for name, text in windows)  # inside its own licence
    probe = probe_set(DataConfig(source="english"), None, 300)
    assert probe.texts == texts[:300] and probe.documents == [name for name, _ in windows[:300]]


def test_a_document_column_names_the_document_of_each_text(tmp_path):
    """data.document_field: the column saying which document each text was cut from reaches the probe set, in
    order and after the text filters; a column the data does not have is refused by name."""
    rows = [{"text": "x" * (1 + i % 4), "doc": f"d{i // 3}"} for i in range(30)]
    path = tmp_path / "chunks.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    kept = [r for r in rows if len(r["text"]) >= 2][:12]
    probe = probe_set(DataConfig(source="files", path=str(path), min_chars=2, document_field="doc"), None, 12)
    assert probe.texts == [r["text"] for r in kept] and probe.documents == [r["doc"] for r in kept]
    assert probe_set(DataConfig(source="files", path=str(path)), None, 12).documents is None
    with pytest.raises(ValueError, match="data.document_field 'source' is not a column of the dataset"):
        probe_set(DataConfig(source="files", path=str(path), document_field="source"), None, 12)


def test_a_stream_that_lists_no_columns_is_checked_at_its_first_row():
    """A hub stream may not know its columns before reading (IterableDataset.column_names is None): a text or
    document field its rows lack is refused by name at the first row, not as a KeyError."""
    stream = IterableDataset.from_generator(lambda: ({"text": f"text {i}", "doc": f"d{i // 2}"} for i in range(4)))
    assert stream.column_names is None
    assert list(document_rows(stream, "text", "doc")) == [
        ("d0", "text 0"),
        ("d0", "text 1"),
        ("d1", "text 2"),
        ("d1", "text 3"),
    ]
    with pytest.raises(
        ValueError, match=r"data.document_field 'source' is not a column of the dataset; columns: \['text', 'doc'\]"
    ):
        next(iter(document_rows(stream, "text", "source")))
    with pytest.raises(ValueError, match="data.text_field 'content' is not a column"):
        next(iter(document_rows(stream, "content", None)))


@pytest.mark.parametrize(
    "method, task, first_args",
    [
        ("sft", "Anthropic/hh-rlhf", {"num_train_epochs": 1, "learning_rate": 5e-6}),
        ("dpo", "HuggingFaceH4/ultrafeedback_binarized", {"num_train_epochs": 1, "learning_rate": 5e-7, "beta": 0.1}),
        ("rlvr", "openai/gsm8k", {"max_steps": 1000, "learning_rate": 1e-6, "max_completion_length": 512}),
    ],
)
def test_a_hub_model_post_trains_on_a_real_task_with_real_arguments(method, task, first_args):
    real = settings("model=olmo-7b", f"method={method}")
    assert real.task.source == "hub" and real.task.name == task and real.task.limit is None
    assert {key: real.method.args[key] for key in first_args} == first_args
    assert real.method.args["gradient_checkpointing"] is True and real.method.geometry_every == 100
    toy = settings(f"method={method}")  # the toy keeps its own
    assert toy.task.source == "arithmetic" and toy.method.args["max_steps"] == 40
    assert settings("model=olmo-7b", f"method={method}", "task=arithmetic").task.source == "arithmetic"


def test_stage_presets_compose():
    olmo = settings("model=olmo2-7b-stages")
    assert [s.name for s in olmo.model.stages] == ["base", "sft", "dpo", "rlvr"]
    assert olmo.model.stages[-1].hub_id == "allenai/OLMo-2-1124-7B-Instruct"
    assert [s.name for s in settings("model=tulu3-8b-stages").model.stages] == ["sft", "dpo", "rlvr"]


@pytest.mark.slow
def test_a_local_stage_mirror_traces_as_one_run_with_stage_tags(tmp_path, cache_dir, tiny_checkpoints, store):
    steps = sorted(int(p.name[4:]) for p in tiny_checkpoints.iterdir() if p.name.startswith("step"))
    mirror = tmp_path / "pipeline"
    for stage, step in zip(("base", "sft", "dpo"), (steps[0], steps[len(steps) // 2], steps[-1])):
        shutil.copytree(tiny_checkpoints / f"step{step}", mirror / stage)
    run_app(
        [
            *TINY_PROBE,
            "progress=false",
            "sampler.n=0",
            "model=local",
            f"model.path={mirror}",
            "model.stages=[{name: base},{name: sft},{name: dpo}]",
        ],
        tmp_path,
        cache_dir,
        store,
    )
    (run,) = runs_of(store, "job")
    client = mlflow.MlflowClient(store)
    rankme = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "geometry/rankme")}
    assert sorted(rankme) == [0, 1, 2]
    assert {k: v for k, v in run.data.tags.items() if k.startswith("geomsweep.stage.")} == {
        "geomsweep.stage.0": "base",
        "geomsweep.stage.1": "sft",
        "geomsweep.stage.2": "dpo",
    }
    assert "geometry/phase" not in run.data.metrics  # stages are not pretraining time
    assert run.data.metrics["geometry/n_eigs"] == 32
    inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert inputs and inputs[0].dataset.digest == run.data.tags["geomsweep.probe_digest"]


def test_a_missing_stage_directory_is_named(tmp_path):
    from geomsweep.sources.models import available

    model = settings("model=local", f"model.path={tmp_path}", "model.stages=[{name: base}]").model
    with pytest.raises(FileNotFoundError, match=r"stage 'base': .* is not a saved model"):
        available(model, str(tmp_path))


@pytest.mark.real
def test_a_real_lm_on_real_english_text_end_to_end(tmp_path, cache_dir, store):
    """SmolLM2-135M (shipped by a PyPI package) on 256 sequences of 64 tokens of English, offline."""
    pytest.importorskip("gguf", reason="model=smollm2-135m needs the smollm2 extra (make install)")
    texts = english_texts()
    assert len(texts) >= 256
    path = tmp_path / "english.txt"
    path.write_text("\n".join(texts))
    args = [
        "model=smollm2-135m",
        "data=files",
        f"data.path={path}",
        "data.min_tokens=64",
        "probe.n_sequences=256",
        "probe.max_length=64",
        "probe.batch_size=32",
        "sampler.n=0",
        "progress=false",
    ]
    run_app(args, tmp_path, cache_dir, store)
    (run,) = runs_of(store, "job")
    metrics = run.data.metrics
    assert run.info.status == "FINISHED" and metrics["geometry/n_eigs"] == 256  # N < D = 576: the reference keeps N
    assert 10 < metrics["geometry/rankme"] < 576 and 0.2 < metrics["geometry/alpha_req"] < 3
    assert 0.8 < metrics["geometry/alpha_r2"] <= 1 and metrics["eval/probe_loss"] < 6  # it reads English
