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


def test_trainer_logs_every_step_in_one_call_per_log_every_steps(mlflow_sqlite, monkeypatch):
    """Fine-tuning epochs are one step long: the trainer still sends MLflow one call per ``log_every`` steps (not
    two per step, which cost about as much as the step), with every step's and every epoch's value; with an
    epoch hook (a checkpoint), the epoch's rows are in MLflow before the hook runs."""
    import torch
    from mlflow.tracking import MlflowClient

    from text4point.training import Hook, Trainer, TrainJob, make_optimizer, warmup_cosine

    calls = []
    real = tracking.log_batch
    monkeypatch.setattr(tracking, "log_batch", lambda rows: (calls.append(len(rows)), real(rows)))

    def train(steps_per_epoch, hooks=()):
        torch.manual_seed(0)
        model = torch.nn.Linear(2, 1)
        x = torch.randn(4, 2)
        job = TrainJob(name="t", stage="test", steps=12, steps_per_epoch=steps_per_epoch,
                       schedule=warmup_cosine(0.01, 12), log_every=5)
        forward = lambda batch: {"loss": (model(x) ** 2).mean(), "l2": (model.weight ** 2).sum()}  # noqa: E731
        batches = lambda epoch: range(steps_per_epoch)  # noqa: E731
        with tracking.run("trainer", {"seed": 0}, experiment_prefix="t4p-test") as active:
            Trainer(job, model, make_optimizer(model.parameters(), "adamw", 0.01, 0.0), forward, batches, "cpu",
                    hooks=hooks).fit()
        client = MlflowClient()
        return {k: sorted(m.step for m in client.get_metric_history(active.info.run_id, k))
                for k in ("loss", "l2", "lr", "epoch_loss", "epoch_l2")}

    history = train(1)
    assert history == {k: list(range(1, 13)) for k in ("loss", "l2", "lr", "epoch_loss", "epoch_l2")}
    assert calls == [5 * 3 + 5 * 2, 5 * 3 + 5 * 2, 2 * 3 + 2 * 2]  # steps 1-5, 6-10, 11-12 (end)

    seen = []

    class Peek(Hook):
        def after_epoch(self, trainer, row):
            run_id = tracking._active().info.run_id
            seen.append(sorted(m.step for m in MlflowClient().get_metric_history(run_id, "epoch_loss")))

    calls.clear()
    history = train(4, hooks=[Peek()])
    assert history["loss"] == list(range(1, 13)) and history["epoch_loss"] == [1, 2, 3]
    assert seen == [[1], [1, 2], [1, 2, 3]]
