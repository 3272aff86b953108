import json
import os
import re
import sys

from text4point import dag
from text4point.errors import InputError
from text4point.names import INITS, LANGUAGE_INITS, SCRATCH, VARIANTS as VARIANT_NAMES, task_names
from text4point.params import validate as _validate_params, variation as _variation
from text4point.runs import FINETUNE_PATTERN
from text4point.tables import table_names

def _origin(key):
    """The file (or --config) that set ``key`` (dotted), for the one-line message of a bad value."""
    import yaml

    def has(d):
        for part in key.split("."):
            if not isinstance(d, dict) or part not in d:
                return False
            d = d[part]
        return True

    if has(dict(workflow.config_settings.config)):
        return "--config"
    for f in reversed(list(workflow.config_settings.configfiles)):
        if has(yaml.safe_load(open(f)) or {}):
            rel = os.path.relpath(f)
            return str(f) if rel.startswith("..") else rel
    return "params.yaml"


# One-line message naming the file, the key and what is allowed; no traceback for a typo in params.yaml.
try:
    config.update(_validate_params(config, source="params.yaml"))
except InputError as _e:
    _key = getattr(_e, "key", "")
    _where = _origin(_key) if _key else "params.yaml"
    sys.exit(f"error: {_where}: {str(_e).split(': ', 1)[1]}" if _where != "params.yaml" else f"error: {_e}")

# Variations (params.yaml `variations`): each reruns, under variations/<name>/, the jobs its overrides change.
VARIATIONS = {name: _variation(config, name) for name in config["variations"]}
VARIED = {name: dag.varied_rules(config, name) for name in config["variations"]}
VAR = "variations/{variation}/"  # the path segment of a variation's outputs
MODES = ("", VAR)  # every stage family defines its rules for the default jobs and for a variation's


def cfg_of(wildcards):
    """The params of a job: the variation's when it has a ``variation`` wildcard."""
    v = getattr(wildcards, "variation", None)
    return VARIATIONS[v] if v else config


def at(rule, wildcards):
    """``variations/<name>/`` when the job's variation reruns ``rule``'s jobs, else "" (the default job's output)."""
    v = getattr(wildcards, "variation", None)
    return f"variations/{v}/" if v and rule in VARIED[v] else ""


def rule_params(rule):
    """JSON of the params that the named rule's command reads (text4point.dag.job_params: the sections and keys
    of text4point.dag.rule_params), the variation's for a job of a variation. A pre-training or fine-tuning job
    reads its section but not the lists that only say which jobs exist (variants, tasks, inits, seeds,
    label_fractions), so adding a seed or a variant reruns no finished job."""
    return lambda wildcards: json.dumps(dag.job_params(cfg_of(wildcards), rule), sort_keys=True)


def code(rule):
    """The package's source files that the named rule's command imports, from text4point.dag.code_files. A change
    to one of them reruns exactly the jobs that can run it; a job with a task wildcard loads only its task."""
    return lambda wildcards: dag.code_files(rule, getattr(wildcards, "task", None))


# Wildcard values, from the package's registries.
TASK_PATTERN = "|".join(task_names())
INIT_PATTERN = "|".join(INITS)
VARIANT_PATTERN = "|".join(VARIANT_NAMES)
VARIATION_PATTERN = "|".join(map(re.escape, VARIATIONS)) or "(?!)"  # (?!) matches nothing

SOURCE = config["data"]["source"]
PRETRAIN_SOURCE = config["data"]["pretrain_source"] or SOURCE
# Rules depend on a dataset through its small manifest, written last by the data stage: Snakemake checksums small
# inputs, so a `dvc pull`/`dvc checkout` that only renews mtimes reruns nothing. Fine-tuning and evaluation read
# DATASET (data.source); the CLIP bootstrap, correspondences, features and pre-training read PRETRAIN_DATASET.
DATASET = f"data/{SOURCE}/dataset.json"
PRETRAIN_DATASET = f"data/{PRETRAIN_SOURCE}/dataset.json"
CLIP_ID = config["clip"]["model"]
VARIANTS = config["pretrain"]["variants"]
TABLES = expand("results/tables/{name}.md", name=table_names(config))
TABLE_CSVS = expand("results/tables/{name}.csv", name=table_names(config))


def features_dir(mode):
    """The clip_features output of the default jobs or of a variation (one CLIP per variation directory)."""
    return f"data/clip_features/{CLIP_ID}" if not mode else f"data/{mode}clip_features"


def dirname_of(kind, name):
    """Directory of a named input/output manifest, for the CLI's --data/--out (a lint-clean param)."""
    if kind == "input":
        return lambda wildcards, input: os.path.dirname(input[name])
    return lambda wildcards, output: os.path.dirname(output[name])


def finetune_runs():
    """The default fine-tuning jobs' metrics."""
    ft = config["finetune"]
    return expand(f"results/finetune/{FINETUNE_PATTERN}/metrics.json", task=ft["tasks"], init=ft["inits"],
                  seed=ft["seeds"], frac=ft["label_fractions"])


def variation_runs():
    """Every variation's fine-tuning jobs' metrics (its tasks x inits x label fractions x finetune.seeds)."""
    out = []
    for name, v in config["variations"].items():
        fracs = v["label_fractions"] or config["finetune"]["label_fractions"]
        out += expand(f"results/variations/{name}/finetune/{FINETUNE_PATTERN}/metrics.json", task=v["tasks"],
                      init=v["inits"], seed=config["finetune"]["seeds"], frac=fracs)
    return out


def artifacts():
    """Every file the tables rest on, so that `snakemake all` notices one that is missing (moved away, or lost to
    a killed forced rerun) and remakes it: each stage's outputs and metrics, every fine-tuning job's predictions,
    and the variations' own upstream outputs."""
    out = [DATASET, "results/metrics/data.json", PRETRAIN_DATASET, "data/correspondences/manifest.json",
           "results/metrics/correspondences.json", f"{features_dir('')}/manifest.json",
           "results/metrics/clip_features.json"]
    if config["clip"]["pretrained"] == "bootstrap":
        out += ["models/clip/bootstrap.pt", "results/metrics/clip_bootstrap.json"]
    out += expand("models/pretrain/{variant}/checkpoint.pt", variant=VARIANTS)
    out += expand("results/metrics/pretrain/{variant}.json", variant=VARIANTS)
    runs = finetune_runs() + variation_runs()
    out += runs + [r.replace("metrics.json", "predictions.npz") for r in runs]
    for name, rules in VARIED.items():
        mode = f"variations/{name}/"
        if "clip_bootstrap" in rules and VARIATIONS[name]["clip"]["pretrained"] == "bootstrap":
            out += [f"models/{mode}clip/bootstrap.pt", f"results/{mode}metrics/clip_bootstrap.json"]
        if "correspondences" in rules:
            out += [f"data/{mode}correspondences/manifest.json", f"results/{mode}metrics/correspondences.json"]
        if "clip_features" in rules:
            out += [f"{features_dir(mode)}/manifest.json", f"results/{mode}metrics/clip_features.json"]
        if "pretrain" in rules:
            used = {i for i in config["variations"][name]["inits"] if i != SCRATCH}
            out += [f"models/{mode}pretrain/{v}/checkpoint.pt" for v in sorted(used)]
            out += [f"results/{mode}metrics/pretrain/{v}.json" for v in sorted(used)]
    return out


def teacher_inputs():
    """What the teacher table reads beyond the fine-tuning jobs: the bootstrap and pre-training metrics of the
    default teacher and of each teacher variation that reruns them."""
    names = [n for n, v in config["variations"].items() if v["table"] == "teacher"]
    if not names:
        return []
    out = ["results/metrics/clip_bootstrap.json"] if config["clip"]["pretrained"] == "bootstrap" else []
    for name in names:
        mode = f"variations/{name}/"
        if "clip_bootstrap" in VARIED[name] and VARIATIONS[name]["clip"]["pretrained"] == "bootstrap":
            out.append(f"results/{mode}metrics/clip_bootstrap.json")
        if "pretrain" in VARIED[name]:
            out += [f"results/{mode}metrics/pretrain/{i}.json" for i in config["variations"][name]["inits"] if i != SCRATCH]
    return out


def bootstrap_input(wildcards):
    """The bootstrap CLIP the job's params use (none for an open_clip tag or checkpoint)."""
    if cfg_of(wildcards)["clip"]["pretrained"] != "bootstrap":
        return []
    return [f"models/{at('clip_bootstrap', wildcards)}clip/bootstrap.pt"]


def features_input(wildcards):
    return f"{features_dir(at('clip_features', wildcards))}/manifest.json"


def correspondences_input(wildcards):
    return f"data/{at('correspondences', wildcards)}correspondences/manifest.json"


def finetune_clip_inputs(wildcards):
    """The frozen CLIP is needed at fine-tuning time only by the text4point init (its learnable prompt)."""
    return bootstrap_input(wildcards) if wildcards.init in LANGUAGE_INITS else []


def pretrain_checkpoint(wildcards):
    if wildcards.init == SCRATCH:
        return []
    return f"models/{at('pretrain', wildcards)}pretrain/{wildcards.init}/checkpoint.pt"


def launcher(wildcards, resources):
    """How a training job starts: `torchrun --standalone --nproc_per_node N --no-python` (N data-parallel
    processes on the job's node) when the profile gives the job N > 1 GPUs (resource `gpu`, which the Slurm
    executor requests with --gpus), else nothing: one process. Snakemake leaves params computed from resources
    out of the params rerun trigger, so giving a finished job more or fewer GPUs does not rerun it."""
    gpus = int(resources.get("gpu", 0) or 0)
    return f"torchrun --standalone --nproc_per_node {gpus} --no-python" if gpus > 1 else ""
