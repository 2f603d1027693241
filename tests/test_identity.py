"""A cell's identity survives code moves: a store written before post-training moved inside geomsweep (and before
the folders became layers) is resumed without re-running any of its finished cells.

``tests/data/pre_move_store.sql.gz`` is the SQL dump of the store that geomsweep at commit c32b252 wrote for the
two command lines below (a sweep over method=none,sft and an RLVR run); ``pre_reorg_store.sql.gz`` the store of the
default trace (``python -m geomsweep``) at commit 657cda9, before the folders were reorganised by role. Nothing here
rewrites them.
"""

import gzip
import sqlite3
from pathlib import Path

import mlflow
import pytest

from tests.conftest import GEOMETRY_ONLY, REPO, run_app

FAST = [  # exactly as the store was made
    "++method.args.max_steps=2",
    "++method.geometry_every=1",
    "++method.args.per_device_train_batch_size=4",
    "++method.args.logging_steps=1",
]
# the jackknife groups those cells were measured with, no lm-evaluation-harness tasks and no ∞-gram memorization; the
# defaults have since become contiguous blocks, the toy's two tasks and its memorization items (new computations, so
# new cells), and at these values the fields are left out of the identity (identity.ADDED_FIELDS)
AS_THEN = ["probe.jackknife_groups=interleaved", "eval.harness.tasks=[]", "eval.memorization.items=null"]
SWEEP = ["-m", "method=none,sft", "checkpoint=final", *GEOMETRY_ONLY, *FAST, *AS_THEN]
RLVR = ["method=rlvr", *GEOMETRY_ONLY, *FAST, "method.args.num_generations=4", *AS_THEN]


def restored(tmp_path, dump: str, written_in: str) -> str:
    """The store restored here with its runs' artifact folders, as a store copied with its artifacts is: the dump
    holds the records only, so each run gets back the config.yaml every job logs first (a FINISHED run without it
    is no result to reuse: tracking/liveness.artifacts_intact)."""
    path = tmp_path / "mlflow.db"
    with sqlite3.connect(path) as db:
        db.executescript(gzip.decompress((REPO / "tests/data" / dump).read_bytes()).decode())
        db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (written_in, str(tmp_path)))
        for (folder,) in db.execute("SELECT artifact_uri FROM runs"):
            Path(folder).mkdir(parents=True)
            (Path(folder) / "config.yaml").write_text("# restored with the store\n")
    return f"sqlite:///{path}"


@pytest.fixture
def pre_move_store(tmp_path) -> str:
    return restored(tmp_path, "pre_move_store.sql.gz", "/tmp/premove")


@pytest.mark.slow
def test_a_sweep_finished_before_the_move_reruns_no_cell(tmp_path, pre_move_store):
    client = mlflow.MlflowClient(pre_move_store)
    experiment = client.get_experiment_by_name("geomsweep").experiment_id
    before = {r.info.run_id: r.info.status for r in client.search_runs([experiment])}
    assert len(before) == 4 and set(before.values()) == {"FINISHED"}  # a parent, two cells, an RLVR run

    empty_cache = tmp_path / "cache"  # a re-run cell would need the toy pretrained: none is here
    sweep = run_app(SWEEP, tmp_path, empty_cache, pre_move_store)
    rlvr = run_app(RLVR, tmp_path, empty_cache, pre_move_store)

    assert sweep.stdout.count("geomsweep: skipped") == 2 and rlvr.stdout.count("geomsweep: skipped") == 1
    runs = client.search_runs([experiment])
    jobs = [r for r in runs if r.data.tags.get("geomsweep.role") == "job"]
    assert sorted(r.info.run_id for r in jobs) == sorted(
        run_id for run_id in before if client.get_run(run_id).data.tags.get("geomsweep.role") == "job"
    )
    assert not (empty_cache / "toy").exists() and not list(empty_cache.glob("toy-*"))
    (parent,) = [r for r in runs if r.data.tags.get("geomsweep.role") == "sweep" and r.info.run_id not in before]
    reused = {v for k, v in parent.data.tags.items() if k.startswith("geomsweep.reused.")}
    swept = {r.info.run_id for r in jobs if r.data.params["cfg.method.name"] in ("none", "sft")}
    assert parent.info.status == "FINISHED" and reused == swept and len(swept) == 2


def test_the_default_trace_finished_before_the_reorganisation_is_not_run_again(tmp_path):
    store = restored(tmp_path, "pre_reorg_store.sql.gz", "/tmp/base")
    empty_cache = tmp_path / "cache"  # a re-run would pretrain the toy here first
    as_then = ["eval.harness.tasks=[]", "eval.memorization.items=null"]  # no harness, no ∞-gram memorization
    proc = run_app(as_then, tmp_path, empty_cache, store)
    assert (
        f"geomsweep: skipped {','.join(as_then)}: this cell (config hash 3dfcf7b11b5a5c8a) already FINISHED"
        in proc.stdout
    )
    assert not empty_cache.exists() or not list(empty_cache.glob("toy-*"))
    assert len(mlflow.MlflowClient(store).search_runs(["1"])) == 1


def test_a_field_added_later_leaves_the_identity_at_the_value_earlier_cells_computed():
    from omegaconf import OmegaConf

    from geomsweep.tracking.identity import config_hash

    before = OmegaConf.create({"probe": {"jackknife": 10}, "seed": 0})
    as_then = OmegaConf.create({"probe": {"jackknife": 10, "jackknife_groups": "interleaved"}, "seed": 0})
    now = OmegaConf.create({"probe": {"jackknife": 10, "jackknife_groups": "block"}, "seed": 0})
    assert config_hash(as_then) == config_hash(before) != config_hash(now)
