"""What a job or sweep prints when it ends: a few lines of results and the one link to see the rest."""

from __future__ import annotations

from pathlib import Path

import mlflow

from geomsweep.app import compare
from geomsweep.tracking.keys import ROLE_JOB, ROLE_TRACE, TAG_PHASES, TAG_ROLE


def results_message(run) -> str:
    """The run's headline results and where to see the rest, the link opening the experiment's runs table (MLflow 3
    otherwise lands on its GenAI overview)."""
    uri = mlflow_uri_for_ui()
    client = mlflow.MlflowClient()
    lines = []
    if run.data.tags.get(TAG_ROLE) in (ROLE_JOB, ROLE_TRACE) and run.info.status == "FINISHED":
        row = compare.cell_row(client, run, [])
        lines = compare.describe(row, run.data.tags.get(TAG_PHASES))
    where = [
        f"results in MLflow experiment {run.info.experiment_id}, run {run.info.run_id} ({run.info.run_name}) at {uri}"
    ]
    page = runs_table_page(run.info.experiment_id)
    if uri.startswith(("http://", "https://")):
        where.append(f"browse them at {uri}/{page}")
    else:
        where.append(f"open the UI with: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
        where.append(f"then the runs table: http://127.0.0.1:5000/{page}")
    return "\n".join(f"geomsweep: {line}" for line in [*lines, *where])


def runs_table_page(experiment_id: str) -> str:
    """The UI's runs table of an experiment, in MLflow 3's model-training view (checked by ``make ui-check``)."""
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def mlflow_uri_for_ui() -> str:
    """The tracking URI with a relative sqlite path made absolute, so the printed command works anywhere."""
    uri = mlflow.get_tracking_uri()
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri
