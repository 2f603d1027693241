"""The default ``python -m geomsweep`` at full size, as on a clean clone (pretraining included, ~6 minutes on
2 cores): its trace goes through warmup, entropy-seeking and compression-seeking. ``make test-demo`` runs it;
``make test`` leaves it out."""

import mlflow
import pytest

from tests.conftest import run_app

pytestmark = pytest.mark.demo

WARMUP, ENTROPY, COMPRESSION = 0, 1, 2


def test_the_default_trace_shows_the_three_phases_in_order(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_app(["progress=false"], tmp_path, tmp_path / "fresh-cache", store)  # nothing cached: pretrains first
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("geomsweep").experiment_id])

    def history(key):
        return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}

    phase, rankme, alpha = history("geometry/phase"), history("geometry/rankme"), history("geometry/alpha_req")
    steps = sorted(phase)
    labels = [phase[s] for s in steps]
    assert labels == sorted(labels) and set(labels) == {WARMUP, ENTROPY, COMPRESSION}, labels
    assert all(labels.count(p) >= 3 for p in (WARMUP, ENTROPY, COMPRESSION)), labels
    tags = run.data.tags["geomsweep.phases"]
    assert tags.startswith("warmup until") and "entropy-seeking until" in tags and tags.endswith("compression-seeking")

    def in_phase(p, values):
        return [values[s] for s in steps if phase[s] == p]

    # RankMe falls, rises, then falls again by more than the detector's 15%; alpha mirrors the first two.
    start, warm_min = rankme[0], min(in_phase(WARMUP, rankme))
    entropy_max, compression_min = max(in_phase(ENTROPY, rankme)), min(in_phase(COMPRESSION, rankme))
    assert warm_min < 0.85 * start and entropy_max > 1.15 * warm_min and compression_min < 0.85 * entropy_max
    assert max(in_phase(WARMUP, alpha)) > alpha[0] and in_phase(ENTROPY, alpha)[-1] < max(in_phase(WARMUP, alpha))
    # loss falls smoothly all along, while the geometry turns: no rise by more than 2% between checkpoints
    loss = history("eval/probe_loss")
    assert all(loss[b] < loss[a] * 1.02 for a, b in zip(steps, steps[1:])) and loss[steps[-1]] < 0.5 * loss[0]
    # the long-range dependency is learnt in compression-seeking, not before
    long_range = history("eval/long_range_acc")
    assert max(in_phase(ENTROPY, long_range)) < 0.2 and long_range[steps[-1]] > 0.5
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/trajectory.png" in artifacts
