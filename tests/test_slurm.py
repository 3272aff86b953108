"""The Slurm profile on a real one-node Slurm cluster, started on this machine by scripts/slurm_local.sh (Debian's
slurm-wlm and munge, installed when missing; as root): the tiny DAG, submitted job by job through
snakemake-executor-plugin-slurm with workflow/profiles/slurm, gives the tables of a local run; every job has its
Slurm record (squeue, scontrol) and log, with the profile's per-rule resources; and a pre-training job given two
GPUs (counted generic resources: this machine has none) runs under torchrun as two data-parallel processes."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY, assert_same_results, load_yaml, project_copy, tiny_results

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts" / "slurm_local.sh"
PROFILE = ROOT / "workflow" / "profiles" / "slurm" / "config.yaml"
ACCOUNT = "t4ptest"  # free-form: a cluster without accounting accepts any account
FAKE_GPUS = 2


def _run(cmd, cwd, env, timeout=3600):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n"
                             f"{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    """A running cluster (partition `local`, node `localhost` with FAKE_GPUS GPUs), stopped after the module."""
    if os.geteuid() != 0:
        pytest.skip("scripts/slurm_local.sh start needs root (slurmd runs each job as its user; apt-get installs "
                    "Slurm)")
    d = tmp_path_factory.mktemp("slurm")
    request.addfinalizer(lambda: subprocess.run(["bash", str(SCRIPT), "stop", str(d)], capture_output=True,
                                                timeout=120))
    start = subprocess.run(["bash", str(SCRIPT), "start", str(d)], capture_output=True, text=True, timeout=1200,
                           env=dict(os.environ, SLURM_LOCAL_GPUS=str(FAKE_GPUS)))
    assert start.returncode == 0, start.stdout[-3000:] + start.stderr[-3000:]
    env = dict(os.environ, SLURM_CONF=str(d / "slurm.conf"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    node = _run(["scontrol", "show", "node", "-o", "localhost"], d, env).stdout
    return {"dir": d, "env": env, "partition": "local", "cpus": int(re.search(r"\bCPUTot=(\d+)", node)[1]),
            "mem_mb": int(re.search(r"\bRealMemory=(\d+)", node)[1])}


def _cluster_args(profile: dict, cluster: dict, gpus: dict[str, int] | None = None) -> list[str]:
    """The profile's resources, fitted to the one-node cluster: its partition, a free-form account, GPUs only where
    ``gpus`` asks, CPUs and memory capped to what the node has; runtimes and the rest as the profile says. (Given
    on the command line, --default-resources and --set-resources replace the profile's lists, hence all of it.)"""
    gpus = gpus or {}
    mem_cap = cluster["mem_mb"] // 4
    default = {**profile["default-resources"], "slurm_account": ACCOUNT, "slurm_partition": cluster["partition"],
               "gpu": 0}
    default["mem_mb"] = min(int(default["mem_mb"]), mem_cap)
    per_rule = {}
    for rule, res in profile["set-resources"].items():
        res = dict(res, gpu=gpus.get(rule, 0))
        if "mem_mb" in res:
            res["mem_mb"] = min(int(res["mem_mb"]), mem_cap)
        if "cpus_per_gpu" in res:
            res["cpus_per_gpu"] = min(int(res["cpus_per_gpu"]), cluster["cpus"] // max(res["gpu"], 1))
        per_rule[rule] = res
    threads = {rule: min(int(n), cluster["cpus"]) for rule, n in profile["set-threads"].items()}
    return (["--default-resources", *(f"{k}={v}" for k, v in default.items()),
             "--set-resources", *(f"{rule}:{k}={v}" for rule, res in per_rule.items() for k, v in res.items()),
             "--set-threads", *(f"{rule}={n}" for rule, n in threads.items()),
             # no accounting database here, so no sacct: squeue answers (MinJobAge keeps finished jobs an hour)
             "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
             "--slurm-keep-successful-logs"])


def _slurm_jobs(proj: Path) -> dict[str, str]:
    """Slurm job id -> rule, from the executor's per-job logs
    (.snakemake/slurm_logs/rule_<rule>/[<wildcards>/]<id>.log)."""
    logs = proj / ".snakemake" / "slurm_logs"
    return {p.stem: p.relative_to(logs).parts[0].removeprefix("rule_") for p in logs.rglob("*.log")}


def _job_record(job_id: str, env: dict) -> str:
    return _run(["scontrol", "show", "job", "-o", job_id], ROOT, env).stdout


def _field(record: str, name: str) -> str:
    m = re.search(rf"(?:^|\s){name}=(\S*)", record)
    assert m, (name, record)
    return m[1]


def _mb(slurm_mem: str) -> int:
    value, unit = re.fullmatch(r"([\d.]+)([MGT])", slurm_mem).groups()
    return round(float(value) * {"M": 1, "G": 1024, "T": 1024 ** 2}[unit])


def _minutes(time_limit: str) -> int:
    days, _, hms = time_limit.rpartition("-")
    h, m, s = map(int, hms.split(":"))
    return (int(days or 0) * 24 + h) * 60 + m + s // 60


def test_slurm_profile_settings():
    """The profile as given: the Slurm executor, the default profile's rerun settings, marked placeholders for the
    account and partition, and a GPU for each training rule (and none by default)."""
    profile = load_yaml(PROFILE)
    default = load_yaml(ROOT / "workflow" / "profiles" / "default" / "config.yaml")
    assert profile["executor"] == "slurm"
    for key in ("rerun-triggers", "max-checksum-file-size"):
        assert profile.get(key) == default.get(key), key
    assert "CHANGE_ME" in profile["default-resources"]["slurm_account"]
    assert "CHANGE_ME" in profile["default-resources"]["slurm_partition"]
    assert profile["default-resources"]["gpu"] == 0 and default["set-resources"]["pretrain"]["gpu"] == 0
    assert {rule for rule, res in profile["set-resources"].items() if res.get("gpu", 0) >= 1} == {
        "pretrain", "finetune", "clip_bootstrap", "pretrain_variation", "finetune_variation",
        "clip_bootstrap_variation"}


def _dry_run_pretrain(extra: list[str]) -> tuple[str, str]:
    """The resources line and shell command that the Slurm profile gives a pre-training job (dry run, forced)."""
    r = _run([sys.executable, "-m", "snakemake", "--profile", "workflow/profiles/slurm", "-n", "-p", "--forcerun",
              "pretrain", *extra, "--", "models/pretrain/text4point/checkpoint.pt"], ROOT, dict(os.environ))
    block = (r.stdout + r.stderr).split("\nrule pretrain:", 1)[1]
    resources = re.search(r"resources: (.*)", block)[1]
    shell = re.search(r"Shell command: (.*)", block)[1].strip()
    return resources, shell


def test_pretrain_launches_through_torchrun_when_given_gpus():
    """launcher() in common.smk: one process up to one GPU, torchrun with one process per GPU beyond."""
    resources, shell = _dry_run_pretrain([])
    assert "gpu=1" in resources.split(", ") and "runtime=360" in resources.split(", ")
    assert shell.startswith("text4point pretrain ") and "torchrun" not in shell
    resources, shell = _dry_run_pretrain(["--set-resources", "pretrain:gpu=4"])
    assert "gpu=4" in resources.split(", ")
    assert shell.startswith("torchrun --standalone --nproc_per_node 4 --no-python text4point pretrain --params-json ")


def test_tiny_dag_through_slurm_equals_a_local_run(cluster, tmp_path, request):
    profile = load_yaml(PROFILE)
    tiny = load_yaml(TINY)
    proj = project_copy(tmp_path / "slurm")
    env = dict(cluster["env"], MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow-slurm.db'}")
    snakemake_slurm = [sys.executable, "-m", "snakemake", "--profile", "workflow/profiles/slurm"]
    run = _run(snakemake_slurm + _cluster_args(profile, cluster) + ["--", "all"], proj, env)

    # --- the tables (and a job's predictions) are those of the local run (the session's reference, asked for
    # only now: its run on the other worker overlaps the Slurm run)
    assert_same_results(tiny_results(proj), request.getfixturevalue("tiny_reference")["results"])

    # --- every job of the DAG went through Slurm: one log and one completed job record per job
    ft = tiny["finetune"]
    expected = {"data": 1, "show": 1, "clip_bootstrap": 1, "correspondences": 1, "clip_features": 1,
                "pretrain": len(tiny["pretrain"]["variants"]), "tables": 1, "figures": 1,
                "finetune": len(ft["tasks"]) * len(ft["inits"]) * len(ft["seeds"]) * len(ft["label_fractions"]),
                "finetune_variation": len(tiny["variations"])}  # each a semseg/text4point job at seed 0, fraction 1
    jobs = _slurm_jobs(proj)
    assert {rule: list(jobs.values()).count(rule) for rule in set(jobs.values())} == expected
    run_id = re.search(r"SLURM run ID: (\S+)", run.stdout + run.stderr)[1]
    queue = _run(["squeue", "-h", "--states=all", "--name", run_id, "-o", "%i|%T"], proj, env).stdout.split()
    assert sorted(queue) == sorted(f"{job_id}|COMPLETED" for job_id in jobs)
    threads = profile["set-threads"]
    for job_id, rule in jobs.items():
        rec = _job_record(job_id, env)
        res = {**profile["default-resources"], **profile["set-resources"].get(rule, {})}
        assert _field(rec, "JobState") == "COMPLETED" and _field(rec, "ExitCode") == "0:0", rec
        assert _field(rec, "Partition") == "local" and _field(rec, "Account") == ACCOUNT
        assert _field(rec, "NodeList") == "localhost" and _field(rec, "WorkDir") == str(proj)
        assert _field(rec, "Comment").startswith(f"rule_{rule}")
        # the profile's per-rule resources reached sbatch (memory and CPUs capped to the node, GPUs zeroed)
        assert _minutes(_field(rec, "TimeLimit")) == res["runtime"], (rule, rec)
        assert _mb(_field(rec, "MinMemoryNode")) == min(res["mem_mb"], cluster["mem_mb"] // 4), (rule, rec)
        want_cpus = min(threads.get(rule, tiny["data"]["world"]["workers"] if rule == "data" else 1), cluster["cpus"])
        assert int(_field(rec, "NumCPUs")) == want_cpus, (rule, rec)
        assert "TresPerJob=" not in rec  # no GPUs asked
        # the job ran the rule on the node (the executor's job step: Snakemake under srun)
        assert f"(Rule: {rule})" in next((proj / ".snakemake" / "slurm_logs").rglob(f"{job_id}.log")).read_text()
    assert "Nothing to be done" in _run(snakemake_slurm + _cluster_args(profile, cluster) + ["-n", "--", "all"],
                                        proj, env).stdout

    # --- a pre-training job given 2 GPUs: sbatch --gpus=2, then torchrun starts 2 processes (gloo on CPU)
    variant = "pointcontrast"
    shutil.rmtree(proj / f"models/pretrain/{variant}/epochs")
    before = set(jobs)
    _run(snakemake_slurm + _cluster_args(profile, cluster, gpus={"pretrain": FAKE_GPUS})
         + ["--force", "--", f"models/pretrain/{variant}/checkpoint.pt"], proj, env)
    new = {job_id: rule for job_id, rule in _slurm_jobs(proj).items() if job_id not in before}
    assert list(new.values()) == ["pretrain"]
    (job_id,) = new
    rec = _job_record(job_id, env)
    assert _field(rec, "TresPerJob") == f"gres:gpu:{FAKE_GPUS}" and _field(rec, "JobState") == "COMPLETED", rec
    log = next((proj / ".snakemake" / "slurm_logs").rglob(f"{job_id}.log")).read_text()
    assert f"torchrun --standalone --nproc_per_node {FAKE_GPUS} --no-python text4point pretrain" in log
    m = json.loads((proj / f"results/metrics/pretrain/{variant}.json").read_text())
    assert m["world_size"] == FAKE_GPUS and len(m["rank_weights_sha256"]) == FAKE_GPUS and m["ranks_identical"]
    assert (proj / f"models/pretrain/{variant}/epochs/epoch_0001.pt").exists()


def test_a_job_failing_on_the_cluster_fails_the_run(cluster, tmp_path):
    """A job that fails under Slurm (bad input: no such ScanNet directory) fails the Snakemake run, which names the
    rule; the job's Slurm record says FAILED and the stage's one-line error is in its log."""
    proj = project_copy(tmp_path / "proj")
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["data"]["source"] = "scannet"
    params["data"]["scannet"] = {"path": str(tmp_path / "no-such-scannet")}
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = ([sys.executable, "-m", "snakemake", "--profile", "workflow/profiles/slurm"]
           + _cluster_args(load_yaml(PROFILE), cluster) + ["--", "data/scannet/dataset.json"])
    r = subprocess.run(cmd, cwd=proj, env=cluster["env"], capture_output=True, text=True, timeout=900)
    assert r.returncode != 0
    assert "Error in rule data" in r.stdout + r.stderr and "SLURM status is: 'FAILED'" in r.stdout + r.stderr
    jobs = _slurm_jobs(proj)
    assert list(jobs.values()) == ["data"]
    assert _field(_job_record(next(iter(jobs)), cluster["env"]), "JobState") == "FAILED"
    assert "no-such-scannet" in (proj / "logs" / "data.log").read_text()
