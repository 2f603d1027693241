"""Downstream accuracy through lm-evaluation-harness: the same numbers as lm-eval run on its own, on the model already
loaded, and every task that cannot be had refused in one line before any run opens."""

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from transformers import AutoModelForCausalLM

from geomsweep.behavior.harness import Harness
from geomsweep.behavior.harness_tasks import TOY_TASKS, write_english_next_word, write_toy_tasks
from geomsweep.config.measurement import HarnessConfig
from geomsweep.config.toy import ToyConfig
from geomsweep.sources.checkpoints import Checkpoint
from tests.conftest import TINY, TINY_TOY, run_app

GEOMETRY = [*TINY, "sampler.n=0", "eval.memorization.items=null", "eval.ablation_k=[]"]


def by_itself(checkpoint_dir, task_dir, tasks, limit=None) -> dict:
    """lm-eval as a user runs it: the checkpoint loaded from its folder by HFLM, the tasks from the folder."""
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    lm = HFLM(pretrained=str(checkpoint_dir), device="cpu", batch_size=16)
    return simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit, bootstrap_iters=1000)


def test_the_harness_on_the_loaded_model_scores_what_lm_eval_scores_from_the_folder(tmp_path, tiny_checkpoints):
    tasks = write_toy_tasks(ToyConfig(**TINY_TOY), tmp_path, n_docs=60, seed=7)
    final = sorted(tiny_checkpoints.glob("step*"), key=lambda p: int(p.name[4:]))[-1]
    model, tokenizer = Checkpoint("final", 0, None, str(final)).load()
    harness = Harness(HarnessConfig(tasks=list(TOY_TASKS), limit=40), [tasks])
    ours, again = harness.evaluate(model, tokenizer), harness.evaluate(model, tokenizer)  # tasks built once, reused
    theirs = by_itself(final, tasks, TOY_TASKS, limit=40)["results"]
    for task in TOY_TASKS:
        for metric in ("acc", "acc_norm"):
            assert ours.metrics[f"downstream/{task}/{metric}"] == pytest.approx(
                theirs[task][f"{metric},none"], abs=1e-9
            )
            stderr = theirs[task][f"{metric}_stderr,none"]
            assert ours.metrics[f"downstream/{task}/{metric}_stderr"] == pytest.approx(stderr, abs=1e-9)
        assert len(ours.samples[task]) == 40
    assert again.metrics == ours.metrics


def test_a_trace_logs_each_checkpoints_downstream_accuracy_with_one_load_per_checkpoint(
    tmp_path, cache_dir, tiny_checkpoints, store, monkeypatch
):
    loads = []
    real = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    run_app([*GEOMETRY, "eval.harness.tasks=[toy_recall]", "eval.harness.log_samples=true"], tmp_path, cache_dir, store)
    assert len(loads) == len(list(tiny_checkpoints.glob("step*")))  # the harness scored the measured model itself
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs(["1"])
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "downstream/toy_recall/acc")}
    assert sorted(history) == [0, 1, 3, 12, 40]
    assert (
        "downstream/toy_recall/acc_stderr" in run.data.metrics
        and "downstream/toy_arithmetic/acc" not in run.data.metrics
    )
    # the same number as lm-eval by itself on that checkpoint's folder and the task folder the job wrote
    (task_dir,) = (cache_dir / "harness-tasks").glob("*/60-7")
    theirs = by_itself(tiny_checkpoints / "step40", task_dir, ["toy_recall"])["results"]["toy_recall"]["acc,none"]
    assert history[40] == pytest.approx(theirs, abs=1e-9)
    results = client.download_artifacts(run.info.run_id, "downstream/results_step40.json", str(tmp_path))
    results = json.loads(Path(results).read_text())
    assert results["results"]["toy_recall"]["acc,none"] == history[40]
    samples = client.download_artifacts(run.info.run_id, "downstream/samples_step40_toy_recall.json", str(tmp_path))
    items = (task_dir / "toy_recall.jsonl").read_text().splitlines()
    assert len(json.loads(Path(samples).read_text())) == len(items)
    # the paper's Figure 1 for this trace, and each behavioural metric's change within each phase, paired over items
    assert "plots/trace.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    by_phase = pd.read_csv(client.download_artifacts(run.info.run_id, "downstream/by_phase.csv", str(tmp_path)))
    recall = by_phase[by_phase["metric"] == "toy_recall/acc"]
    assert list(recall["start_step"])[0] == 0 and list(recall["end_step"])[-1] == 40
    first = recall.iloc[0]
    assert first["change"] == pytest.approx(history[first["end_step"]] - history[first["start_step"]])
    assert (recall["change_se"] > 0).any()


