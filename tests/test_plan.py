"""plan=true: a trace's or a sweep's cost before anything loads or any run is created."""

import pytest

from geomsweep.trace.plan import TracePlan
from tests.conftest import GEOMETRY_ONLY, run_app, runs_of


def test_the_plan_in_closed_form():
    plan = TracePlan("c", "m", 31, 7_680_000, 10**9, 2 * 10**9, True, True, True, 100.0)
    assert plan.flops == 2 * 10**9 * 7_680_000
    assert plan.seconds == pytest.approx(31 * plan.flops / 100e12)
    assert plan.disk(evict=True) == 2 * 2 * 10**9  # the measured revision and the prefetched one
    assert plan.disk(evict=False) == 31 * 2 * 10**9
    local = TracePlan("c", "m", 31, 7_680_000, 10**9, 2 * 10**9, False, False, False, 100.0)
    assert local.disk(True) == local.disk(False) == 0  # nothing downloaded


def test_plan_true_prints_a_paper_trace_of_pythia_1b_without_loading_or_a_run(tmp_path, cache_dir):
    proc = run_app(["model=pythia-1b", "checkpoint=pythia_paper", "plan=true", "tflops=300"], tmp_path, cache_dir)
    header, row, total = proc.stdout.strip().splitlines()[-3:]
    cells = row.split()
    assert cells[:7] == ["model=pythia-1b", "checkpoint=pythia_paper", "pythia-1b", "31", "7680000", "0", "1,011.4M"]
    assert "1.55e+04" in row  # TFLOP per checkpoint: 2 x 1.01e9 parameters x 15,000 x 512 tokens
    assert total.startswith("total: 1 cells (0 skipped as FINISHED), 31 checkpoints, 482 PFLOP, 0.446 device-hours")
    assert not (tmp_path / "mlflow.db").exists()


def test_the_plan_counts_the_harness_calls_of_each_checkpoint(tmp_path, cache_dir):
    """The default toy scores its two tasks, 100 items each, 4 choices an item: 800 calls per checkpoint, each
    costed as a probe sequence at most."""
    proc = run_app(["plan=true", "tflops=1"], tmp_path, cache_dir)
    header, row, _ = proc.stdout.strip().splitlines()[-3:]
    at = header.split().index("calls/ckpt") - 1  # "harness calls/ckpt" is one column of two words
    assert row.split()[at] == "800"
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_a_sweep_plan_names_the_cells_already_finished_and_creates_no_run(tmp_path, cache_dir, tiny_checkpoints, store):
    run_app([*GEOMETRY_ONLY, "probe.norm=post"], tmp_path, cache_dir, store)
    proc = run_app(["-m", *GEOMETRY_ONLY, "probe.norm=post,pre", "plan=true"], tmp_path, cache_dir, store)
    rows = [line for line in proc.stdout.splitlines() if "probe.norm=" in line]
    assert len(rows) == 2 and "FINISHED in" in rows[0] and "FINISHED in" not in rows[1]
    assert "total: 2 cells (1 skipped as FINISHED), 5 checkpoints" in proc.stdout
    assert not runs_of(store, "sweep") and len(runs_of(store, "job")) == 1
