import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_params() -> dict:
    from text4point import params

    return params.load(TINY)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory, tiny_params) -> Path:
    """The tiny offline world, generated once per test session."""
    from text4point.world.generate import generate_world

    root = tmp_path_factory.mktemp("world") / "world"
    generate_world(root, tiny_params["data"]["world"], tiny_params["seed"], progress=False)
    return root


@pytest.fixture()
def one_thread():
    """One intra-op thread, as the stages use on CPU: tiny models run fastest so and are immune to a busy
    shared CPU (and results do not depend on a thread count). Modules opt in with ``pytestmark``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def mlflow_sqlite(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def project_copy(dst: Path, params_file: Path = TINY) -> Path:
    """A git repository holding the project's tracked files, with ``params_file`` as params.yaml."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        src = ROOT / f
        if src.is_file() and not f.startswith(("data/", "results/metrics/", "results/benchmarks/stages/",
                                               "results/finetune/", "results/tables/", "results/preview/",
                                               "results/variations/")):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    shutil.copy(params_file, dst / "params.yaml")
    # dvc.yaml is generated from params.yaml (its variations decide the variations stage's outputs)
    subprocess.run([sys.executable, "-m", "text4point.cli", "dvc-yaml", "--params", str(dst / "params.yaml"),
                    "--out", str(dst / "dvc.yaml")], check=True, capture_output=True)
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dst, check=True, env=env, capture_output=True)
    return dst


def tiny_results(proj: Path) -> dict:
    """What runs of the tiny DAG are compared by: every table (MLflow run ids, which name each run, dropped) and
    the semseg/text4point fine-tuning predictions."""
    import numpy as np
    import pandas as pd

    out = {p.name: pd.read_csv(p).drop(columns=["mlflow_runs", "mlflow runs"], errors="ignore")
           for p in sorted((proj / "results/tables").glob("*.csv"))}
    with np.load(proj / "results/finetune/semseg/text4point/seed0-frac1.0/predictions.npz") as npz:
        out["predictions"] = {key: npz[key] for key in npz.files}
    return out


def assert_same_results(got: dict, want: dict) -> None:
    import numpy as np
    import pandas as pd

    assert got.keys() == want.keys() and len(want) == 9  # 8 tables and the predictions
    for name in want:
        if name == "predictions":
            assert got[name].keys() == want[name].keys()
            for key in want[name]:
                np.testing.assert_array_equal(got[name][key], want[name][key], err_msg=key)
        else:
            pd.testing.assert_frame_equal(got[name], want[name], obj=name)


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory) -> dict:
    """The tiny DAG (``snakemake all``) run once from a clean project copy; the runs that must reproduce it
    (a second clean run, a run killed and resumed, a run through Slurm) compare with its results. Read-only:
    a test that changes the project works on a copy (:func:`reference_copy`). Under pytest-xdist the workers
    share one run: the first to ask makes it under a file lock in the session's base directory, the others
    wait for it."""
    import sys

    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "tiny_reference"
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}", DVC_NO_ANALYTICS="1")
    with FileLock(str(shared / "tiny_reference.lock")):
        if not (root / "done").exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            proj = project_copy(root / "proj")
            cmd = [sys.executable, "-m", "snakemake", "--profile", "workflow/profiles/default", "--cores", "2", "all"]
            r = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                raise AssertionError(f"the tiny reference run failed ({r.returncode}):\n{r.stdout[-3000:]}\n"
                                     f"{r.stderr[-3000:]}")
            (root / "done").write_text("ok\n")
    return {"proj": root / "proj", "db": root / "mlflow.db", "env": env, "results": tiny_results(root / "proj")}


def reference_copy(tiny_reference: dict, dst: Path) -> tuple[Path, dict]:
    """A copy of the reference run (the project, its outputs and Snakemake's records, and its MLflow store) at
    ``dst``, and the environment that tracks to the copied store: tests that rerun jobs on it never write to the
    shared reference."""
    proj = dst / "proj"
    shutil.copytree(tiny_reference["proj"], proj, symlinks=True)
    shutil.copy2(tiny_reference["db"], dst / "mlflow.db")
    return proj, dict(tiny_reference["env"], MLFLOW_TRACKING_URI=f"sqlite:///{dst / 'mlflow.db'}")


def data_section(source: str, **values) -> dict:
    """The ``data.<source>`` params section with ``values`` and the schema's defaults for the rest (what the
    importers receive from validated params)."""
    from text4point import params

    return params.validate({"data": {"source": source, source: values}}, sections_only=True)["data"][source]


def load_yaml(p: Path) -> dict:
    return yaml.safe_load(Path(p).read_text())


@pytest.fixture(scope="session")
def pt_inputs(tmp_path_factory, tiny_params, tiny_world) -> dict:
    """Correspondences and CLIP features of the tiny world, made by the stages' ``run_stage``.

    The CLIP is the t4p-tiny architecture with its seeded random initialisation saved as a local checkpoint
    (``clip.pretrained`` = that path): the features stage runs unchanged, the bootstrap training (slow, and
    irrelevant to these tests) is skipped.
    """
    from text4point import correspondences
    from text4point.clip import features
    from text4point.clip.load import build_model
    from text4point.runtime import seed_everything

    root = tmp_path_factory.mktemp("pretrain")
    cfg = copy.deepcopy(tiny_params)
    seed_everything(0)
    clip_ckpt = root / "clip_random.pt"
    torch.save({"state_dict": build_model(cfg["clip"]["model"]).state_dict()}, clip_ckpt)
    cfg["clip"]["pretrained"] = str(clip_ckpt)
    corr = root / "corr"
    corr.mkdir()
    correspondences.run_stage(cfg, tiny_world, corr, "cpu", progress=False)
    feat = root / "feat"
    features.run_stage(cfg, tiny_world, feat, "cpu", progress=False)
    return {"cfg": cfg, "world": tiny_world, "corr": corr, "feat": feat, "root": root}


@pytest.fixture(scope="session")
def one_epoch_checkpoints(pt_inputs, tmp_path_factory) -> dict:
    """``{"cfg", "ckpts": {variant: path}}``: one-epoch pre-training checkpoints (text4point, pointcontrast) of the
    tiny world, shared by the modules that need a pre-trained network."""
    from text4point.pretrain import PretrainJob, run_stage

    root = tmp_path_factory.mktemp("one_epoch")
    cfg = copy.deepcopy(pt_inputs["cfg"])
    cfg["pretrain"]["epochs"] = 1
    ckpts = {}
    for variant in ("text4point", "pointcontrast"):
        run_stage(PretrainJob(cfg, pt_inputs["world"], pt_inputs["corr"], pt_inputs["feat"], variant,
                              root / variant / "checkpoint.pt", progress=False, zeroshot_eval=False, track=False),
                  "cpu")
        ckpts[variant] = root / variant / "checkpoint.pt"
    return {"cfg": cfg, "ckpts": ckpts}


def pytest_collection_modifyitems(config, items):
    """Modules with end-to-end tests first, the most ``slow`` tests (then the most tests) first: pytest-xdist's
    ``loadscope`` hands out whole modules in collection order (``make test`` passes ``--no-loadscope-reorder``),
    so the longest modules start at once on the workers and the many short ones fill in behind them, instead of
    a slow module starting last and running alone. Within a module the order is unchanged."""
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)

    def weight(name: str) -> tuple[int, int]:
        tests = modules[name]
        return (-sum(1 for t in tests if t.get_closest_marker("slow")), -len(tests))

    items[:] = [item for name in sorted(modules, key=weight) for item in modules[name]]
