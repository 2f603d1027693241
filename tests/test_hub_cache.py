"""A disk that never fills: hub revisions evicted from a Hugging Face cache once measured, except the ones the user
had cached, and a room check before each download; on a cache laid out locally as the hub writes it."""

import hashlib
import os
from pathlib import Path

import mlflow
import pytest

from geomsweep.sources.hub_cache import RevisionCache, cached_revisions
from tests.conftest import GEOMETRY_ONLY, run_app

HUB_ID = "local/toy"


def add_revision(cache: Path, name: str, source: Path) -> str:
    """``source`` (a save_pretrained folder) as revision ``name`` of HUB_ID, laid out as huggingface_hub does:
    content-addressed blobs, a snapshot of links to them, a ref naming the commit."""
    repo = cache / f"models--{HUB_ID.replace('/', '--')}"
    commit = hashlib.sha1(name.encode()).hexdigest()
    for file in source.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(file.read_bytes())
        link = repo / "snapshots" / commit / file.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / name).write_text(commit)
    return commit


def test_only_revisions_the_job_fetched_are_evicted_and_shared_files_stay(tmp_path, tiny_checkpoints):
    cache = tmp_path / "hub"
    add_revision(cache, "step0", tiny_checkpoints / "step0")
    add_revision(cache, "step40", tiny_checkpoints / "step40")
    revisions = RevisionCache(HUB_ID, evict=True, checkpoint_bytes=10**6, reserve_gib=0, cache_dir=str(cache))
    add_revision(cache, "step3", tiny_checkpoints / "step3")  # what the job downloads after it started
    add_revision(cache, "step12", tiny_checkpoints / "step12")
    for name in ("step0", "step3", "step12", "step40"):
        revisions.measured(name)
    assert revisions.evicted == ["step3", "step12"]
    left = {ref for r in cached_revisions(HUB_ID, str(cache)) for ref in r.refs}
    assert left == {"step0", "step40"}  # the user's revisions stay
    snapshot = cache / "models--local--toy" / "snapshots" / hashlib.sha1(b"step0").hexdigest()
    assert all(f.resolve().exists() for f in snapshot.iterdir())  # blobs shared with evicted revisions kept


def test_a_download_that_would_not_leave_the_reserve_free_stops_before_it(tmp_path, tiny_checkpoints):
    cache = tmp_path / "hub"
    add_revision(cache, "step0", tiny_checkpoints / "step0")
    revisions = RevisionCache(
        HUB_ID, evict=False, checkpoint_bytes=2 * 1024**3, reserve_gib=10**6, cache_dir=str(cache)
    )
    revisions.check_room("step0")  # cached already: nothing to download
    with pytest.raises(
        RuntimeError, match=r"no room to download local/toy@step40: about 2.0 GiB into .* GiB free"
    ) as err:
        revisions.check_room("step40")
    assert "cache.reserve_gib=1e+06" in str(err.value) and "cache.evict=true" in str(err.value)
    assert "HF_HOME" in str(err.value)


@pytest.mark.slow
def test_a_hub_trace_with_eviction_keeps_the_users_revisions_and_measures_the_same(
    tmp_path, cache_dir, tiny_checkpoints, store, monkeypatch
):
    hub = tmp_path / "hub"
    names = ["step0", "step12", "step40"]
    for name in names:
        add_revision(hub, name, tiny_checkpoints / name)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_model = ["model.source=hub", f"model.hub_id={HUB_ID}", f"model.revisions=[{','.join(names)}]"]
    # huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE when it is imported: a process of its own
    run_app([*GEOMETRY_ONLY, *hub_model, "cache.evict=true"], tmp_path, cache_dir, store, own_process=True)
    # the same cell (eviction changes no result): forced to run again
    run_app(
        [*GEOMETRY_ONLY, *hub_model, "cache.evict=false", "tracking.force=true"],
        tmp_path,
        cache_dir,
        store,
        own_process=True,
    )
    assert {ref for r in cached_revisions(HUB_ID, str(hub)) for ref in r.refs} == set(names)  # none was ours to delete
    client = mlflow.MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("geomsweep").experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    histories = [
        sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, "geometry/rankme")) for r in runs
    ]
    assert [s for s, _ in histories[0]] == [0, 12, 40] and histories[0] == histories[1]
