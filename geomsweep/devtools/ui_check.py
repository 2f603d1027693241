"""``make ui-check``: what a person sees in the MLflow UI after a trace and a post-training sweep, in Chromium.

Makes a store (unless ``--store`` names one) with a short trace of a tiny toy world and a post-training sweep
``-m method=sft,dpo,rlvr seed=0,1``, serves it with ``mlflow server`` on 127.0.0.1, checks through the REST API that
the runs, their histories and a post-training run's before/after eigenspectrum are there, then (unless
``--rest-only``) opens, in headless Chromium with a fresh profile and no click:

- the links geomsweep printed (the saved views of the runs page): the post-training view's table shows the change
  columns with numbers in them, grouped by method, no run's own SE averaged into a group, and the sweep parent's
  95% interval of each group's change with its verdict (led by "2 seeds, indicative"); its charts show the changes as
  bars, one per method; the trace view's table names the phases and its charts draw ``geometry/rankme`` and the
  phase label against a logarithmic step axis;
- the experiment from the Experiments list (it must open on its runs), and the sweep parent's Overview (the
  comparison table).

Screenshots are saved. ``--break-view`` first spoils each saved view (a linear axis, no change columns, no
grouping) and passes only if every view check then fails: the check can fail. Needs Debian's ``chromium`` and
``pip install playwright`` (the system Chromium is used through ``executable_path``; nothing is downloaded).

    python -m geomsweep.devtools ui-check [--store URI] [--out ui-check] [--rest-only] [--break-view]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from geomsweep.keys import metrics as M
from geomsweep.keys.tags import TAG_ROLE
from geomsweep.results import ui_view
from geomsweep.results.messages import view_pages
from geomsweep.tracking import server

# The toy world the test suite runs on too (conf/experiment/small.yaml): pretrained in seconds.
SMALL_WORLD = ["+experiment=small"]
POST_TRAINING_SWEEP = ["-m", *SMALL_WORLD, "method=sft,dpo,rlvr", "seed=0,1"]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 60_000
VIEWPORT, TALL = {"width": 1600, "height": 1000}, {"width": 1600, "height": 2400}
CHANGE_COLUMNS = (M.RANKME_CHANGE, M.ALPHA_CHANGE, M.change(M.pass_at(1)))


def make_store(out: Path) -> str:
    """A trace, then a post-training sweep on its final checkpoint, as a user runs them."""
    store = f"sqlite:///{(out / 'mlflow.db').resolve()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    for args in (SMALL_WORLD, POST_TRAINING_SWEEP):
        subprocess.run([sys.executable, "-m", "geomsweep", *args], cwd=out, env=env, check=True)
    return store


def rest(uri: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{uri}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def tags_of(entity: dict) -> dict:
    return {t["key"]: t["value"] for t in entity.get("tags", entity.get("data", {}).get("tags", []))}


def check_rest(uri: str, experiment: str) -> tuple[dict, dict, list[dict]]:
    """(experiment, sweep parent, jobs) as the UI's own API serves them; AssertionError if anything is off."""
    exp = rest(uri, f"experiments/get-by-name?experiment_name={experiment}")["experiment"]
    runs = rest(uri, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1000}).get("runs", [])
    sweeps = [r for r in runs if tags_of(r).get(TAG_ROLE) == "sweep"]
    jobs = [r for r in runs if tags_of(r).get(TAG_ROLE) == "job"]
    assert sweeps and jobs, f"expected a sweep parent and its jobs, got {len(sweeps)} sweeps and {len(jobs)} jobs"
    for job in jobs:
        history = rest(uri, f"metrics/get-history?run_id={job['info']['run_id']}&metric_key=geometry/rankme")
        assert history.get("metrics"), f"run {job['info']['run_id']} has no geometry/rankme history"
    trained = [j for j in jobs if params_of(j).get("cfg.method.name", "none") != "none"]
    for job in trained[:1]:
        listed = rest(uri, f"artifacts/list?run_id={job['info']['run_id']}&path=plots").get("files", [])
        assert "plots/eigenspectrum.png" in {f["path"] for f in listed}, (
            f"post-training run {job['info']['run_id']} has no before/after plots/eigenspectrum.png"
        )
    return exp, sweeps[0], jobs


