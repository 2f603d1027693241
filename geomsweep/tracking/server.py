"""A local ``mlflow server`` on 127.0.0.1 for parallel writers (``tracking=server``), started and stopped by
geomsweep when none answers at the configured address.

It runs in a process session of its own (``setsid``), so stopping it by its process-group id also ends its
gunicorn/uvicorn workers; background job execution is off, which also halves its start time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCAL_HOSTS = ("127.0.0.1", "localhost")


def healthy(uri: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def port_taken(host: str, port: int) -> bool:
    """Whether something already listens at host:port."""
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((host, port)) == 0


def start(
    host: str, port: int, backend_store_uri: str, artifacts_destination: str, log_path: Path, wait_s: float = 120.0
) -> subprocess.Popen:
    """Start the server and wait until ``/health`` answers; a clear error (with its log) if it does not."""
    if host not in LOCAL_HOSTS:
        raise ValueError(
            f"tracking.server.host={host!r}: geomsweep starts servers on 127.0.0.1 only; for a "
            f"server elsewhere, start it there and set tracking.server.start=false"
        )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        artifacts_destination,
    ]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://{host}:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if healthy(uri):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(
        f"mlflow server at {uri} did not become healthy within {wait_s:.0f}s "
        f"(exit code {proc.poll()}); its log: {log_path}"
    )


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the server's whole process group, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)  # the group outlives its leader while workers remain
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass


@contextmanager
def local_server(spec, log_path: Path) -> Iterator[subprocess.Popen | None]:
    """A local server (``tracking.server``: host, port, stores) for the block's duration when ``spec.start`` asks for
    one and none answers there yet; None otherwise. Its store stays readable afterwards with ``mlflow ui``."""
    if not spec or not spec.start or healthy(f"http://{spec.host}:{spec.port}"):
        yield None
        return
    if port_taken(spec.host, spec.port):
        raise RuntimeError(
            f"port {spec.port} on {spec.host} is held by another program, which is not an MLflow server: choose "
            f"a free one with tracking.server.port=<port>"
        )
    proc = start(spec.host, spec.port, spec.backend_store_uri, spec.artifacts_destination, log_path)
    try:
        yield proc
    finally:
        stop(proc)
        print(
            f"geomsweep: stopped the local MLflow server; its store stays readable with: "
            f"mlflow ui {' '.join(proc.args[proc.args.index('--backend-store-uri') :])} --port 5000"
        )
