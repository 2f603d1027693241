"""``make ui-check``: the MLflow UI really shows geomsweep's runs and the ``geometry/rankme`` chart.

Makes a store with a short sweep of a tiny toy world (unless ``--store`` names one), serves it with
``mlflow server`` on 127.0.0.1, checks through the REST API that the sweep parent, its jobs and the
``geometry/rankme`` history are there, then (unless ``--rest-only``) opens the experiment and a job's metric
charts in headless Chromium driven by Playwright, checks the runs and the chart are on the page, and saves
screenshots. Needs Debian's ``chromium`` and ``pip install playwright`` (no browser download: the system
Chromium is used through ``executable_path``).

    python -m geomsweep.app.ui_check [--store URI] [--out ui-check] [--rest-only]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from geomsweep.app.messages import runs_table_page
from geomsweep.tracking import server
from geomsweep.tracking.keys import TAG_ROLE

# A toy world small enough to pretrain in seconds (a 600-word language, width 32, 40 steps), with the fit range
# shrunk to its width; the test suite runs on the same one (tests/conftest.py).
SMALL_TOY = {
    "max_steps": 40,
    "n_checkpoints": 4,
    "hidden_size": 32,
    "num_heads": 2,
    "n_train_docs": 1500,
    "n_words": 600,
    "vocab_size": 512,
    "lr_scheduler": "cosine",
}
SMALL_PROBE = ["probe.n_sequences=64", "probe.batch_size=16", "probe.fit_start=2", "probe.fit_end=20"]
SMALL_WORLD = [
    *(f"model.toy.{key}={value}" for key, value in SMALL_TOY.items()),
    "eval.toy_n_docs=60",
    "eval.ablation_k=[2,8]",
    "sampler.n=4",
    *SMALL_PROBE,
    "progress=false",
]
SHORT_SWEEP = ["-m", *SMALL_WORLD, "probe.norm=post,pre"]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def make_store(out: Path) -> str:
    store = f"sqlite:///{(out / 'mlflow.db').resolve()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    subprocess.run([sys.executable, "-m", "geomsweep", *SHORT_SWEEP], cwd=out, env=env, check=True)
    return store


def rest(uri: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{uri}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def check_rest(uri: str, experiment: str) -> tuple[str, dict, list[dict]]:
    """(experiment id, sweep parent, jobs) as the UI's own API serves them; AssertionError if anything is off."""
    exp = rest(uri, f"experiments/get-by-name?experiment_name={experiment}")["experiment"]
    runs = rest(uri, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1000}).get("runs", [])

    def tags(run):
        return {t["key"]: t["value"] for t in run["data"].get("tags", [])}

    sweeps = [r for r in runs if tags(r).get(TAG_ROLE) == "sweep"]
    jobs = [r for r in runs if tags(r).get(TAG_ROLE) == "job"]
    assert sweeps and jobs, f"expected a sweep parent and its jobs, got {len(sweeps)} sweeps and {len(jobs)} jobs"
    for job in jobs:
        history = rest(uri, f"metrics/get-history?run_id={job['info']['run_id']}&metric_key=geometry/rankme")
        assert history.get("metrics"), f"run {job['info']['run_id']} has no geometry/rankme history"
    return exp["experiment_id"], sweeps[0], jobs


def check_browser(uri: str, experiment_id: str, sweep: dict, job: dict, out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415  (optional: the ui extra)

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit(
            "no chromium on PATH: install Debian's chromium package (apt-get install chromium), or run with --rest-only"
        )
    shots = [out / "mlflow-ui-experiment.png", out / "mlflow-ui-rankme.png", out / "mlflow-ui-sweep-geometry.png"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        # the link geomsweep prints lands on the runs table (not MLflow 3's GenAI overview), the sweep parent in it
        page.goto(f"{uri}/{runs_table_page(experiment_id)}")
        page.get_by_text(sweep["info"]["run_name"]).first.wait_for(timeout=60_000)
        assert "/runs" in page.url, f"the runs-table link was redirected to {page.url}"
        page.screenshot(path=str(shots[0]), full_page=True)
        page.goto(f"{uri}/#/experiments/{experiment_id}/runs/{job['info']['run_id']}/model-metrics")
        page.get_by_placeholder("Search metric charts").fill("geometry/rankme")
        page.get_by_text("rankme", exact=True).first.wait_for(timeout=60_000)  # the chart's title
        page.get_by_text("(geometry/rankme)").first.wait_for(timeout=60_000)  # its legend
        page.wait_for_timeout(2000)  # let the chart draw
        page.screenshot(path=str(shots[1]), full_page=True)
        # the sweep parent's overlay plot, drawn as an image in its artifact view
        parent = sweep["info"]["run_id"]
        page.goto(f"{uri}/#/experiments/{experiment_id}/runs/{parent}/artifacts/plots/geometry.png")
        image = page.locator("img[src^='blob:']").first  # the UI draws the fetched PNG from a blob URL
        image.wait_for(timeout=60_000)
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
        page.screenshot(path=str(shots[2]), full_page=True)
        browser.close()
    return shots


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=None, help="a tracking store URI (default: make one with a short sweep)")
    parser.add_argument("--experiment", default="geomsweep")
    parser.add_argument("--out", default="ui-check")
    parser.add_argument("--rest-only", action="store_true", help="check through the REST API only (no browser)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    store = args.store or make_store(out)
    port = free_port()
    proc = server.start("127.0.0.1", port, store, str(out / "mlartifacts"), out / "mlflow-ui.log")
    uri = f"http://127.0.0.1:{port}"
    try:
        experiment_id, sweep, jobs = check_rest(uri, args.experiment)
        print(
            f"ui-check: REST ok: sweep {sweep['info']['run_name']!r} with {len(jobs)} jobs, "
            f"geometry/rankme history in each"
        )
        if not args.rest_only:
            shots = check_browser(uri, experiment_id, sweep, jobs[0], out)
            print(
                f"ui-check: browser ok: the runs table, a job's geometry/rankme chart and the sweep's overlay plot "
                f"shown; screenshots: "
                f"{', '.join(map(str, shots))}"
            )
    finally:
        server.stop(proc)


if __name__ == "__main__":
    main()