def params_of(run: dict) -> dict:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def saved_views(exp: dict) -> dict[str, tuple[str, dict]]:
    """key -> (name, page state) of geomsweep's saved views of the runs page."""
    views = {}
    for key, value in tags_of(exp).items():
        if key.startswith(ui_view.VIEW_TAG_PREFIX + "geomsweep-"):
            views[key.removeprefix(ui_view.VIEW_TAG_PREFIX)] = ui_view.read_envelope(value)
    return views


def spoil(uri: str, exp: dict, views: dict[str, tuple[str, dict]]) -> None:
    """Each view as a check must catch it: linear step axes, no change columns, no grouping."""
    for key, (name, state) in views.items():
        state = {**state, "groupBy": None, "groupsExpanded": {}}
        state["selectedColumns"] = [c for c in state["selectedColumns"] if "_change" not in c]
        state["compareRunCharts"] = [{**chart, "xAxisScaleType": "linear"} for chart in state["compareRunCharts"]]
        body = {"experiment_id": exp["experiment_id"], "key": ui_view.VIEW_TAG_PREFIX + key}
        rest(uri, "experiments/set-experiment-tag", {**body, "value": ui_view.envelope(name, state)})


CARDS = """() => [...document.querySelectorAll('[data-testid=experiment-view-compare-runs-card]')].map(card => {
    const plot = card.querySelector('.js-plotly-plot');
    const layout = plot && plot._fullLayout, data = (plot && plot._fullData) || [];
    return {text: card.innerText, xaxis: layout ? layout.xaxis.type : null, types: data.map(t => t.type)};
})"""
CELLS = """() => [...document.querySelectorAll('[col-id]')].map(e => [e.getAttribute('col-id'), e.innerText])"""
WIDE = {"width": 20000, "height": 1000}  # the table draws only the columns in view: all of them, to read each


def table_cells(page) -> list[list[str]]:
    """(column id, text) of every cell of the runs table, every column drawn (a viewport wide enough for all)."""
    page.set_viewport_size(WIDE)
    page.wait_for_timeout(2000)
    cells = page.evaluate(CELLS)
    page.set_viewport_size(VIEWPORT)
    page.wait_for_timeout(500)
    return cells


def check_post_training_view(page, uri: str, experiment_id: str, key: str, out: Path) -> list[Path]:
    """The table: change columns with numbers, rows grouped by method; the charts: a bar chart of each change
    with a bar per method."""
    table, charts = (f"{uri}/{page_}" for page_ in view_pages(experiment_id, key))
    page.goto(table)
    page.get_by_text(re.compile(r"\d+ matching runs?")).first.wait_for(timeout=WAIT_MS)
    page.wait_for_timeout(3000)
    cells = table_cells(page)
    for metric in CHANGE_COLUMNS:
        values = [text for col, text in cells if col == f"metrics.`{metric}`" and re.match(r"-?\d", text)]
        assert values, f"the post-training view's table shows no numbers in a {metric} column"
    for method in ("sft", "dpo", "rlvr"):
        assert page.get_by_text(f"Group: {method}").count(), f"the table is not grouped by method: no Group: {method}"
    averaged = sorted({col for col, _ in cells if col.startswith("metrics.") and col.endswith("_se`")})
    assert not averaged, f"the grouped table averages each run's own SE over seeds in {averaged}"
    for method in ("sft", "dpo", "rlvr"):
        interval = f"metrics.`{method}/rankme_change_ci95`"
        assert [t for c, t in cells if c == interval and re.match(r"\d", t)], f"no number in the parent's {interval}"
        verdict = f"tags.`geomsweep.verdict.{method}`"
        assert [t for c, t in cells if c == verdict and t.startswith("2 seeds, indicative: RankMe")], (
            f"no two-seed verdict in {verdict}"
        )
    shots = [out / f"view-{key}-table.png", out / f"view-{key}-charts.png"]
    page.screenshot(path=str(shots[0]), full_page=True)
    page.set_viewport_size(TALL)  # the page draws only the chart cards in view: all of them, below the bars too
    page.goto(charts)
    cards = settled_cards(page)
    bars = [c for c in cards if "bar" in c["types"] and M.RANKME_CHANGE in c["text"]]
    assert bars, "the post-training view's charts have no bar chart of geometry/rankme_change"
    missing = [m for m in ("sft", "dpo", "rlvr") if not re.search(rf"\b{m}\b", bars[0]["text"])]
    assert not missing, f"the geometry/rankme_change bars are not grouped by method: no bar for {missing}"
    rankme = [c for c in cards if c["text"].split("\n", 1)[0].strip() == M.RANKME]
    assert rankme and rankme[0]["xaxis"] == "log", "the post-training view has no geometry/rankme chart on a log axis"
    page.screenshot(path=str(shots[1]), full_page=True)
    page.set_viewport_size(VIEWPORT)
    return shots


