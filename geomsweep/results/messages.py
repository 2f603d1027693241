"""What a job or sweep prints when it ends: a few lines of results and the links to see the rest, the saved views
of MLflow's runs page that open on the comparison (``results/ui_view.py``)."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow

from geomsweep.keys.tags import ROLE_JOB, ROLE_TRACE, TAG_PHASES, TAG_ROLE, read_tag
from geomsweep.results import compare, ui_view

logger = logging.getLogger(__name__)


def results_message(run, views: list[tuple[str, str]]) -> str:
    """The run's headline results and where to see the rest: each saved view (``saved_views``: (name, key)) as a
    table and as charts, or the experiment's runs table when there is none (MLflow 3 otherwise lands on its GenAI
    overview)."""
    uri = mlflow_uri_for_ui()
    client = mlflow.MlflowClient()
    lines = []
    if run.data.tags.get(TAG_ROLE) in (ROLE_JOB, ROLE_TRACE) and run.info.status == "FINISHED":
        row = compare.cell_row(client, run, [])
        lines = compare.describe(row, read_tag(run.data.tags, TAG_PHASES))
    where = [
        f"results in MLflow experiment {run.info.experiment_id}, run {run.info.run_id} ({run.info.run_name}) at {uri}"
    ]
    served = uri.startswith(("http://", "https://"))
    host = uri if served else "http://127.0.0.1:5000"
    if not served:
        where.append(f"open the UI with: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    then = "" if served else "then "
    for name, key in views:
        table, charts = view_pages(run.info.experiment_id, key)
        where += [f"{then}the view {name!r}: {host}/{table}", f"its charts: {host}/{charts}"]
    if not views:
        where.append(f"{then}the runs table: {host}/{runs_table_page(run.info.experiment_id)}")
    return "\n".join(f"geomsweep: {line}" for line in [*lines, *where])


def saved_views(client, run, cells=None) -> list[tuple[str, str]]:
    """(name, key) of the runs page's saved views of the finished ``cells`` (default: the run alone; else ``run``
    is their sweep parent), written now; none when they cannot be (the page then opens on the plain runs table:
    a view never fails a job)."""
    cells = [run] if cells is None else cells
    cells = [cell for cell in cells if cell.info.status == "FINISHED"]
    parent = None if [c.info.run_id for c in cells] == [run.info.run_id] else run
    try:
        return ui_view.save_views(client, run.info.experiment_id, cells, parent) if cells else []
    except Exception as err:
        logger.warning("geomsweep: no saved view of the runs page: %s: %s", type(err).__name__, err)
        return []


def view_pages(experiment_id: str, key: str) -> list[str]:
    """A saved view's runs table, then its charts (the page's chart mode), in the model-training view."""
    table = ui_view.runs_page(experiment_id, key) + "&workflowType=machine_learning"
    return [table, table + "&compareRunsMode=CHART"]


def runs_table_page(experiment_id: str) -> str:
    """The UI's runs table of an experiment, in MLflow 3's model-training view (checked by ``make ui-check``)."""
    return ui_view.runs_page(experiment_id)


def mlflow_uri_for_ui() -> str:
    """The tracking URI with a relative sqlite path made absolute, so the printed command works anywhere."""
    uri = mlflow.get_tracking_uri()
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri
