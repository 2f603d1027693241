"""A saved view of MLflow's runs page per trace and per sweep, so the link geomsweep prints opens on the comparison.

MLflow's runs page (3.17) restores a whole page state, the table's columns, the grouping and each chart's
configuration, from the experiment tag ``mlflow.sharedViewState.<key>`` when its URL carries
``?viewStateShareKey=<key>``. The tag's value is what the page's own "Views > Save as new view" writes, learned by
pressing it in Chromium: a JSON envelope ``{"name", "createdAt", "updatedAt", "state"}`` whose ``state`` is the page
state as a JSON string (the page compresses it as ``deflate;<base64>``; plain JSON is read too). An MLflow whose page
does not know the parameter ignores it and opens the plain runs table, so a view can never make a job fail.

The key is a digest of the runs the view shows, so running the same sweep again rewrites its view, and another
sweep gets one of its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import zlib

from geomsweep.core.definitions import METRICS, PAPER_METRICS
from geomsweep.keys import metrics as M
from geomsweep.keys.tags import TAG_PHASES, TAG_SWEPT, TAG_VERDICT_PREFIX

VIEW_TAG_PREFIX = "mlflow.sharedViewState."
SHARE_PARAM = "viewStateShareKey"
SEED = "seed"
NAME_LENGTH = 60  # what the page's Views menu shows of a name
TRACE_CHARTS = (M.RANKME, M.ALPHA_REQ, M.PROBE_LOSS, M.PHASE)

POST_TRAINING_LINES = (M.RANKME, M.ALPHA_REQ)
CHANGES = (M.RANKME_CHANGE, M.ALPHA_CHANGE)
PASS_AT = M.PASS_AT
SUITE = (*(M.geometry(name) for name in METRICS if name not in PAPER_METRICS), M.WEIGHTS_ALPHA)  # probe.weights


def view_key(run_ids) -> str:
    return "geomsweep-" + hashlib.sha256(",".join(sorted(run_ids)).encode()).hexdigest()[:16]


def runs_page(experiment_id: str, key: str | None = None) -> str:
    """The runs table of an experiment in MLflow 3's model-training view, opened on a saved view when ``key``."""
    query = f"{SHARE_PARAM}={key}" if key else "workflowType=machine_learning"
    return f"#/experiments/{experiment_id}/runs?{query}"


def is_post_training(run) -> bool:
    return run.data.params.get("cfg.method.name", "none") != "none"


def pass_at_keys(runs) -> list[str]:
    """pass@1 and the largest k any run sampled."""
    ks = sorted({int(m.group(1)) for run in runs for key in run.data.metrics if (m := PASS_AT.fullmatch(key))})
    return [M.pass_at(k) for k in dict.fromkeys([ks[0], ks[-1]])] if ks else []


def swept_param(runs, key: str) -> str | None:
    """The param a swept key sets on its cells: ``cfg.probe.norm``, or a config group's choice ``cfg.method.name``."""
    for param in (f"cfg.{key}", f"cfg.{key}.name"):
        if any(param in run.data.params for run in runs):
            return param
    return None


def column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"


def card(kind: str, name: str, section: str, display: str) -> dict:
    """The fields every chart card of the page carries (its base card config), placed in ``section``."""
    return {
        "uuid": chart_id(section, name),
        "type": kind,
        "runsCountToCompare": 100,
        "metricSectionId": section,
        "deleted": False,
        "isGenerated": False,
        "displayName": display,
    }


def line_chart(metric: str, section: str, log_x: bool) -> dict:
    return card("LINE", metric, section, metric) | {
        "metricKey": metric,
        "lineSmoothness": 0,
        "xAxisScaleType": "log" if log_x else "linear",
        "scaleType": "linear",
        "range": {},
        "xAxisKey": "step",
        "selectedXAxisMetricKey": "",
        "yAxisKey": "metric",
        "yAxisExpressions": [],
        "ignoreOutliers": False,
        "useGlobalXaxisKey": False,
        "useGlobalLineSmoothing": True,
    }


def bar_chart(metric: str, section: str) -> dict:
    return card("BAR", metric, section, metric) | {"metricKey": metric}


def parallel_chart(params: list[str], metrics: list[str], section: str) -> dict:
    display = "swept values against the changes"
    return card("PARALLEL", "parallel", section, display) | {
        "selectedParams": params,
        "selectedMetrics": metrics,
        "showAllRuns": False,
    }


def chart_id(section: str, name: str) -> str:
    return hashlib.sha256(f"{section}/{name}".encode()).hexdigest()[:16]


def section(name: str) -> dict:
    return {
        "uuid": chart_id("section", name),
        "name": name,
        "display": True,
        "isReordered": True,
        "deleted": False,
        "isGenerated": False,
    }


def longest(runs, column: str) -> int:
    """The longest value of a tag column among ``runs`` (0 for other columns: numbers are short)."""
    kind, _, key = column.partition(".")
    return max((len(run.data.tags.get(key.strip("`"), "")) for run in runs), default=0) if kind == "tags" else 0


def header_width(column: str, longest: int = 0) -> int:
    """Pixels for a column of the runs table to show its whole name (``metrics.`sft/rankme_change_ci95```), or its
    ``longest`` value when that is longer (a verdict's sentence)."""
    name = column.split(".", 1)[1].strip("`")
    return min(560, 40 + 7 * max(len(name), longest))


def page_state(
    run_ids, columns: list[str], sections: list[dict], charts: list[dict], group_by: list[str], runs=()
) -> dict:
    """The page state the runs page restores: its search facets and its UI state, as the page itself writes them."""
    grouping = None
    expanded = {}
    if group_by:
        keys = [{"mode": "param", "groupByData": param} for param in group_by]
        grouping = {"aggregateFunction": "average", "groupByKeys": keys}
        # groups open by default; the runs without the grouping params (the sweep parent) open only when asked
        expanded = {",".join(f"param.{param}" for param in group_by): True}
    ids = ", ".join(f"'{run_id}'" for run_id in run_ids)
    return {
        "searchFilter": f"attributes.run_id IN ({ids})",
        "orderByKey": "attributes.start_time",
        "orderByAsc": True,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": columns,
        "columnOrder": ["run_name", *columns],
        "columnWidths": {"run_name": 260, **{col: header_width(col, longest(runs, col)) for col in columns}},
        "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": charts,
        "compareRunSections": sections,
        "viewMaximized": False,
        "runListHidden": False,
        "isAccordionReordered": True,
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "groupBy": grouping,
        "groupsExpanded": expanded,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }


def trace_view(cells, parent=None) -> dict:
    """Traces: RankMe, α-ReQ and memorization (with their SEs for ungrouped runs; a group's average of SEs is no
    uncertainty of anything) and the phases in words in the table, and each against pretraining step on a log axis,
    the phase label (0 warmup, 1 entropy-seeking, 2 compression-seeking) among them, one line per run (the swept
    values, other than ``seed``, group them)."""
    group_by = [p for key in swept_keys(parent) if key != SEED and (p := swept_param(cells, key))]
    behaviour = [M.MEMORIZATION] if has_metric(cells, M.MEMORIZATION) else []
    metrics = [M.RANKME, M.ALPHA_REQ, *behaviour]
    metrics = metrics if group_by else [key for key in metrics for key in (key, f"{key}_se")]
    extra = suite_metrics(cells)
    columns = [column("metrics", key) for key in [*metrics, M.PROBE_LOSS, *extra]]
    columns += [column("tags", TAG_PHASES)] if any(TAG_PHASES in run.data.tags for run in cells) else []
    columns += [column("params", param) for param in group_by]
    lines = section("geomsweep: geometry against pretraining step (log)")
    shown = [key for key in [*TRACE_CHARTS, *extra, *behaviour] if has_metric(cells, key)]
    charts = [line_chart(key, lines["uuid"], log_x=True) for key in shown]
    ids = [run.info.run_id for run in cells] + ([parent.info.run_id] if parent is not None and group_by else [])
    return page_state(ids, columns, [lines], charts, group_by, cells)


