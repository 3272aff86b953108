"""The DAG under Snakemake and DVC on the tiny config: lint, dry runs, a real run of every stage down to the
tables, figures and HTML report, reruns limited to the jobs whose params changed, DVC push/pull round trip, no
reruns after `dvc checkout`/`dvc pull` (mtime only), and runs from clean giving the reference run's tables."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, assert_same_results, project_copy, reference_copy, tiny_results

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--profile", "workflow/profiles/default", "--cores", "2"]
DVC = [sys.executable, "-m", "dvc"]


def _run(cmd, cwd, env=None, check=True):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-3000:]}\n"
                             f"{r.stderr[-3000:]}")
    return r


def _open_in_chromium(html: Path, screenshot: Path) -> tuple[str, Path]:
    """The DOM of ``html`` after its scripts ran, and a screenshot, from Debian's headless Chromium (installed by
    scripts/install_chromium.sh when missing)."""
    _run(["bash", str(ROOT / "scripts" / "install_chromium.sh")], ROOT)
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--virtual-time-budget=15000", "--window-size=1400,1000"]
    dom = _run(base + ["--dump-dom", html.as_uri()], html.parent).stdout
    _run(base + [f"--screenshot={screenshot}", html.as_uri()], html.parent)
    return dom, screenshot


def _dry_run_jobs(proj: Path, env: dict, *targets: str) -> dict[str, int]:
    """Job counts of ``snakemake -n <targets>`` (its "Job stats" table; ``all`` when no target is given)."""
    out = _run(SNAKEMAKE + ["-n", *(targets or ["all"])], proj, env).stdout
    jobs = {}
    if "Job stats:" in out:
        for line in out.split("Job stats:")[1].splitlines()[3:]:
            parts = line.split()
            if len(parts) != 2 or parts[0] == "total":
                break
            jobs[parts[0]] = int(parts[1])
    return jobs


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file() and not p.name.startswith(".snakemake"):
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_lint_is_clean():
    r = _run([sys.executable, "-m", "snakemake", "--lint"], ROOT)
    assert "Congratulations, your workflow is in a good condition!" in r.stdout + r.stderr


def test_dry_run_shows_the_whole_dag():
    r = _run([sys.executable, "-m", "snakemake", "-n", "--forceall", "all"], ROOT)
    out = r.stdout + r.stderr
    for rule in ("data", "show", "clip_bootstrap", "correspondences", "clip_features", "pretrain", "finetune",
                 "tables", "all"):
        assert f"\n{rule} " in out, rule
    # 3 tasks x 4 inits x 3 seeds x 2 label fractions by default; the paper's 5 ablations x 3 seeds x 2 fractions
    assert re.search(r"\nfinetune +72\n", out) and re.search(r"\nfinetune_variation +30\n", out), out[-2000:]


def test_the_paper_scale_overlay_builds_the_whole_dag_on_a_scannet_release(tmp_path):
    """configs/scannet.yaml as shipped, over a spec-written ScanNet v2 release (2 train scans, 1 val scan; only
    data.scannet.path overridden): the whole DAG dry-runs with the real CLIP's tag (no bootstrap job), the
    paper-scale params reach the jobs, the release really imports through the DAG's data rule, and afterwards
    only the import is done."""
    import spec_files as spec
    import yaml

    scenes = {f"scene000{i}_00": spec.scannet_scene(seed=i, n_frames=4, invalid=()) for i in range(3)}
    release = spec.write_scannet_release(tmp_path / "release", scenes, train=["scene0000_00", "scene0001_00"],
                                         val=["scene0002_00"])
    proj = project_copy(tmp_path / "proj", ROOT / "params.yaml")  # the default params, as a user has them
    (proj / "release.yaml").write_text(yaml.safe_dump({"data": {"scannet": {"path": str(release)}}}))
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", DVC_NO_ANALYTICS="1")
    overlay = ["--configfile", "configs/scannet.yaml", "release.yaml"]

    def dry_run() -> tuple[dict[str, int], str]:
        out = _run(SNAKEMAKE + ["-n", "-p", "all"] + overlay, proj, env).stdout
        jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+) +(\d+)$", out.split("Job stats:")[1],
                                                                   re.M) if m.group(1) != "total"}
        return jobs, out

    jobs, out = dry_run()
    assert jobs == {"data": 1, "correspondences": 1, "clip_features": 1, "pretrain": 3, "pretrain_variation": 2,
                    "finetune": 72, "finetune_variation": 30, "show": 1, "tables": 1, "figures": 1,
                    "all": 1}, out[-3000:]
    assert "data/scannet/dataset.json" in out and "data/clip_features/ViT-B-16/" in out
    finetune = next(line for line in out.splitlines() if "text4point finetune --" in line)
    assert '"steps": 20000' in finetune and '"voxel_size": 0.025' in finetune and '"width": 64' in finetune

    _run(SNAKEMAKE + ["data/scannet/dataset.json"] + overlay, proj, env)
    manifest = json.loads((proj / "data/scannet/dataset.json").read_text())
    assert manifest["source"] == "scannet" and manifest["label_set"]["name"] == "scannet20"
    assert (proj / "data/scannet/splits/train.txt").read_text().split() == ["scene0000_00", "scene0001_00"]
    assert (proj / "data/scannet/splits/val.txt").read_text().split() == ["scene0002_00"]
    jobs, out = dry_run()
    assert "data" not in jobs and jobs["finetune"] == 72 and jobs["pretrain"] == 3, out[-3000:]


def test_a_typo_in_the_config_stops_snakemake_with_one_line():
    r = _run([sys.executable, "-m", "snakemake", "-n", "all", "--config", "seed=-2"], ROOT, check=False)
    assert r.returncode != 0
    assert "error: --config: seed: expected a value >= 0, got -2" in r.stderr


@pytest.mark.slow
def test_tiny_pipeline_under_snakemake_and_dvc(tmp_path, request):
    """A stage's target builds only what it needs (dry runs on an empty project); the session's reference run (the
    tiny DAG, ``snakemake all`` from an empty project) left every stage's outputs, tables and figures and nothing
    due; the HTML report; then DVC on top of a copy of that run. That a run from clean reproduces the reference's
    tables and predictions is asserted by every other run compared with it (through Slurm, killed and resumed
    stage by stage, a job redone)."""
    empty = project_copy(tmp_path / "empty")
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'empty.db'}", DVC_NO_ANALYTICS="1")
    upstream = {"data": 1, "clip_bootstrap": 1, "correspondences": 1, "clip_features": 1}
    assert _dry_run_jobs(empty, env, "show") == {"data": 1, "show": 1}
    assert _dry_run_jobs(empty, env, "correspondences", "clip_features") == upstream
    assert _dry_run_jobs(empty, env, "models/pretrain/text4point/checkpoint.pt") == {**upstream, "pretrain": 1}

    proj, env = reference_copy(request.getfixturevalue("tiny_reference"), tmp_path)
    # --- the data stage: the world, its metrics, benchmark and log, the show figures
    world = proj / "data" / "world"
    assert (world / "dataset.json").exists()
    assert (proj / "results/metrics/data.json").exists() and (proj / "results/metrics/data_scenes.csv").exists()
    assert (proj / "results/benchmarks/stages/data.tsv").exists() and (proj / "logs/data.log").exists()
    pngs = sorted(p.name for p in (proj / "results/figures/data").glob("*.png"))
    assert pngs == ["val_0000_frame.png", "val_0000_scene.png"]

    # --- correspondences and CLIP features (with the offline bootstrap) on the tiny world
    for manifest in ("data/correspondences/manifest.json", "data/clip_features/t4p-tiny/manifest.json"):
        assert (proj / manifest).exists()
    assert (proj / "models/clip/bootstrap.pt").exists()

    # --- pre-training (text4point, with the TQM) on the tiny world: checkpoint, metrics with zero-shot mIoU
    m = json.loads((proj / "results/metrics/pretrain/text4point.json").read_text())
    assert m["variant"] == "text4point" and m["epochs"] == 2 and m["steps"] >= 2
    assert 0.0 <= m["zeroshot_miou"] <= 1.0 and 0.0 <= m["zeroshot_miou_random"] <= 1.0
    assert (proj / "models/pretrain/text4point/epochs/epoch_0001.pt").exists()

    # --- the rest of the DAG: every pre-training variant, the fine-tuning jobs, the tables
    for name in ("semseg", "insseg", "det", "efficiency", "ablation", "zeroshot", "reference", "paper_ablation"):
        assert (proj / f"results/tables/{name}.md").exists() and (proj / f"results/tables/{name}.csv").exists()
    semseg = (proj / "results/tables/semseg.md").read_text()
    assert "| scratch | 1.0 | 1 |" in semseg and "| text4point | 1.0 | 1 |" in semseg
    job = json.loads((proj / "results/finetune/det/text4point/seed0-frac1.0/metrics.json").read_text())
    assert job["task"] == "det" and job["init"] == "text4point" and 0.0 <= job["map25"] <= 1.0
    assert job["mlflow_run_id"] in (proj / "results/tables/det.md").read_text()
    figures = json.loads((proj / "results/figures/finetune/figures.json").read_text())["figures"]
    assert {"training_curves.png", "semseg_per_class_iou.png", "semseg_val_0000.png", "insseg_val_0000.png",
            "det_val_0000.png"} <= set(figures)
    assert all((proj / "results/figures/finetune" / f).stat().st_size > 10_000 for f in figures)
    assert "Nothing to be done" in _run(SNAKEMAKE + ["-n", "all"], proj, env).stdout
    assert "Nothing to be done" in _run(SNAKEMAKE + ["-n", "show"], proj, env).stdout

    # --- the HTML report holds the tables and figures, and renders in headless Chromium
    _run(["bash", "scripts/report.sh", "report.html", "--cores", "2"], proj, env)
    assert not list(proj.glob(".report.html.*"))
    dom, shot = _open_in_chromium(proj / "report.html", tmp_path / "report.png")
    for text in ("Tables", "Figures", "semseg.csv", "ablation.csv", "training_curves.png", "Text4Point, rebuilt"):
        assert text in dom, text
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one

    # --- DVC: its stages call Snakemake, which finds nothing to recompute
    bench = (proj / "results/benchmarks/stages/data.tsv").read_text()
    digest = _tree_digest(world)
    remote = tmp_path / "remote"
    _run(DVC + ["remote", "modify", "--local", "localstore", "url", str(remote)], proj, env)
    _run(DVC + ["repro", "show"], proj, env)
    assert (proj / "results/benchmarks/stages/data.tsv").read_text() == bench  # the data job did not rerun
    assert _tree_digest(world) == digest
    assert "up to date" in _run(DVC + ["repro", "show"], proj, env).stdout

    # --- push, lose the data and the cache, pull it back: identical, and Snakemake reruns nothing
    _run(DVC + ["push", "data", "show"], proj, env)
    shutil.rmtree(world)
    shutil.rmtree(proj / ".dvc" / "cache")
    _run(DVC + ["pull", "data", "show"], proj, env)
    assert _tree_digest(world) == digest
    assert "Nothing to be done" in _run(SNAKEMAKE + ["-n", "show"], proj, env).stdout
    _run(DVC + ["checkout", "--force", "data"], proj, env)
    for p in world.rglob("*"):  # mtime-only changes must not trigger reruns
        os.utime(p)
    assert "Nothing to be done" in _run(SNAKEMAKE + ["-n", "show"], proj, env).stdout

    # --- a fine-tuning parameter reruns the fine-tuning jobs (and what reads them), nothing upstream;
    # --- another seed adds its jobs and reruns no finished one
    original = (proj / "params.yaml").read_text()
    (proj / "params.yaml").write_text(original.replace("  steps: 1\n  max_points: 3000",
                                                       "  steps: 2\n  max_points: 3000"))
    jobs = _dry_run_jobs(proj, env)
    assert jobs == {"finetune": 6, "finetune_variation": 1, "tables": 1, "figures": 1, "all": 1}, jobs
    (proj / "params.yaml").write_text(original.replace("  seeds: [0]", "  seeds: [0, 1]"))
    jobs = _dry_run_jobs(proj, env)
    assert jobs == {"finetune": 6, "finetune_variation": 1, "tables": 1, "figures": 1, "all": 1}, jobs
    (proj / "params.yaml").write_text(original)

    # --- changing a data parameter reruns exactly the jobs that read it
    params = (proj / "params.yaml").read_text().replace("frames_per_scene: 6", "frames_per_scene: 7")
    (proj / "params.yaml").write_text(params)
    dry = _run(SNAKEMAKE + ["-n", "show"], proj, env).stdout
    assert "data        1" in dry.replace("\t", " ") or "\ndata " in dry
    assert "Params have changed since last execution" in dry


# Which jobs a change to one module reruns on the tiny DAG (3 variants; tasks semseg/insseg/det x inits
# scratch/text4point x seed 0 x fraction 1.0): exactly the jobs whose command imports it, and their descendants.
TOUCHED = {
    "src/text4point/tasks/det.py": {"finetune": 2, "tables": 1, "figures": 1, "all": 1},
    "src/text4point/figures.py": {"figures": 1, "all": 1},
    "src/text4point/tables.py": {"tables": 1, "all": 1},
    "src/text4point/show.py": {"show": 1, "all": 1},
    "src/text4point/tasks/semseg.py": {"finetune": 2, "finetune_variation": 1, "tables": 1, "figures": 1,
                                       "all": 1},
    "src/text4point/pretrain/model.py": {"pretrain": 3, "finetune": 3, "finetune_variation": 1, "tables": 1,
                                         "figures": 1, "all": 1},
    "src/text4point/correspondences.py": {"correspondences": 1, "pretrain": 3, "finetune": 3,
                                          "finetune_variation": 1, "tables": 1, "figures": 1, "all": 1},
    "src/text4point/clip/crops.py": {"clip_bootstrap": 1, "clip_features": 1, "pretrain": 3, "finetune": 3,
                                     "finetune_variation": 1, "tables": 1, "figures": 1, "all": 1},
    "src/text4point/world/render.py": {"data": 1, "show": 1, "clip_bootstrap": 1, "correspondences": 1,
                                       "clip_features": 1, "pretrain": 3, "finetune": 6, "finetune_variation": 1,
                                       "tables": 1, "figures": 1, "all": 1},
}


@pytest.mark.slow
def test_a_changed_module_reruns_exactly_the_jobs_that_import_it(tmp_path, tiny_reference):
    """Snakemake (each rule's inputs include its command's source files) and DVC (the generated dvc.yaml lists
    them as deps) both see a change to a module; after the change is undone nothing is due again."""
    proj, env = reference_copy(tiny_reference, tmp_path)
    assert "Nothing to be done" in _run(SNAKEMAKE + ["-n", "all"], proj, env).stdout
    _run(DVC + ["commit", "-f", "-q"], proj, env)
    for module, want in TOUCHED.items():
        path = proj / module
        original = path.read_text()
        path.write_text(original + "\n# a change\n")
        assert _dry_run_jobs(proj, env) == want, module
        if module == "src/text4point/tasks/det.py":
            status = _run(DVC + ["status"], proj, env).stdout
            changed = sorted(line.split(":")[0] for line in status.splitlines() if line and not line[0].isspace())
            assert changed == ["finetune@det-scratch-0-1.0", "finetune@det-text4point-0-1.0", "tables"], status
        path.write_text(original)
    assert "Nothing to be done" in _run(SNAKEMAKE + ["-n", "all"], proj, env).stdout


def test_a_params_file_that_is_not_yaml_or_not_a_mapping_or_a_bad_overlay_key_is_one_line(tmp_path):
    proj = project_copy(tmp_path / "proj")
    cases = [("seed: 0\ndata: [1, 2\n", None, "error: params.yaml: not valid YAML at line 3"),
             ("- a\n- b\n", None, "error: params.yaml: expected a mapping of parameter sections, got list")]
    original = (proj / "params.yaml").read_text()
    overlay = proj / "configs" / "mine.yaml"
    overlay.parent.mkdir(exist_ok=True)
    overlay.write_text("finetune: {steps: 0}\n")
    cases.append((original, ["--configfile", "configs/mine.yaml"],
                  "error: configs/mine.yaml: finetune.steps: expected a value >= 1 and <= 1000000, got 0"))
    for text, extra, want in cases:
        (proj / "params.yaml").write_text(text)
        r = _run([sys.executable, "-m", "snakemake", "-n", "all"] + (extra or []), proj, check=False)
        lines = [line for line in r.stderr.splitlines() if line.startswith("error")]
        assert r.returncode != 0 and lines == [want], r.stderr[-2000:]
        assert "WorkflowError" not in r.stderr and "Traceback" not in r.stderr


# Artifacts the tables rest on, moved away one at a time from a finished workspace: each is due again.
DAMAGE = [("results/metrics/pretrain/pointcontrast.json", "pretrain"),
          ("results/finetune/semseg/scratch/seed0-frac1.0/predictions.npz", "finetune"),
          ("models/pretrain/image_contrast/checkpoint.pt", "pretrain"),
          ("data/correspondences/manifest.json", "correspondences"),
          ("results/variations/no_tqm/finetune/semseg/text4point/seed0-frac1.0/predictions.npz",
           "finetune_variation")]


@pytest.mark.slow
def test_a_missing_artifact_is_due_again_and_comes_back_identical(tmp_path, tiny_reference):
    """`all` lists every artifact the tables rest on: a workspace with one of them missing is not "done"; put back,
    nothing is due; removed and rerun, the job remakes it identical and the tables stay the reference's."""
    import numpy as np

    proj, env = reference_copy(tiny_reference, tmp_path)
    for rel, rule in DAMAGE:
        path = proj / rel
        moved = path.with_name(path.name + ".away")
        path.rename(moved)
        assert rule in _dry_run_jobs(proj, env), rel
        moved.rename(path)
        assert "Nothing to be done" in _run(SNAKEMAKE + ["-n", "all"], proj, env).stdout, rel
    npz = proj / DAMAGE[1][0]
    with np.load(npz) as z:
        before = {k: z[k] for k in z.files}
    npz.unlink()
    _run(SNAKEMAKE + ["all"], proj, env)
    with np.load(npz) as z:
        assert sorted(z.files) == sorted(before) and all(np.array_equal(z[k], before[k]) for k in z.files)
    assert_same_results(tiny_results(proj), tiny_reference["results"])


