"""An MLflow server over a real PostgreSQL backend store on loopback: the shared-cluster tracking setup."""

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import mlflow
import pytest

from tests.conftest import GEOMETRY_ONLY, free_port, run_app, runs_of

pytestmark = pytest.mark.slow


def postgres_program(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, or where Debian's postgresql package puts it."""
    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)


@pytest.fixture
def postgres_uri():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (as the postgres user when we are root, which it refuses)."""
    initdb, postgres = postgres_program("initdb"), postgres_program("postgres")
    if initdb is None or postgres is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is missing: .ci/run installs Debian's postgresql package")
        pytest.skip("no PostgreSQL server on this machine (Debian: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="geomsweep-pg-"))
    as_postgres = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    subprocess.run(
        [*as_postgres, initdb, "-D", str(data), "-A", "trust", "-U", "geomsweep", "--no-sync"],
        check=True,
        capture_output=True,
    )
    with open(root / "postgres.log", "wb") as log:
        server = subprocess.Popen(
            [*as_postgres, postgres, "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(root), "-F"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)]).returncode != 0:
            assert server.poll() is None and time.monotonic() < deadline, (root / "postgres.log").read_text()
            time.sleep(0.3)
        subprocess.run(["createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "geomsweep", "geomsweep"], check=True)
        yield f"postgresql://geomsweep@127.0.0.1:{port}/geomsweep"
    finally:
        os.killpg(server.pid, signal.SIGINT)  # PostgreSQL's fast shutdown
        server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def test_a_parallel_sweep_into_a_server_over_postgresql(tmp_path, cache_dir, tiny_checkpoints, postgres_uri):
    port, artifacts = free_port(), tmp_path / "shared-artifacts"
    run_app(
        [
            "-m",
            *GEOMETRY_ONLY,
            "checkpoint=final",
            "seed=0,1",
            "hydra/launcher=parallel",
            "hydra.launcher.n_jobs=2",
            "tracking=server",
            f"tracking.server.port={port}",
            f"tracking.server.backend_store_uri='{postgres_uri}'",
            f"tracking.server.artifacts_destination={artifacts}",
        ],
        tmp_path,
        cache_dir,
    )
    jobs, (parent,) = runs_of(postgres_uri, "job"), runs_of(postgres_uri, "sweep")  # read from PostgreSQL itself
    assert sorted(r.info.status for r in jobs) == ["FINISHED", "FINISHED"] and parent.info.status == "FINISHED"
    client = mlflow.MlflowClient(postgres_uri)
    for run in jobs:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "geometry/rankme")] == [40]
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server, stored under artifacts
    assert len(list(artifacts.rglob("config.yaml"))) == 2
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to a sqlite file
