"""Fault injection: the tiny pipeline is killed with SIGKILL (Snakemake and every job at once, from outside)
inside data generation, feature caching, pre-training mid-epoch, fine-tuning and table writing; each time it
is rerun as a user would (``snakemake --unlock``, then ``snakemake all``). After every kill no file under its
final name is incomplete and the killed stage is still due; at the end the tables equal those of an
uninterrupted run, the killed pre-training resumed from an epoch checkpoint, and no temporary is left.

The kill points are :func:`text4point.faults.point` calls: with ``$TEXT4POINT_FAULT`` naming one, the process
reaching it writes a marker and waits; the harness sees the marker and kills the process session.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, assert_same_results, load_yaml, project_copy, tiny_results

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--profile", "workflow/profiles/default", "--cores", "2"]

# (fault spec, the rule that must still be due after the kill)
KILLS = [
    ("data.frame@frame=3", "data"),                       # a scene half rendered, inside the dataset's temp dir
    ("clip_features.write", "clip_features"),             # one scene's features written, the others not
    ("pretrain.step@epoch=2", "pretrain"),                # mid-epoch 2, after epoch 1's checkpoint
    ("finetune.step@step=1", "finetune"),                 # a fine-tuning job after its first optimizer step
    ("tables.write@table=insseg", "tables"),              # insseg.md written, insseg.csv not, later tables not
]


def _run(cmd, cwd, env):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-3000:]}\n"
                             f"{r.stderr[-3000:]}")
    return r


def _session_members(sid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if int(fields[3]) == sid:  # state, ppid, pgrp, session
            pids.append(int(stat.parent.name))
    return pids


def _kill_session(sid: int) -> int:
    """SIGKILL every process of the session (Snakemake, its job shells, their workers); return how many."""
    killed = set()
    for _ in range(5):  # a process may fork while we scan
        members = [p for p in _session_members(sid) if p not in killed]
        if not members:
            break
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    return len(killed)


def _run_until_killed(proj: Path, env: dict, fault: str, timeout: float = 600) -> int:
    markers = proj / ".faults"
    marker = markers / fault.partition("@")[0]
    env = dict(env, TEXT4POINT_FAULT=fault, TEXT4POINT_FAULT_DIR=str(markers))
    with open(proj / f"snakemake-{fault.partition('@')[0]}.log", "w") as log:
        p = subprocess.Popen(SNAKEMAKE + ["all"], cwd=proj, env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        t0 = time.monotonic()
        while not marker.exists():
            if p.poll() is not None:
                raise AssertionError(f"the pipeline ended ({p.returncode}) before reaching {fault}:\n"
                                     + Path(log.name).read_text()[-3000:])
            if time.monotonic() - t0 > timeout:
                _kill_session(p.pid)
                raise AssertionError(f"{fault} not reached in {timeout} s")
            time.sleep(0.2)
        n = _kill_session(p.pid)
        p.wait()
    marker.unlink()
    assert p.returncode == -signal.SIGKILL
    return n


def _is_complete(path: Path) -> None:
    """Raise if ``path`` (an output under its final name) does not load as a whole file of its kind."""
    suffix = path.suffix
    if suffix == ".json":
        json.loads(path.read_text())
    elif suffix == ".csv":
        import pandas as pd

        pd.read_csv(path)
    elif suffix == ".npz":
        with np.load(path) as z:
            for k in z.files:
                z[k]
    elif suffix == ".npy":
        np.load(path, mmap_mode="r")
    elif suffix == ".pt":
        import torch

        torch.load(path, map_location="cpu", weights_only=False)
    elif suffix in (".png", ".jpg"):
        from PIL import Image

        with Image.open(path) as im:
            im.load()
    elif suffix in (".md", ".txt", ".tsv"):
        assert path.stat().st_size > 0, path


def _in_temporary(path: Path, proj: Path) -> bool:
    return any(part.startswith(".") and part.endswith(".tmp") for part in path.relative_to(proj).parts)


def _outputs(proj: Path) -> list[Path]:
    """Every file under data/, models/ and results/, temporaries (``.<name>.*.tmp``, or inside one) included."""
    return [p for d in ("data", "models", "results") for p in (proj / d).rglob("*") if p.is_file()]


def _due_rules(proj: Path, env: dict) -> set[str]:
    out = _run(SNAKEMAKE + ["-n", "all"], proj, env).stdout
    if "Job stats:" not in out:
        return set()
    rules = set()
    for line in out.split("Job stats:")[1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        rules.add(parts[0])
    return rules


@pytest.mark.slow
def test_sigkill_anywhere_then_rerun_gives_the_uninterrupted_tables(tmp_path, request):
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env.pop("TEXT4POINT_FAULT", None)
    assert load_yaml(TINY)["pretrain"]["epochs"] >= 2  # for the mid-epoch-2 kill

    proj = project_copy(tmp_path / "killed")
    env = dict(env, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'killed.db'}")
    for fault, rule in KILLS:
        assert _run_until_killed(proj, env, fault) >= 2, fault  # Snakemake and at least one job
        for path in _outputs(proj):
            if not _in_temporary(path, proj):
                try:
                    _is_complete(path)
                except Exception as e:  # noqa: BLE001 - any failure to load is the finding
                    raise AssertionError(f"after {fault}: {path} is under its final name but incomplete: {e}")
        _run(SNAKEMAKE + ["--unlock"], proj, env)
        due = _due_rules(proj, env)
        assert rule in due and "all" in due, (fault, due)

    _run(SNAKEMAKE + ["all"], proj, env)
    assert _due_rules(proj, env) == set()
    # the reference is asked for only now: its run (on the other worker) and the kills above overlap
    assert_same_results(tiny_results(proj), request.getfixturevalue("tiny_reference")["results"])
    resumed = [json.loads((proj / f"results/metrics/pretrain/{v}.json").read_text()).get("resumed_from")
               for v in ("text4point", "image_contrast", "pointcontrast")]
    # the variant killed mid-epoch 2 resumed from an epoch checkpoint (epoch 1, or epoch 2 when a later kill
    # caught it again after that epoch), and still ended with the uninterrupted run's tables above
    assert any(r and "/epochs/epoch_000" in r for r in resumed), resumed
    assert [p for p in _outputs(proj) if _in_temporary(p, proj)] == []


# ================================================================ faults a user still hit (issue 14)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def mlflow_server(tmp_path):
    """A real `mlflow server` (SQLite backend) in its own process group; stopped at the end if still running."""
    import urllib.request

    port = _free_port()
    env = dict(os.environ, MLFLOW_WORKERS="1", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log = open(tmp_path / "mlflow-server.log", "w")
    p = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                          f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "art"),
                          "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                         env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if p.poll() is not None or time.monotonic() - t0 > 120:
            raise AssertionError("mlflow server did not start:\n" + (tmp_path / "mlflow-server.log").read_text())
        time.sleep(0.5)
    yield {"uri": uri, "proc": p}
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    log.close()


def _params_file(cfg: dict, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "variations"}))
    return path


def _pretrain_cmd(pt_inputs, params: Path, out: Path, variant: str = "text4point") -> list:
    return [sys.executable, "-m", "text4point.cli", "pretrain", "--params", str(params), "--variant", variant,
            "--data", str(pt_inputs["world"]), "--corr", str(pt_inputs["corr"]), "--features", str(pt_inputs["feat"]),
            "--out", str(out / "checkpoint.pt"), "--metrics", str(out / "metrics.json"), "--quiet"]


def _wait_for(path: Path, proc, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the job ended ({proc.returncode}) before {path.name}:\n{proc.stderr.read()[-3000:]}")
        assert time.monotonic() - t0 < timeout, f"{path.name} not reached in {timeout} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_tracking_server_lost_mid_run_stops_the_job_at_once_in_one_line(pt_inputs, tmp_path, mlflow_server):
    """The server dies during pre-training: the job stops within seconds (bounded retries), with one line naming
    the URI and what was not logged; the final checkpoint and the metrics JSON are absent, epoch checkpoints whole."""
    out = tmp_path / "run"
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_server["uri"], TEXT4POINT_FAULT="pretrain.step@step=2",
               TEXT4POINT_FAULT_ACTION="wait", TEXT4POINT_FAULT_DIR=str(tmp_path / "faults"))
    p = subprocess.Popen(_pretrain_cmd(pt_inputs, _params_file(pt_inputs["cfg"], tmp_path / "p.yaml"), out), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "faults" / "pretrain.step", p)
    os.killpg(mlflow_server["proc"].pid, signal.SIGKILL)  # the server dies
    mlflow_server["proc"].wait()
    t0 = time.monotonic()
    (tmp_path / "faults" / "pretrain.step.go").touch()
    _, err = p.communicate(timeout=300)
    elapsed = time.monotonic() - t0
    lines = [line for line in err.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith(f"error: MLflow tracking store {mlflow_server['uri']} failed while logging "), lines
    assert "the job stopped, its outputs were not written" in lines[0]
    assert elapsed < 90, elapsed  # MLflow's default retries kept it ~8 minutes
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()
    for ck in (out / "epochs").glob("*"):
        _is_complete(ck)


def _runs(uri: str, experiment: str) -> list:
    import mlflow

    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


@pytest.mark.slow
def test_a_resumed_pretraining_continues_its_mlflow_run_and_sigterm_stops_it_resumably(pt_inputs, tmp_path):
    """SIGTERM (Slurm's preemption notice) mid-epoch 2: exit 143 with one line, the epoch-1 checkpoint kept; the
    rerun resumes from it into the SAME MLflow run (one curve, steps 1..6, FINISHED) and ends with the weights of an
    uninterrupted run."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = _params_file(pt_inputs["cfg"], tmp_path / "p.yaml")
    base = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    base.pop("TEXT4POINT_FAULT", None)
    full = subprocess.run(_pretrain_cmd(pt_inputs, params, tmp_path / "full"), env=dict(
        base, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'other.db'}"), capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-2000:]
    env = dict(base, TEXT4POINT_FAULT="pretrain.step@step=5", TEXT4POINT_FAULT_ACTION="sigterm",
               TEXT4POINT_FAULT_DIR=str(tmp_path / "faults"))
    cut = subprocess.run(_pretrain_cmd(pt_inputs, params, tmp_path / "cut"), env=env, capture_output=True, text=True)
    lines = [line for line in cut.stderr.splitlines() if line.strip()]
    assert cut.returncode == 143 and len(lines) == 1, cut.stderr[-3000:]
    assert lines[0] == ("error: pretrain text4point: SIGTERM: stopped after step 5 (2 of 3 steps of epoch 2); the "
                        "epoch is abandoned, a rerun resumes from the newest epoch checkpoint")
    assert sorted(p.name for p in (tmp_path / "cut/epochs").iterdir()) == ["epoch_0001.pt"]
    (killed,) = _runs(uri, "text4point-test/pretrain")
    assert killed.info.status == "FAILED"
    again = subprocess.run(_pretrain_cmd(pt_inputs, params, tmp_path / "cut"), env=base, capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    m = json.loads((tmp_path / "cut/metrics.json").read_text())
    assert m["resumed_from"].endswith("epoch_0001.pt")
    assert m["weights_sha256"] == json.loads((tmp_path / "full/metrics.json").read_text())["weights_sha256"]
    (run,) = _runs(uri, "text4point-test/pretrain")  # the same run, continued
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    steps = [m.step for m in mlflow.tracking.MlflowClient(uri).get_metric_history(run.info.run_id, "loss")]
    assert sorted(set(steps)) == list(range(1, 7)), steps


@pytest.mark.slow
def test_a_killed_finetuning_attempt_is_closed_as_killed_when_the_job_reruns(pt_inputs, tmp_path):
    """Fine-tuning has no epoch checkpoints: its rerun is a new MLflow run, and the killed attempt (left RUNNING by
    the SIGKILL) is marked KILLED and linked to it, so `mlflow ui` shows one live curve per job."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = dict(pt_inputs["cfg"], finetune=dict(pt_inputs["cfg"]["finetune"], steps=3))
    params = _params_file(cfg, tmp_path / "p.yaml")
    cmd = [sys.executable, "-m", "text4point.cli", "finetune", "--params", str(params), "--task", "semseg", "--init",
           "scratch", "--seed", "0", "--label-fraction", "1.0", "--data", str(pt_inputs["world"]), "--out",
           str(tmp_path / "ft/metrics.json"), "--quiet"]
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, TEXT4POINT_FAULT="finetune.step@step=2",
               TEXT4POINT_FAULT_DIR=str(tmp_path / "faults"))
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "faults" / "finetune.step", p)
    p.kill()
    p.wait()
    env.pop("TEXT4POINT_FAULT")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    runs = {run.info.status: run for run in _runs(uri, "text4point-test/finetune")}
    assert sorted(runs) == ["FINISHED", "KILLED"]
    assert runs["KILLED"].data.tags["superseded_by"] == runs["FINISHED"].info.run_id
    assert json.loads((tmp_path / "ft/metrics.json").read_text())["mlflow_run_id"] == runs["FINISHED"].info.run_id


EXPERIMENT_RACE = """
import sys, time
from text4point import tracking
t0 = float(sys.argv[1])
while time.time() < t0:
    time.sleep(0.001)
with tracking.run("pretrain", {"k": sys.argv[2]}, tags={"who": sys.argv[2]}, experiment_prefix="race"):
    pass
"""


def test_jobs_creating_one_experiment_at_once_all_land_in_it(tmp_path):
    """Six processes start a run of a new experiment at the same instant (SQLite store): every run is in it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    start = time.time() + 8  # after every interpreter has imported MLflow
    procs = [subprocess.Popen([sys.executable, "-c", EXPERIMENT_RACE, str(start), str(k)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(6)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    runs = _runs(uri, "race/pretrain")
    assert sorted(r.data.tags["who"] for r in runs) == [str(k) for k in range(6)]
    assert _runs(uri, "Default") == []
