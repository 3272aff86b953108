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
def test_sigkill_anywhere_then_rerun_gives_the_uninterrupted_tables(tmp_path, tiny_reference):
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
    assert_same_results(tiny_results(proj), tiny_reference["results"])
    resumed = [json.loads((proj / f"results/metrics/pretrain/{v}.json").read_text()).get("resumed_from")
               for v in ("text4point", "image_contrast", "pointcontrast")]
    # the variant killed mid-epoch 2 resumed from an epoch checkpoint (epoch 1, or epoch 2 when a later kill
    # caught it again after that epoch), and still ended with the uninterrupted run's tables above
    assert any(r and "/epochs/epoch_000" in r for r in resumed), resumed
    assert [p for p in _outputs(proj) if _in_temporary(p, proj)] == []
