"""method.processes=N: post-training in N torchrun processes (gloo on this CPU) inside the job's one MLflow run,
the geometry measured on each process's share of the probe set and merged."""

import mlflow
import pytest

from tests.conftest import TINY, run_app

# 2 optimizer steps of SFT, measured at every step; one sample set per problem before and after
FAST = ["method=sft", "++method.args.max_steps=2", "++method.geometry_every=1", "++method.args.logging_steps=1"]


@pytest.mark.slow
def test_two_processes_measure_what_one_does_and_log_once(tmp_path, cache_dir, tiny_checkpoints, store):
    run_app([*TINY, *FAST], tmp_path, cache_dir, store)
    run_app([*TINY, *FAST, "method.processes=2"], tmp_path, cache_dir, store)
    client = mlflow.MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("geomsweep").experiment_id], "tags.`geomsweep.role`='job'")
    by_processes = {r.data.params.get("post_training.processes", "1"): r for r in runs}
    assert by_processes.keys() == {"1", "2"}
    one, two = by_processes["1"], by_processes["2"]
    assert two.info.status == "FINISHED"

    def history(run, key):
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))

    # the same base model, the same probe set: the merged halves equal one pass
    for key in ("geometry/rankme", "geometry/alpha_req", "eval/probe_loss"):
        (step_one, value_one), (step_two, value_two) = history(one, key)[0], history(two, key)[0]
        assert step_one == step_two == 0
        assert value_two == pytest.approx(value_one, abs=1e-9), key
    # training ran in two processes and every metric was logged once per step, by rank 0 only
    for key in ("geometry/rankme", "geometry/rankme_se", "eval/probe_loss", "eval/id_acc", "behavior/pass_at_4"):
        steps = [step for step, _ in history(two, key)]
        assert steps == sorted(set(steps)) and steps, key
    assert [s for s, _ in history(two, "geometry/rankme")] == [0, 1, 2]
    assert history(two, "sft/train_loss")  # the trainer's own MLflow reporting joined the job's run from rank 0
    artifacts = [a.path for a in client.list_artifacts(two.info.run_id, "post_training")]
    assert {"post_training/history.csv", "post_training/trainer_args.json"} <= set(artifacts)


def _measure_in_group(rank: int, world: int, port: int, checkpoint_dir: str, out: str) -> None:
    import json

    import torch.distributed as dist

    from geomsweep.config.measurement import ProbeConfig
    from geomsweep.core import processes
    from geomsweep.core.measure import measure_model
    from geomsweep.sources.checkpoints import Checkpoint
    from geomsweep.sources.toy.pretrain import ToyConfig, probe_documents
    from tests.conftest import TINY_TOY

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model, tokenizer = Checkpoint("final", 40, None, checkpoint_dir).load()
        texts = probe_documents(ToyConfig(**TINY_TOY), 40)
        probe = ProbeConfig(n_sequences=40, batch_size=8, fit_start=2, fit_end=20, jackknife=4)
        documents = [f"d{i // 9}" for i in range(40)]  # documents of 9 texts: groups 0..8, 9..17, 18..29, 30..39
        metrics = measure_model(model, tokenizer, texts, probe, progress=False, documents=documents).metrics(-1)
        with open(f"{out}.{rank}", "w") as f:
            json.dump({"share": processes.share(len(texts), probe.batch_size), "metrics": metrics}, f)
    finally:
        dist.destroy_process_group()


def test_processes_measure_disjoint_shares_of_whole_batches_and_agree_with_one(tmp_path, tiny_checkpoints):
    """Three gloo processes over 40 texts in batches of 8 (5 batches): shares of 1, 2 and 2 batches, and every
    process gets the one-process figures, error bars and loss included: each fills the global jackknife groups,
    here moved onto the starts of named documents."""
    import json

    import torch.multiprocessing as mp

    from geomsweep.config.measurement import ProbeConfig
    from geomsweep.core.measure import measure_model
    from geomsweep.sources.checkpoints import Checkpoint
    from geomsweep.sources.toy.pretrain import ToyConfig, probe_documents
    from tests.conftest import TINY_TOY, free_port

    directory = str(tiny_checkpoints / "step40")
    out = str(tmp_path / "measured")
    mp.spawn(_measure_in_group, args=(3, free_port(), directory, out), nprocs=3)
    results = [json.loads((tmp_path / f"measured.{rank}").read_text()) for rank in range(3)]
    assert [r["share"] for r in results] == [[0, 8], [8, 24], [24, 40]]
    model, tokenizer = Checkpoint("final", 40, None, directory).load()
    probe = ProbeConfig(n_sequences=40, batch_size=8, fit_start=2, fit_end=20, jackknife=4)
    texts, documents = probe_documents(ToyConfig(**TINY_TOY), 40), [f"d{i // 9}" for i in range(40)]
    expected = measure_model(model, tokenizer, texts, probe, progress=False, documents=documents).metrics(-1)
    plain = measure_model(model, tokenizer, texts, probe, progress=False).metrics(-1)
    # the same texts: only the groups differ (merged in another order: equal to float64 round-off)
    assert expected["geometry/rankme"] == pytest.approx(plain["geometry/rankme"], rel=1e-12)
    assert expected["geometry/rankme_se"] != pytest.approx(plain["geometry/rankme_se"], rel=1e-3)
    assert {"geometry/rankme_se", "eval/probe_loss"} <= expected.keys()
    for result in results:
        assert result["metrics"].keys() == expected.keys()
        for key, value in expected.items():
            assert result["metrics"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
