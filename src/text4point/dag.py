"""The pipeline's DAG as the package defines it, read by Snakemake (``workflow/rules/common.smk``) and by the
generator of ``dvc.yaml``, so that the two cannot drift:

- :data:`COMMANDS`: the ``text4point`` subcommand each rule runs;
- :func:`rule_params`: the params (sections or dotted keys) each rule passes its command (``--params-json``),
  which is also the params trigger of its jobs and the ``params:`` of its DVC stage;
- :func:`code_files`: the source files a command imports, computed from the package by walking its import
  statements (module level and inside functions) from the command's function in ``cli.py``; a rule depends on
  them, so a change to a module reruns exactly the jobs whose command can run it, and their descendants.

The registry :mod:`text4point.tasks` imports its task modules by name (``importlib``); importing it counts as
importing all of them. Package data read at run time is listed in :data:`DATA_FILES`.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

PACKAGE = "text4point"
SRC = Path(__file__).resolve().parent          # src/text4point
ROOT = SRC.parents[1]                           # the repository
COMMANDS = {"data": "data", "pretrain_data": "data", "show": "show", "clip_bootstrap": "clip-bootstrap",
            "correspondences": "correspondences",
            "clip_features": "clip-features", "pretrain": "pretrain", "finetune": "finetune", "tables": "tables",
            "figures": "figures"}
DYNAMIC = {f"{PACKAGE}.tasks"}                  # packages that import every submodule by name
DATA_FILES = {f"{PACKAGE}.clip.load": ("clip/model_configs/*.json",)}
# the list-valued keys that only say which jobs exist: a job does not read them, so changing them reruns nothing
JOB_LISTS = {"pretrain": ("variants",), "finetune": ("tasks", "inits", "seeds", "label_fractions")}


def _job_keys(section: str) -> list[str]:
    """``section.<key>`` for every key of a params section but its job lists (from the schema)."""
    from .params import schema

    keys = schema()["properties"][section]["properties"]
    return [f"{section}.{k}" for k in keys if k not in JOB_LISTS.get(section, ())]


def rule_params(rule: str) -> list[str]:
    """The params sections and dotted keys rule ``rule`` passes its command."""
    fixed = {
        "data": ["seed", "data", "tracking"],
        "pretrain_data": ["seed", "data", "tracking"],
        "show": ["show"],
        "clip_bootstrap": ["seed", "clip.model", "clip.pretrained", "clip.templates", "clip.dense_scale",
                           "clip.bootstrap", "tracking"],
        "correspondences": ["seed", "correspondences", "tracking"],
        "clip_features": ["seed", "clip", "correspondences.frame_skip", "tracking"],
        # the teacher table asks which rules a variation reruns (varied_rules): it reads every upstream rule's params
        "tables": ["seed", "clip", "correspondences", "finetune", "pretrain", "variations", "tracking"],
        "figures": ["finetune"],
    }
    if rule == "pretrain":
        return ["seed", *_job_keys("pretrain"), "clip", "correspondences", "tracking"]
    if rule == "finetune":
        return ["seed", *_job_keys("finetune"), *_job_keys("pretrain"), "clip", "correspondences.voxel_size",
                "tracking"]
    return fixed[rule]


def job_params(cfg: dict, rule: str) -> dict:
    """The params a job of ``rule`` reads, picked from the validated ``cfg`` (what ``--params-json`` holds). A
    ``data`` job reads the section of its own dataset (``pretrain_data``: of ``data.pretrain_source``)."""
    if rule in ("data", "pretrain_data"):
        d = cfg["data"]
        source = d["source"] if rule == "data" else (d["pretrain_source"] or d["source"])
        return {"seed": cfg["seed"], "data": {"source": source, source: d[source]}, "tracking": cfg["tracking"]}
    picked: dict = {}
    for name in rule_params(rule):
        *parents, leaf = name.split(".")
        src, dst = cfg, picked
        for part in parents:
            src, dst = src[part], dst.setdefault(part, {})
        dst[leaf] = src[leaf]
    return picked


# ---------------------------------------------------------------- variations

# The rules a variation can change, in the DAG's order, with the rules whose outputs their jobs read.
UPSTREAM = {"clip_bootstrap": (), "correspondences": (), "clip_features": ("clip_bootstrap",),
            "pretrain": ("correspondences", "clip_features", "clip_bootstrap"),
            "finetune": ("pretrain", "clip_bootstrap")}


def varied_rules(cfg: dict, name: str) -> set[str]:
    """The rules whose jobs differ under variation ``name``: their own params differ from the default jobs', or a
    rule upstream of them does (those jobs run again under the variation; the others are shared)."""
    from .params import variation

    other = variation(cfg, name)
    out: set[str] = set()
    for rule, upstream in UPSTREAM.items():
        if job_params(cfg, rule) != job_params(other, rule) or out & set(upstream):
            out.add(rule)
    return out


# ---------------------------------------------------------------- code dependencies


def _module_path(name: str) -> Path | None:
    """The source file of package module ``name`` (a package's ``__init__.py``), or None."""
    rel = name.split(".")[1:]
    base = SRC.joinpath(*rel)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _is_package(name: str) -> bool:
    return (SRC.joinpath(*name.split(".")[1:]) / "__init__.py").is_file()


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """Package modules an import statement in ``module`` loads."""
    out = []
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name == PACKAGE or a.name.startswith(PACKAGE + ".")]
    if node.level:
        parts = module.split(".")
        base_parts = parts if _is_package(module) else parts[:-1]
        base_parts = base_parts[:len(base_parts) - (node.level - 1)]
        base = ".".join(base_parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if not (base == PACKAGE or base.startswith(PACKAGE + ".")):
        return out
    out.append(base)
    for alias in node.names:  # `from .clip import bootstrap` imports the submodule
        if _module_path(f"{base}.{alias.name}") is not None:
            out.append(f"{base}.{alias.name}")
    return out


@lru_cache(maxsize=None)
def _imports(module: str) -> tuple[str, ...]:
    path = _module_path(module)
    if path is None:
        return ()
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found += _resolve(module, node)
    if module in DYNAMIC:
        pkg_dir = path.parent
        found += [f"{module}.{p.stem}" for p in sorted(pkg_dir.glob("*.py")) if p.stem != "__init__"]
    return tuple(dict.fromkeys(found))


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def module_closure(entry: list[str], opaque: tuple[str, ...] = ()) -> set[str]:
    """Every package module that importing ``entry`` can load (with the packages that contain them); the
    imports of the ``opaque`` modules are not followed (the caller listed the ones that matter)."""
    seen: set[str] = set()
    todo = list(entry)
    while todo:
        m = todo.pop()
        if m in seen or _module_path(m) is None:
            continue
        seen.add(m)
        todo += _parents(m) + ([] if m in opaque else list(_imports(m)))
    return seen


def _command_entry(command: str) -> list[str]:
    """The modules the CLI's ``cmd_<command>`` imports, plus what ``cli.py`` imports outside any command."""
    cli = f"{PACKAGE}.cli"
    tree = ast.parse(_module_path(cli).read_text())
    fname = "cmd_" + command.replace("-", "_")
    entry = [cli]
    found = False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("cmd_") and node.name != fname:
            continue  # another command's imports
        found |= isinstance(node, ast.FunctionDef) and node.name == fname
        for sub in ast.walk(node):
            if isinstance(sub, (ast.Import, ast.ImportFrom)):
                entry += _resolve(cli, sub)
    if not found:
        raise KeyError(f"cli.py has no function {fname} for command {command!r}")
    return entry


def code_files(rule: str, task: str | None = None) -> list[str]:
    """Repository-relative source files (and package data) the command of ``rule`` can run, sorted.

    ``task``: a job of one task (a ``finetune`` job) loads only that task's module from the registry, so the
    other tasks' modules are left out (a change to ``tasks/det.py`` reruns the detection jobs only)."""
    mods = module_closure(_command_entry(COMMANDS[rule]), opaque=(f"{PACKAGE}.cli",))
    if task is not None:
        from .names import task_names

        mods -= {f"{PACKAGE}.tasks.{t}" for t in task_names() if t != task}
    files = {str(_module_path(m).relative_to(ROOT)) for m in mods}
    for m in mods:
        for pattern in DATA_FILES.get(m, ()):
            files |= {str(p.relative_to(ROOT)) for p in SRC.glob(pattern)}
    return sorted(files)


# ---------------------------------------------------------------- dvc.yaml


RULE_FILES = {"data": "data", "pretrain_data": "data", "show": "data", "clip_bootstrap": "clip",
              "correspondences": "clip",
              "clip_features": "clip", "pretrain": "pretrain", "finetune": "finetune", "tables": "finetune",
              "figures": "finetune"}
SNAKEMAKE = "snakemake --profile workflow/profiles/default"
HEADER = """\
# GENERATED by `text4point dvc-yaml` from the package (text4point.dag): do not edit; `make check` fails when it is
# stale. Coarse DVC stages, each calling a Snakemake target, so Snakemake decides what to (re)compute and
# `dvc repro` after `snakemake all` recomputes nothing expensive. Every stage depends on the source files its
# command imports (text4point.dag.code_files) and on the params its rule passes (a key params.yaml does not set
# stands for its section). Every output is `persist: true`: DVC must not delete outputs before a stage runs, or
# Snakemake would rebuild them. What git does not hold (data/, models/, results/figures/, predictions.npz) is
# cached here, so that `dvc push` / `dvc pull` move every artifact a fresh clone needs; metrics and tables are
# small and committed (`cache: false`). Snakemake's own record of each job (.snakemake/metadata: params, input
# checksums) travels too: without it a clone cannot tell a pulled input from a changed one.
"""


def _dvc_params(rule: str, params_yaml: dict) -> list[str]:
    """The rule's params as DVC can track them: a dotted key params.yaml does not set becomes its section."""
    out: list[str] = []
    for key in rule_params(rule):
        node, ok = params_yaml, True
        for part in key.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            else:
                ok = False
                break
        name = key if ok else key.split(".")[0]
        if name not in out and name.split(".")[0] not in out:
            out.append(name)
    return [k for k in out if "." not in k or k.split(".")[0] not in out]


def _deps(rule: str, data: list[str] = (), task: str | None = None) -> list[str]:
    return [*data, f"workflow/rules/{RULE_FILES[rule]}.smk", "workflow/rules/common.smk", *code_files(rule, task)]


def _finetune_deps(data: list[str]) -> list[str]:
    """A fine-tuning stage's deps: its task's module (``${item.task}``) in place of every task module."""
    from .names import task_names

    first = task_names()[0]
    one = f"src/{PACKAGE}/tasks/{first}.py"
    return [d.replace(one, f"src/{PACKAGE}/tasks/${{item.task}}.py") for d in _deps("finetune", data, first)]


def _variations_stage(params_yaml: dict, data: list[str]) -> tuple[list[str], list[str]]:
    """The variations stage's (deps, outs) from the variations in ``params_yaml``. Deps: the rule files and the
    code of every rule a variation reruns, for the tasks its fine-tuning jobs run (a change to another task's
    module does not make the stage stale). Outs: their fine-tuning jobs, and their own models only when one of
    them reruns an upstream stage (DVC refuses an output that the DAG never makes); none without variations."""
    import copy

    from .params import validate

    cfg = validate(copy.deepcopy(params_yaml))
    deps, upstream = list(data), False
    for name, v in cfg["variations"].items():
        rules = varied_rules(cfg, name)
        upstream |= bool(rules - {"finetune"})
        for rule in sorted(rules):
            for task in (v["tasks"] if rule == "finetune" else [None]):
                deps += [f"workflow/rules/{RULE_FILES[rule]}.smk", "workflow/rules/common.smk",
                         *code_files(rule, task)]
    outs = (["models/variations"] if upstream else []) + (["results/variations"] if cfg["variations"] else [])
    return list(dict.fromkeys(deps)), outs


def dvc_yaml(params_yaml: dict) -> str:
    """The text of ``dvc.yaml`` for the project's DAG (``params_yaml``: params.yaml as written, not validated)."""
    import yaml

    data = "data/${data.source}"
    feats = "data/clip_features/${clip.model}"
    persist = {"persist": True}
    metric = {"cache": False, "persist": True}

    def stage(rule, target, deps, outs=(), metrics=(), plots=(), **extra):
        body = {**extra, "cmd": f"{SNAKEMAKE} {target}", "deps": deps, "params": _dvc_params(rule, params_yaml)}
        if outs:
            body["outs"] = [{o: dict(persist)} for o in outs]
        if metrics:
            body["metrics"] = [{m: dict(metric)} for m in metrics]
        if plots:
            body["plots"] = [{p: dict(metric)} for p in plots]
        return body

    job = "results/finetune/${item.task}/${item.init}/seed${item.seed}-frac${item.frac}"
    stages = {
        "data": stage("data", "data", _deps("data"), [data], ["results/metrics/data.json"],
                      ["results/metrics/data_scenes.csv"]),
        "show": stage("show", "show", _deps("show", [data]), ["results/figures/data"]),
        "clip_bootstrap": stage("clip_bootstrap", "clip_bootstrap", _deps("clip_bootstrap", [data]),
                                ["models/clip/bootstrap.pt"], ["results/metrics/clip_bootstrap.json"]),
        "correspondences": stage("correspondences", "correspondences", _deps("correspondences", [data]),
                                 ["data/correspondences"], ["results/metrics/correspondences.json"]),
        "clip_features": stage("clip_features", "clip_features",
                               _deps("clip_features", [data, "models/clip/bootstrap.pt"]), [feats],
                               ["results/metrics/clip_features.json"]),
        "pretrain": {"foreach": "${pretrain.variants}", "do": stage(
            "pretrain", "models/pretrain/${item}/checkpoint.pt",
            _deps("pretrain", ["data/correspondences", feats]), ["models/pretrain/${item}/checkpoint.pt"],
            ["results/metrics/pretrain/${item}.json"])},
        # The pre-training checkpoints enter through their metrics (weights_sha256): not every init has a
        # checkpoint, and models/pretrain/*/epochs/ (resume state, not shared) is no input of fine-tuning.
        "finetune": stage("finetune", f"{job}/metrics.json", _finetune_deps([data, "results/metrics/pretrain"]),
                          [f"{job}/predictions.npz"], [f"{job}/metrics.json"],
                          matrix={"task": "${finetune.tasks}", "init": "${finetune.inits}",
                                  "seed": "${finetune.seeds}", "frac": "${finetune.label_fractions}"}),
        "variations": stage("finetune", "variations",
                            *_variations_stage(params_yaml, [data, "results/metrics/pretrain"])),
        "tables": stage("tables", "all", _deps("tables", ["results/finetune"]) + [
            f for f in code_files("figures") if f not in code_files("tables")],
            ["results/figures/finetune", ".snakemake/metadata"]),
    }
    if stages["variations"].get("outs"):
        stages["variations"]["params"].append("variations")
    else:  # no variation: no stage (DVC refuses to commit an output that was never made)
        del stages["variations"]
    stages["tables"]["outs"].insert(0, {"results/tables": dict(metric)})
    tables = stages["tables"]["params"]
    tables += [k for k in _dvc_params("figures", params_yaml) if k not in tables]
    doc = {"vars": ["params.yaml"], "stages": stages, "plots": [
        {"seconds per generated scene": {"template": "bar_horizontal", "x": "seconds",
                                         "y": {"results/metrics/data_scenes.csv": "scene_id"}}},
        {"valid depth per scene": {"template": "bar_horizontal", "x": "valid_depth_fraction",
                                   "y": {"results/metrics/data_scenes.csv": "scene_id"}}}]}
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=120)


__all__ = ["COMMANDS", "UPSTREAM", "code_files", "dvc_yaml", "job_params", "module_closure", "rule_params",
           "varied_rules"]