def settled_cards(page, most_s: float = 30) -> list[dict]:
    """The chart cards once the page has drawn them: the first plot drawn, then polled until two
    polls 2 s apart agree (a loaded machine draws slowly: a fixed wait read half-drawn pages), at most ``most_s``."""
    page.locator(".js-plotly-plot").first.wait_for(timeout=WAIT_MS)
    cards, deadline = None, time.monotonic() + most_s
    while time.monotonic() < deadline:
        page.wait_for_timeout(2000)
        now = page.evaluate(CARDS)
        if now == cards:
            break
        cards = now
    return cards


def check_trace_view(page, uri: str, experiment_id: str, key: str, out: Path) -> list[Path]:
    """The table: the phases in words; the charts: geometry/rankme and the phase label against a logarithmic step
    axis."""
    table, charts = (f"{uri}/{page_}" for page_ in view_pages(experiment_id, key))
    page.goto(table)
    page.get_by_text(re.compile(r"\d+ matching runs?")).first.wait_for(timeout=WAIT_MS)
    page.wait_for_timeout(3000)
    phases = [text for col, text in table_cells(page) if col == "tags.`geomsweep.phases`"]
    assert [t for t in phases if "warmup" in t or "seeking" in t], f"the trace view's table names no phase: {phases}"
    shots = [out / f"view-{key}-table.png", out / f"view-{key}-charts.png"]
    page.screenshot(path=str(shots[0]), full_page=True)
    page.goto(charts)
    cards = settled_cards(page)
    for metric in (M.RANKME, M.PHASE):
        found = [c for c in cards if c["text"].split("\n", 1)[0].strip() == metric]
        assert found, f"the trace view has no {metric} chart"
        assert found[0]["xaxis"] == "log", f"the trace view's {metric} step axis is {found[0]['xaxis']}, not log"
    page.screenshot(path=str(shots[1]), full_page=True)
    return shots


def open_from_list(context, uri: str, exp: dict, model_training: bool = False):
    """Click the experiment in the Experiments list of a page loaded anew, after turning the UI's "Model training"
    switch on when asked; (the page, the URL it lands on)."""
    page = context.new_page()
    page.goto(f"{uri}/#/experiments")
    link = page.get_by_role("link", name=exp["name"], exact=True).first
    link.wait_for(timeout=WAIT_MS)
    page.wait_for_timeout(1000)
    if model_training:
        page.get_by_text("Model training", exact=True).first.click()
        page.wait_for_timeout(1000)
    link.click()
    landing = "id => location.hash.startsWith(`#/experiments/${id}/`)"
    page.wait_for_function(landing, arg=exp["experiment_id"], timeout=WAIT_MS)
    return page, page.url


