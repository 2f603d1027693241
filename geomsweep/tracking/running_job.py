"""The geomsweep job running in this process, as a ``ContextVar`` set only while its run is open (``job_run``).

Pure Python on purpose: MLflow loads the run-context plugin that reads it while MLflow itself is being imported,
so this module must import nothing that imports MLflow.
"""

from __future__ import annotations

from contextvars import ContextVar

CURRENT_JOB: ContextVar[dict[str, str] | None] = ContextVar("geomsweep_job", default=None)


def current_job() -> dict[str, str] | None:
    """The model tags of the geomsweep job running in this context, or None outside one."""
    return CURRENT_JOB.get()
