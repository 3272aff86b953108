"""MLflow: a real tracking server on loopback, the package's tracking module, and fail-fast checks."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from text4point import tracking
from text4point.errors import InputError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def mlflow_server(tmp_path):
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            log.close()
            pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    try:
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # stop it by its process id (and its workers)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_run_is_logged_to_a_real_server_and_read_back(mlflow_server, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    params = {"seed": 3, "data": {"source": "world", "world": {"frames_per_scene": 6}}}
    with tracking.run("data", params, tags={"source": "world"}, experiment_prefix="t4p-test") as active:
        import mlflow

        mlflow.log_metric("frames", 12.0, step=0)
        mlflow.log_metric("frames", 24.0, step=1)
        mlflow.log_dict({"ok": True}, "stats.json")
        run_id = active.info.run_id
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"seed": "3", "data.source": "world", "data.world.frames_per_scene": "6"}
    assert run.data.tags["stage"] == "data" and run.data.tags["source"] == "world"
    assert "git_commit" in run.data.tags
    assert [m.value for m in client.get_metric_history(run_id, "frames")] == [12.0, 24.0]
    assert client.get_experiment(run.info.experiment_id).name == "t4p-test/data"
    assert [a.path for a in client.list_artifacts(run_id)] == ["stats.json"]


def test_unreachable_server_fails_in_one_line_naming_the_uri():
    uri = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(InputError) as e:
        tracking.check_reachable(uri, timeout=2)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"MLflow tracking server {uri} is unreachable")


def test_default_uri_is_the_project_sqlite_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:5000")
    assert tracking.tracking_uri() == "http://example.invalid:5000"


def test_sqlite_store_in_a_missing_directory_is_refused(tmp_path):
    uri = f"sqlite:///{tmp_path}/missing/mlflow.db"
    with pytest.raises(InputError, match=r"directory .*/missing does not exist or is not writable"):
        tracking.check_reachable(uri)