def check_entry_points(context, uri: str, exp: dict, sweep: dict, out: Path) -> list[Path]:
    """The experiment opened from the Experiments list shows runs once the UI's "Model training" switch is on
    (MLflow 3.17 picks the experiment's page from that per-browser switch, not from ``mlflow.experimentKind``: a
    fresh profile lands on the GenAI overview, which is printed); the sweep parent's Overview, its comparison."""
    page, fresh = open_from_list(context, uri, exp)
    print(f"ui-check: a fresh browser profile opens the experiment from the Experiments list at {fresh}")
    page.close()
    page, landed = open_from_list(context, uri, exp, model_training="/runs" not in fresh)
    try:
        page.get_by_text(re.compile(r"\d+ matching runs?")).first.wait_for(timeout=WAIT_MS)
    except Exception:
        page.screenshot(path=str(out / "experiment-from-list-failed.png"), full_page=True)
        shown = f"the experiment opened from the Experiments list shows no runs table ({landed})"
        raise AssertionError(shown) from None
    shots = [out / "experiment-from-list.png", out / "sweep-overview.png"]
    page.screenshot(path=str(shots[0]), full_page=True)
    page.goto(f"{uri}/#/experiments/{exp['experiment_id']}/runs/{sweep['info']['run_id']}")
    page.locator("table").filter(has_text="rankme").first.wait_for(timeout=WAIT_MS)
    page.screenshot(path=str(shots[1]), full_page=True)
    return shots


def check_views(page, uri: str, exp: dict, views: dict, out: Path) -> tuple[list[Path], list[str]]:
    """Every view's check: (screenshots, failures)."""
    shots, failures = [], []
    for key, (name, state) in views.items():
        post_training = any(chart["type"] == "BAR" for chart in state["compareRunCharts"])
        check = check_post_training_view if post_training else check_trace_view
        try:
            shots += check(page, uri, exp["experiment_id"], key, out)
        except (AssertionError, TimeoutError) as err:
            failures.append(f"{name!r}: {err}")
        except Exception as err:  # playwright's own timeout
            failures.append(f"{name!r}: {type(err).__name__}: {str(err).splitlines()[0]}")
    return shots, failures


def check_browser(uri: str, exp: dict, sweep: dict, out: Path, break_view: bool) -> list[Path]:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415  (optional: the ui extra)

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit(
            "no chromium on PATH: install Debian's chromium package (apt-get install chromium), or run with --rest-only"
        )
    views = saved_views(exp)
    kinds = {any(c["type"] == "BAR" for c in state["compareRunCharts"]) for _, state in views.values()}
    assert kinds == {True, False}, f"expected a trace view and a post-training view, found {sorted(views)}"
    if break_view:
        spoil(uri, exp, views)
        views = saved_views(rest(uri, f"experiments/get?experiment_id={exp['experiment_id']}")["experiment"])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        viewport = VIEWPORT
        shots = [] if break_view else check_entry_points(browser.new_context(viewport=viewport), uri, exp, sweep, out)
        views_shots, failures = check_views(browser.new_context(viewport=viewport).new_page(), uri, exp, views, out)
        shots += views_shots
        browser.close()
    if break_view:
        assert len(failures) == len(views), f"a spoiled view passed its check; failures: {failures}"
        print("ui-check: every spoiled view failed its check, as it must:\n  " + "\n  ".join(failures))
    else:
        assert not failures, "ui-check: " + "; ".join(failures)
    return shots


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def arguments(parser: argparse.ArgumentParser) -> None:
    """This command's options (``python -m geomsweep.devtools ui-check --help``)."""
    parser.add_argument("--store", default=None, help="a tracking store URI (default: make one as described)")
    parser.add_argument("--experiment", default="geomsweep")
    parser.add_argument("--out", default="ui-check")
    parser.add_argument("--rest-only", action="store_true", help="check through the REST API only (no browser)")
    parser.add_argument("--break-view", action="store_true", help="spoil the saved views: each check must fail")


def command(args: argparse.Namespace) -> None:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    store = args.store or make_store(out)
    port = free_port()
    proc = server.start("127.0.0.1", port, store, str(out / "mlartifacts"), out / "mlflow-ui.log")
    uri = f"http://127.0.0.1:{port}"
    try:
        exp, sweep, jobs = check_rest(uri, urllib.parse.quote(args.experiment))
        print(
            f"ui-check: REST ok: sweep {sweep['info']['run_name']!r} with {len(jobs)} jobs, {M.RANKME} history in each"
        )
        if not args.rest_only:
            shots = check_browser(uri, exp, sweep, out, args.break_view)
            print(f"ui-check: browser ok; screenshots: {', '.join(str(s.name) for s in shots)} in {out}")
    finally:
        server.stop(proc)
