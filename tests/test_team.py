"""Beyond one machine: a shared MLflow server on PostgreSQL (scripts/team_tracking.sh) that tracked pre-training
and fine-tuning runs log to, with their artifacts in the shared artifact location; and a second clone that gets
every artifact of the tiny DAG through a DVC remote and finds nothing to recompute."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from test_workflow import DVC, SNAKEMAKE, _dry_run_jobs, _run

from conftest import ROOT, reference_copy

SCRIPT = ROOT / "scripts" / "team_tracking.sh"
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@pytest.fixture()
def team_server():
    """PostgreSQL + `mlflow server` started by scripts/team_tracking.sh, stopped by process id afterwards.

    As root, PostgreSQL runs as the `postgres` user, which cannot enter pytest's private temporary directories:
    the server's directory is a world-searchable one under /tmp, removed at the end."""
    base = Path(tempfile.mkdtemp(prefix="text4point-team-"))
    base.chmod(0o755)
    srv, artifacts = base / "server", base / "shared-artifacts"
    env = dict(os.environ, PYTHON=sys.executable, MLFLOW_WORKERS="1", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    try:
        r = subprocess.run(["bash", str(SCRIPT), "start", str(srv), str(artifacts)], env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, f"team_tracking.sh start failed:\n{r.stdout}\n{r.stderr}"
        info = _read_env(srv / "team.env")
        assert r.stdout.strip() == f"export MLFLOW_TRACKING_URI={info['MLFLOW_TRACKING_URI']}"
        yield {"dir": srv, "artifacts": artifacts, **info}
    finally:
        info = _read_env(srv / "team.env") if (srv / "team.env").exists() else {}
        subprocess.run(["bash", str(SCRIPT), "stop", str(srv)], env=env, capture_output=True, text=True, timeout=120)
        try:
            for key in ("MLFLOW_PID", "PG_PID"):
                if info.get(key):
                    assert not _alive(int(info[key])), f"{key} {info[key]} still running after stop"
        finally:
            shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_tracked_runs_go_to_the_shared_postgresql_server(team_server, pt_inputs, tmp_path, monkeypatch):
    import mlflow
    import psycopg2

    from text4point import tracking
    from text4point.finetune import FinetuneJob
    from text4point.finetune import run_stage as finetune
    from text4point.pretrain import PretrainJob
    from text4point.pretrain import run_stage as pretrain

    uri = team_server["MLFLOW_TRACKING_URI"]
    assert uri.startswith("http://127.0.0.1:")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking.check_reachable() == uri

    cfg = copy.deepcopy(pt_inputs["cfg"])
    cfg["pretrain"]["epochs"] = 1
    cfg["finetune"]["steps"] = 2
    ckpt = tmp_path / "text4point" / "checkpoint.pt"
    pm = pretrain(PretrainJob(cfg, pt_inputs["world"], pt_inputs["corr"], pt_inputs["feat"], "text4point", ckpt,
                              progress=False, zeroshot_eval=False, track=True), "cpu")
    fm = finetune(FinetuneJob(cfg, pt_inputs["world"], "semseg", "text4point", 0, 1.0, ckpt, progress=False,
                              track=True), "cpu")

    client = mlflow.MlflowClient(uri)
    prefix = cfg["tracking"]["experiment_prefix"]
    pre_exp, ft_exp = (client.get_experiment_by_name(f"{prefix}/{stage}") for stage in ("pretrain", "finetune"))
    (pre_run,) = client.search_runs([pre_exp.experiment_id])
    (ft_run,) = client.search_runs([ft_exp.experiment_id])

    assert pre_run.info.status == "FINISHED" and pre_run.data.tags["stage"] == "pretrain"
    assert pre_run.data.tags["variant"] == "text4point" and pre_run.data.tags["params_hash"] == pm["params_hash"]
    assert pre_run.data.params["pretrain.epochs"] == "1" and pre_run.data.params["variant"] == "text4point"
    assert pre_run.data.metrics["final_loss"] == pytest.approx(pm["final_loss"])
    assert pre_run.data.metrics["steps"] == pm["steps"]

    assert ft_run.info.run_id == fm["mlflow_run_id"] and ft_run.info.status == "FINISHED"
    tags = ft_run.data.tags
    assert (tags["stage"], tags["task"], tags["init"], tags["seed"], tags["label_fraction"]) == \
        ("finetune", "semseg", "text4point", "0", "1.0")
    assert tags["params_hash"] == fm["params_hash"]
    params = ft_run.data.params
    assert (params["task"], params["init"], params["finetune.steps"], params["label_fraction"]) == \
        ("semseg", "text4point", "2", "1.0")
    for key in ("miou", "primary", "final_loss", "steps"):
        assert ft_run.data.metrics[key] == pytest.approx(fm[key]), key
    assert len(client.get_metric_history(ft_run.info.run_id, "loss")) == fm["steps"]

    # The artifacts went through the server (mlflow-artifacts:/) into the shared location, not a client directory.
    shared = Path(team_server["artifacts"])
    assert pre_run.info.artifact_uri.startswith("mlflow-artifacts:/")
    meta = shared / pre_exp.experiment_id / pre_run.info.run_id / "artifacts" / "checkpoint_meta.json"
    assert json.loads(meta.read_text())["params_hash"] == pm["params_hash"]
    ft_dir = shared / ft_exp.experiment_id / ft_run.info.run_id / "artifacts"
    assert sorted(p.name for p in ft_dir.iterdir()) == ["confusion_matrix.json", "metrics.json"]
    logged = json.loads((ft_dir / "metrics.json").read_text())
    assert logged["miou"] == pytest.approx(fm["miou"]) and logged["mlflow_run_id"] == ft_run.info.run_id
    confusion = json.loads((ft_dir / "confusion_matrix.json").read_text())
    assert confusion["confusion"] == fm["confusion"] and len(confusion["classes"]) == len(fm["confusion"])

    # The backend store really is PostgreSQL, and holds both runs with their tags.
    with psycopg2.connect(host="127.0.0.1", port=int(team_server["PG_PORT"]), dbname="mlflow", user="mlflow",
                          passfile=str(team_server["dir"] / "pgpass")) as conn, conn.cursor() as cur:
        cur.execute("SELECT version()")
        assert cur.fetchone()[0].startswith("PostgreSQL ")
        cur.execute("SELECT run_uuid, status FROM runs WHERE run_uuid IN (%s, %s)",
                    (pre_run.info.run_id, ft_run.info.run_id))
        assert sorted(cur.fetchall()) == sorted([(pre_run.info.run_id, "FINISHED"), (ft_run.info.run_id, "FINISHED")])
        cur.execute("SELECT key, value FROM tags WHERE run_uuid = %s AND key IN ('task', 'init', 'seed', "
                    "'label_fraction')", (ft_run.info.run_id,))
        assert dict(cur.fetchall()) == {"task": "semseg", "init": "text4point", "seed": "0", "label_fraction": "1.0"}
    conn.close()


# ---------------------------------------------------------------- shared artifacts (DVC remote)


def _digest(path: Path) -> str:
    """Content of a file or a directory tree (relative names and bytes)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(path)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture()
def tiny_run(tmp_path, tiny_reference) -> tuple[Path, dict]:
    """A copy of the session's tiny reference run (the project, its outputs and Snakemake's records)."""
    (tmp_path / "ref").mkdir()
    proj, env = reference_copy(tiny_reference, tmp_path / "ref")
    return proj, dict(env, **GIT_ENV)


@pytest.mark.slow
def test_a_second_clone_pulls_every_artifact_and_recomputes_nothing(tiny_run, tmp_path):
    a, env = tiny_run
    remote = tmp_path / "dvc-remote"

    # --- the first clone records what Snakemake made, commits what git holds, pushes the rest
    _run(DVC + ["remote", "modify", "--local", "localstore", "url", str(remote)], a, env)
    _run(DVC + ["commit", "--force"], a, env)
    assert "Data and pipelines are up to date" in _run(DVC + ["status"], a, env).stdout
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "tiny run"]):
        _run(cmd, a, env)
    _run(DVC + ["push"], a, env)
    assert "in sync" in _run(DVC + ["status", "--cloud"], a, env).stdout

    lock = yaml.safe_load((a / "dvc.lock").read_text())
    outs = sorted({o["path"] for stage in lock["stages"].values() for o in stage.get("outs", [])})
    assert {"data/world", "data/correspondences", "data/clip_features/t4p-tiny", "models/clip/bootstrap.pt",
            "models/pretrain/text4point/checkpoint.pt", "results/figures/data", "results/figures/finetune",
            "results/finetune/det/text4point/seed0-frac1.0/predictions.npz", ".snakemake/metadata",
            "results/tables", "results/metrics/data.json"} <= set(outs)
    assert len([o for o in outs if o.endswith("predictions.npz")]) == 6

    # --- a second clone: git only (no data, no DVC cache, no Snakemake state), then `dvc pull`
    b = tmp_path / "b"
    _run(["git", "clone", "-q", str(a), str(b)], tmp_path, env)
    assert not any((b / p).exists() for p in ("data", "models", ".dvc/cache", ".snakemake", "results/figures"))
    _run(DVC + ["remote", "modify", "--local", "localstore", "url", str(remote)], b, env)
    _run(DVC + ["pull"], b, env)
    for out in outs:
        assert (b / out).exists(), out
        assert _digest(b / out) == _digest(a / out), out
    for table in sorted((a / "results/tables").glob("*.csv")):
        assert (b / "results/tables" / table.name).read_bytes() == table.read_bytes(), table.name
    assert "Data and pipelines are up to date" in _run(DVC + ["status"], b, env).stdout

    # --- Snakemake in the second clone: nothing to do, whatever order the pull wrote files in (here every
    # --- dataset file and checkpoint is newer than all that was made from it), and a changed parameter still
    # --- reruns exactly its jobs (the provenance came along)
    for p in [*(b / "data").rglob("*"), *(b / "models").rglob("*")]:
        os.utime(p)
    dry = _run(SNAKEMAKE + ["-n", "all"], b, env).stdout
    assert "Nothing to be done" in dry, dry[-3000:]
    params = (b / "params.yaml").read_text()
    (b / "params.yaml").write_text(params.replace("  steps: 1\n  max_points: 3000", "  steps: 2\n  max_points: 3000"))
    # the variation's job (tiny.yaml: no_tqm, semseg/text4point) takes the default steps too
    assert _dry_run_jobs(b, env) == {"finetune": 6, "finetune_variation": 1, "tables": 1, "figures": 1, "all": 1}