def test_the_report_is_written_under_its_final_name_only_when_complete(tmp_path):
    """scripts/report.sh: a report run killed while writing leaves no file under the final name."""
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "snakemake").write_text('#!/usr/bin/env bash\n# a stand-in: writes half a report, then dies like a '
                                    'SIGKILLed process\nfor a; do last=$a; done\nprintf "<html>half" > "$last"\n'
                                    '[ -n "$DIE" ] && kill -9 $$\nprintf "</html>" >> "$last"\n')
    (shim / "snakemake").chmod(0o755)
    env = dict(os.environ, PATH=f"{shim}:{os.environ['PATH']}")
    out = tmp_path / "results" / "report.html"
    r = subprocess.run(["bash", str(ROOT / "scripts" / "report.sh"), str(out)], env=dict(env, DIE="1"),
                       capture_output=True, text=True)
    assert r.returncode != 0 and not out.exists()
    r = subprocess.run(["bash", str(ROOT / "scripts" / "report.sh"), str(out)], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0 and out.read_text() == "<html>half</html>"
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temporary left either


def _s3dis_room_points(seed: int, box: tuple, n: int = 400):
    import numpy as np

    rng = np.random.default_rng(seed)
    lo, hi = np.array(box[:3]), np.array(box[3:])
    xyz = np.round(lo + rng.random((n, 3)) * (hi - lo), 3)
    return np.concatenate([xyz, rng.integers(0, 256, (n, 3))], axis=1)


@pytest.mark.slow
def test_pretrain_on_the_world_and_finetune_on_s3dis_to_the_tables(tmp_path):
    """PointContrast's and CSC's transfer protocol: data.pretrain_source world (frames, the CLIP bootstrap, the
    pre-training), data.source s3dis (spec-written rooms: fine-tuning, evaluation, the tables with S3DIS's 13
    classes and text embeddings)."""
    import spec_files as spec

    rel = tmp_path / "s3dis"
    for area, room, seed in ((1, "office_1", 0), (1, "office_2", 1), (5, "office_3", 2)):
        spec.write_s3dis_room(rel, area, room, [
            ("floor", 1, _s3dis_room_points(seed, (0, 0, 0, 4, 4, 0.02))),
            ("wall", 1, _s3dis_room_points(seed + 10, (0, 0, 0, 0.05, 4, 2.5))),
            ("chair", 1, _s3dis_room_points(seed + 20, (1, 1, 0, 1.5, 1.5, 0.9))),
            ("table", 1, _s3dis_room_points(seed + 30, (2, 2, 0, 3, 3, 0.75)))])
    proj = project_copy(tmp_path / "proj")
    (proj / "configs").mkdir(exist_ok=True)
    (proj / "configs" / "transfer.yaml").write_text(
        f"data:\n  source: s3dis\n  pretrain_source: world\n  s3dis: {{path: {rel}, val_area: 5}}\n"
        f"pretrain:\n  variants: [text4point]\n"  # the init it fine-tunes; the other variants add nothing here
        f"finetune:\n  tasks: [semseg]\n  inits: [scratch, text4point]\n")
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", DVC_NO_ANALYTICS="1")
    jobs = _run(SNAKEMAKE + ["-n", "all", "--configfile", "configs/transfer.yaml"], proj, env).stdout
    assert "pretrain_data" in jobs and "rule data:" in jobs
    _run(SNAKEMAKE + ["all", "--configfile", "configs/transfer.yaml"], proj, env)
    assert json.loads((proj / "data/s3dis/dataset.json").read_text())["label_set"]["name"] == "s3dis13"
    assert (proj / "data/world/dataset.json").exists() and (proj / "results/metrics/data_pretrain.json").exists()
    job = json.loads((proj / "results/finetune/semseg/text4point/seed0-frac1.0/metrics.json").read_text())
    assert job["dataset"] == "s3dis13" and len(job["per_class"]) == 13
    pre = json.loads((proj / "results/metrics/pretrain/text4point.json").read_text())
    assert pre["zeroshot_scenes"] >= 1  # evaluated on the world's val split, the pre-training dataset
    assert "Dataset: s3dis13" in (proj / "results/tables/semseg.md").read_text()


def test_pretraining_on_a_dataset_without_frames_is_one_line(tmp_path):
    proj = project_copy(tmp_path / "proj")
    (proj / "params.yaml").write_text((proj / "params.yaml").read_text().replace(
        "  source: world", "  source: s3dis"))
    r = _run([sys.executable, "-m", "snakemake", "-n", "all"], proj, check=False)
    lines = [line for line in r.stderr.splitlines() if line.startswith("error")]
    assert lines == ["error: params.yaml: data.source: s3dis has no RGB-D frames to pre-train on; set "
                     "data.pretrain_source to one of ['world', 'scannet', 'sunrgbd'] (fine-tuning and evaluation "
                     "stay on data.source) or pretrain.variants to []"], r.stderr[-2000:]