@pytest.mark.parametrize(
    ("setup", "said"),
    [
        ("unknown", "eval.harness.tasks: no task 'no_such_task' among lm-eval's"),
        ("malformed", "eval.harness.include_path: lm-eval cannot read"),
        ("no data", "eval.harness.tasks: task 'lost' cannot be built"),
    ],
)
def test_a_task_that_cannot_be_had_is_one_line_before_any_run(tmp_path, cache_dir, setup, said):
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "broken.yaml").write_text("task: broken\ndataset_path: json\noutput_type: [this is not\n")
    (folder / "lost.yaml").write_text(
        f"task: lost\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'missing.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: choices\n"
        "doc_to_target: label\n"
    )
    if setup != "malformed":
        (folder / "broken.yaml").unlink()
    task = {"unknown": "no_such_task", "malformed": "broken", "no data": "lost"}[setup]
    args = [*GEOMETRY, f"eval.harness.include_path={folder}", f"eval.harness.tasks=[{task}]"]
    proc = run_app(args, tmp_path, cache_dir, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("geomsweep: invalid config: ") and said in line, line
    assert "eval.harness.include_path" in line and ("broken.yaml" in line) == (setup == "malformed")
    assert not (tmp_path / "mlflow.db").exists()


def test_the_toy_tasks_are_the_toy_worlds_only(tmp_path, cache_dir):
    proc = run_app(["model=smollm2-135m", "eval.harness.tasks=[toy_recall]"], tmp_path, cache_dir, check=False)
    assert "eval.harness.tasks ['toy_recall'] are the toy world's tasks, in its language: model.source=toy only" in (
        proc.stderr
    )


def test_the_ablation_scores_the_harness_tasks_too(tmp_path, cache_dir, tiny_checkpoints, store):
    args = [*GEOMETRY, "eval.harness.tasks=[toy_recall]", "eval.harness.ablate=true", "eval.ablation_k=[2,8]"]
    run_app([*args, "eval.toy_n_docs=60"], tmp_path, cache_dir, store)
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs(["1"])
    for variant in ("top2_only", "without_top2", "top8_only", "without_top8"):
        assert f"ablation/{variant}/toy_recall/acc" in run.data.metrics, variant
        assert f"ablation/{variant}/long_range_acc" in run.data.metrics, variant  # the toy's own tasks as before
    table = client.download_artifacts(run.info.run_id, "ablation/tail_ablation.csv", str(tmp_path))
    rows = pd.read_csv(table)
    recall = rows[rows["task"] == "toy_recall/acc"]
    assert len(recall) == 5 and {"full", "top2_only", "without_top2", "top8_only", "without_top8"} <= set(rows)
    intact = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "downstream/toy_recall/acc")}
    assert list(recall["full"]) == [intact[s] for s in recall["step"]]


@pytest.mark.real
def test_smollm2_scores_a_local_task_offline_with_table_1(tmp_path, cache_dir, store):
    pytest.importorskip("gguf", reason="model=smollm2-135m needs the smollm2 extra (make install)")
    folder = write_english_next_word(tmp_path / "tasks", n=40)
    args = ["model=smollm2-135m", "data=english", "probe.n_sequences=128", "probe.max_length=32", "checkpoint=final"]
    args += [f"eval.harness.include_path={folder}", "eval.harness.tasks=[english_next_word]", "eval.ablation_k=[10,50]"]
    run_app([*args, "sampler.n=0", "progress=false"], tmp_path, cache_dir, store)
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs(["1"])
    metrics = run.data.metrics
    assert 0.25 < metrics["downstream/english_next_word/acc"] <= 1  # it reads English: above chance
    table = client.download_artifacts(run.info.run_id, "ablation/tail_ablation.csv", str(tmp_path))
    rows = pd.read_csv(table)
    assert sorted(rows["task"]) == ["english_next_word/acc", "english_next_word/acc_norm"]  # rows: checkpoint, task
    (row,) = rows[rows["task"] == "english_next_word/acc"].to_dict("records")
    assert row["full"] == metrics["downstream/english_next_word/acc"]
    assert {"top10_only", "without_top10", "top50_only", "without_top50"} <= set(row)


@pytest.mark.parametrize(("every", "steps"), [(None, [0, 2]), (1, [0, 1, 2])])
def test_post_training_scores_the_tasks_at_base_and_end_with_a_paired_change(
    tmp_path, cache_dir, tiny_checkpoints, store, every, steps
):
    fast = ["++method.args.max_steps=2", "++method.geometry_every=1", "++method.args.per_device_train_batch_size=4"]
    args = [*GEOMETRY, "method=sft", *fast, "eval.harness.tasks=[toy_recall]", "eval.harness.limit=30"]
    run_app([*args, f"eval.harness.every={every or 'null'}"], tmp_path, cache_dir, store)
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs(["1"])
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "downstream/toy_recall/acc")}
    assert sorted(history) == steps  # the base and the end, and each geometry step eval.harness.every divides
    change = run.data.metrics["downstream/toy_recall/acc_change"]
    assert change == pytest.approx(history[2] - history[0], abs=1e-9)  # the mean of per-item differences
    assert run.data.metrics["downstream/toy_recall/acc_change_se"] >= 0
    listed = {a.path for a in client.list_artifacts(run.info.run_id, "downstream")}
    assert {"downstream/results_step0.json", "downstream/results_step2.json"} <= listed


def test_a_sweep_over_methods_compares_downstream_and_memorization_changes_on_its_parent_and_view(
    tmp_path, cache_dir, tiny_checkpoints, store
):
    from geomsweep.results import ui_view

    fast = ["++method.args.max_steps=2", "++method.geometry_every=1", "++method.args.per_device_train_batch_size=4"]
    args = ["-m", *GEOMETRY, "method=sft,dpo", *fast, "eval.harness.tasks=[toy_recall]", "eval.harness.limit=30"]
    args += ["eval.memorization.items=toy", "eval.memorization.limit=100"]
    run_app(args, tmp_path, cache_dir, store)
    client = mlflow.MlflowClient(store)
    runs = client.search_runs(["1"])
    (parent,) = [r for r in runs if r.data.tags.get("geomsweep.role") == "sweep"]
    sft = next(r for r in runs if r.data.params.get("cfg.method.name") == "sft")
    # one seed: the group's change is the cell's paired change, its 95% half-width the normal quantile of its SE
    change, se = (sft.data.metrics[f"downstream/toy_recall/acc_change{s}"] for s in ("", "_se"))
    assert parent.data.metrics["sft/toy_recall/acc_change"] == pytest.approx(change, rel=1e-3)  # 4 figures
    assert parent.data.metrics["sft/toy_recall/acc_change_ci95"] == pytest.approx(1.959964 * se, rel=1e-3)
    assert "toy_recall/acc " in parent.data.tags["geomsweep.verdict.sft"]
    assert "toy_recall/acc change" in parent.data.tags["mlflow.note.content"]
    # memorization's change is paired over the same items too, and compared the same way
    change, se = (sft.data.metrics[f"behavior/memorization_change{s}"] for s in ("", "_se"))
    assert parent.data.metrics["sft/memorization_change"] == pytest.approx(change, rel=1e-3)
    assert parent.data.metrics["sft/memorization_change_ci95"] == pytest.approx(1.959964 * se, rel=1e-3)
    assert "memorization " in parent.data.tags["geomsweep.verdict.sft"]
    (state,) = [state for _, state in ui_view_states(client, ui_view)]
    columns = state["selectedColumns"]
    assert (
        "metrics.`downstream/toy_recall/acc_change`" in columns
        and "metrics.`sft/toy_recall/acc_change_ci95`" in columns
        and "metrics.`behavior/memorization_change`" in columns
        and "metrics.`sft/memorization_change_ci95`" in columns
    )


def ui_view_states(client, ui_view):
    tags = client.get_experiment("1").tags
    return [ui_view.read_envelope(v) for k, v in tags.items() if k.startswith(ui_view.VIEW_TAG_PREFIX)]