def post_training_view(cells, parent=None) -> dict:
    """Post-training: the paired changes of RankMe and α-ReQ (and of the harness's tasks), pass@1 and pass@n and their
    changes in the table; the changes as bars grouped by the swept values (averaged over seeds); RankMe and α-ReQ
    against post-training step on a log axis (the base, at step 0, is what the bars measure from); for an ablation
    (a swept value beside method and seed), parallel coordinates of the swept params against the changes.
    A run's own paired SE is shown for a lone run only: grouped, the page would average SEs over seeds, which is the
    uncertainty of nothing. A sweep's uncertainty is the parent's: each group's change, the half-width of its 95%
    interval and its verdict (results/compare.py's noise rule) are the parent row's columns."""
    swept = [key for key in swept_keys(parent) if key != SEED]
    group_by = [p for key in swept if (p := swept_param(cells, key))] or ["cfg.method.name"]
    passes = pass_at_keys(cells)
    downstream = sorted({k for run in cells for k in run.data.metrics if M.paired_over_items(k)})
    changes = [*CHANGES, *(f"{key}_change" for key in passes), *downstream]
    metrics = [
        *(key for change in [*CHANGES, *downstream] for key in ((change,) if parent else (change, f"{change}_se"))),
        *(key for passed in passes for key in (passed, f"{passed}_change")),
    ]
    columns = [column("metrics", key) for key in metrics] + [column("params", param) for param in group_by]
    if parent is not None:  # the parent's row: each group's verdict first, then its change and 95% half-width
        verdicts = [column("tags", key) for key in sorted(parent.data.tags) if key.startswith(TAG_VERDICT_PREFIX)]
        names = ("rankme_change", "alpha_req_change", *(M.paired_over_items(key) for key in downstream))
        geometric = tuple(f"{name}{end}" for name in names for end in ("", "_ci95"))
        columns = verdicts + columns
        columns += [column("metrics", key) for key in sorted(parent.data.metrics) if key.endswith(geometric)]
    bars, lines = (
        section("geomsweep: changes by group"),
        section("geomsweep: geometry against post-training step (log)"),
    )
    charts = [bar_chart(key, bars["uuid"]) for key in changes if has_metric(cells, key)]
    ablation = [p for key in swept if key != "method" and (p := swept_param(cells, key))]
    if ablation:
        charts.append(parallel_chart(ablation, [key for key in CHANGES if has_metric(cells, key)], bars["uuid"]))
    shown = [key for key in [*POST_TRAINING_LINES, *suite_metrics(cells)] if has_metric(cells, key)]
    charts += [line_chart(key, lines["uuid"], log_x=True) for key in shown]
    ids = [run.info.run_id for run in cells] + ([parent.info.run_id] if parent is not None else [])
    return page_state(ids, columns, [bars, lines], charts, group_by, [*cells, *([parent] if parent else [])])


def suite_metrics(runs) -> list[str]:
    """The suite's measures beyond RankMe and alpha-ReQ that these runs logged (probe.metrics)."""
    return [key for key in SUITE if has_metric(runs, key)]


def swept_keys(parent) -> list[str]:
    if parent is None:
        return []
    return [key for key in parent.data.tags.get(TAG_SWEPT, "").split(",") if key]


def has_metric(runs, key: str) -> bool:
    return any(key in run.data.metrics for run in runs)


def views_for(cells, parent=None) -> list[tuple[str, str, dict]]:
    """(key, name, page state) for the runs: one view for traces and one for post-training runs, never both on one
    step axis; named after the sweep (or the run) they show, keyed by the cells (not the parent, which a re-run
    makes anew)."""
    name = (parent or cells[0]).info.run_name if cells else ""
    name = name if len(name) <= NAME_LENGTH else name[: NAME_LENGTH - 1] + "…"
    traces = [run for run in cells if not is_post_training(run)]
    trained = [run for run in cells if is_post_training(run)]
    views = []
    if trained:
        label = name if not traces else f"{name} · post-training"
        views.append((view_key(r.info.run_id for r in trained), label, post_training_view(trained, parent)))
    if traces:
        label = name if not trained else f"{name} · traces"
        views.append((view_key(r.info.run_id for r in traces), label, trace_view(traces, parent)))
    return views


def envelope(name: str, state: dict, now_ms: int | None = None) -> str:
    """The tag value: the envelope the runs page's "Save as new view" writes, its state compressed as the page
    compresses it (``deflate;`` and the base64 of zlib's stream)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    packed = "deflate;" + base64.b64encode(zlib.compress(json.dumps(state).encode())).decode()
    return json.dumps({"name": name, "createdAt": now_ms, "updatedAt": now_ms, "state": packed})


def read_envelope(value: str) -> tuple[str, dict]:
    """(name, page state) of a saved view's tag value, compressed or not."""
    saved = json.loads(value)
    state = saved["state"]
    if state.startswith("deflate;"):
        state = zlib.decompress(base64.b64decode(state.split(";", 1)[1])).decode()
    return saved["name"], json.loads(state)


def save_views(client, experiment_id: str, cells, parent=None) -> list[tuple[str, str]]:
    """Write the views of these runs as experiment tags; returns (name, key) of each."""
    saved = []
    for key, name, state in views_for(cells, parent):
        client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + key, envelope(name, state))
        saved.append((name, key))
    return saved
