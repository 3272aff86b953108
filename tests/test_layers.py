"""The package's shape: imports in layers (libraries never import tasks or stages; stages never import each other),
importing the metrics stays light, no module is over 450 lines, and the rules' code dependencies are what the
package imports."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

SRC = ROOT / "src" / "text4point"
MAX_LINES = 450

# Stages: the modules each `text4point <stage>` command is made of (by package or module prefix).
STAGES = {
    "data": ("world", "importers"),
    "show": ("show",),
    "correspondences": ("correspondences",),
    "clip": ("clip.bootstrap", "clip.crops", "clip.features"),
    "pretrain": ("pretrain",),
    "finetune": ("finetune",),
    "tables": ("tables",),
    "figures": ("figures",),
}
TOP = ("cli", "__init__")  # the entry point may import anything


def _modules(src: Path = SRC) -> dict[str, Path]:
    out = {}
    for p in src.rglob("*.py"):
        rel = p.relative_to(src).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts) or "__init__"] = p
    return out


def _layer(mod: str) -> str:
    if mod in TOP:
        return "top"
    if mod == "tasks" or mod.startswith("tasks."):
        return "tasks"
    for stage, prefixes in STAGES.items():
        if any(mod == p or mod.startswith(p + ".") for p in prefixes):
            return f"stage:{stage}"
    return "library"


def _imported(mod: str, path: Path, known: set[str]) -> set[str]:
    """Package modules (relative names) that ``mod`` imports anywhere in its file."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = [] if mod == "__init__" else mod.split(".")
                base = base if is_pkg else base[:-1]
                base = base[:len(base) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif node.module and node.module.startswith("text4point"):
                base = node.module.split(".")[1:]
            else:
                continue
            name = ".".join(base)
            if name in known:
                found.add(name)
            for alias in node.names:
                sub = ".".join(base + [alias.name])
                if sub in known:
                    found.add(sub)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("text4point."):
                    name = alias.name.split(".", 1)[1]
                    if name in known:
                        found.add(name)
    return found


def _violations(src: Path = SRC) -> list[str]:
    mods = _modules(src)
    known = set(mods)
    wrong = []
    for mod, path in sorted(mods.items()):
        layer = _layer(mod)
        for dep in sorted(_imported(mod, path, known)):
            dep_layer = _layer(dep)
            if layer == "top" or dep_layer == "library" or dep_layer == layer:
                continue
            if layer.startswith("stage:") and dep_layer == "tasks":
                continue
            wrong.append(f"{mod} ({layer}) imports {dep} ({dep_layer})")
    return wrong


def test_libraries_never_import_tasks_or_stages_and_stages_never_import_each_other():
    wrong = _violations()
    assert not wrong, "\n".join(wrong)


def test_the_layering_check_finds_violations(tmp_path):
    """On a made-up package: a library importing a stage (inside a function), a stage importing another stage
    and a library importing a task are found; a stage importing a task and a library is not."""
    files = {
        "__init__.py": "",
        "geometry.py": "def f():\n    from .pretrain import engine\n",
        "metrics.py": "from .tasks import semseg\n",
        "tasks/__init__.py": "", "tasks/semseg.py": "from ..geometry import f\n",
        "pretrain/__init__.py": "", "pretrain/engine.py": "from ..finetune.model import build\n",
        "finetune/__init__.py": "", "finetune/model.py": "from .. import tasks\nfrom ..geometry import f\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert sorted(_violations(tmp_path)) == [
        "geometry (library) imports pretrain (stage:pretrain)",
        "geometry (library) imports pretrain.engine (stage:pretrain)",
        "metrics (library) imports tasks (tasks)",
        "metrics (library) imports tasks.semseg (tasks)",
        "pretrain.engine (stage:pretrain) imports finetune.model (stage:finetune)"]


@pytest.mark.parametrize("module", ["text4point.metrics", "text4point.geometry", "text4point.params",
                                    "text4point.tables"])
def test_light_imports_do_not_load_torch_cluster_or_open_clip(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch_cluster', 'open_clip') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", (module, out)


def test_no_module_is_over_450_lines():
    long = {str(p.relative_to(ROOT)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_code_dependencies_follow_the_imports():
    from text4point import dag

    fine = set(dag.code_files("finetune"))
    assert {"src/text4point/tasks/det.py", "src/text4point/finetune/model.py", "src/text4point/training.py",
            "src/text4point/clip/model_configs/t4p-tiny.json"} <= fine
    assert not any(f.startswith(("src/text4point/pretrain/", "src/text4point/world/")) for f in fine)
    data = set(dag.code_files("data"))
    assert "src/text4point/world/render.py" in data and "src/text4point/tasks/det.py" not in data
    corr = set(dag.code_files("correspondences"))
    assert "src/text4point/correspondences.py" in corr and not any("/clip/" in f for f in corr)
    for rule in dag.COMMANDS:
        assert "src/text4point/cli.py" in dag.code_files(rule)


def test_a_fine_tuning_job_depends_on_its_own_task_module_only():
    from text4point import dag

    det = set(dag.code_files("finetune", "det"))
    assert "src/text4point/tasks/det.py" in det and "src/text4point/tasks/_base.py" in det
    assert not {"src/text4point/tasks/semseg.py", "src/text4point/tasks/insseg.py"} & det
    assert {"src/text4point/tasks/semseg.py", "src/text4point/tasks/det.py"} <= set(dag.code_files("tables"))


def test_dvc_yaml_is_generated_from_the_package(tmp_path, capsys):
    """The committed dvc.yaml is what `text4point dvc-yaml` writes; a hand edit is caught in one line."""
    import shutil

    from text4point.cli import main

    main(["dvc-yaml", "--check", "--params", str(ROOT / "params.yaml"), "--out", str(ROOT / "dvc.yaml")])
    assert capsys.readouterr().out.strip().endswith("dvc.yaml: current")
    edited = tmp_path / "dvc.yaml"
    shutil.copy(ROOT / "dvc.yaml", edited)
    edited.write_text(edited.read_text().replace("- src/text4point/tasks/${item.task}.py\n", ""))
    with pytest.raises(SystemExit) as e:
        main(["dvc-yaml", "--check", "--params", str(ROOT / "params.yaml"), "--out", str(edited)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {edited}: stale, not what `text4point dvc-yaml` generates from the package; run it and " \
                  f"commit the result\n"
