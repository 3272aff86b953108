import json
import os
import sys

from text4point import dag
from text4point.errors import InputError
from text4point.names import INITS, VARIANTS as VARIANT_NAMES, task_names
from text4point.params import validate as _validate_params
from text4point.tables import TABLE_NAMES

# One-line message naming the key and what is allowed; no traceback for a typo in params.yaml.
try:
    config.update(_validate_params(config, source="params.yaml (with Snakemake overrides)"))
except InputError as _e:
    sys.exit(f"error: {_e}")


def sections(*names):
    """JSON of the params that a job reads: top-level sections or dotted keys ("clip.bootstrap").
    The CLI gets them as --params-json, and Snakemake's params trigger reruns a job exactly when
    one of these values changes."""
    picked = {}
    for name in names:
        *parents, leaf = name.split(".")
        src, dst = config, picked
        for p in parents:
            src, dst = src[p], dst.setdefault(p, {})
        dst[leaf] = src[leaf]
    return json.dumps(picked, sort_keys=True)


def rule_params(rule):
    """JSON of the params that the named rule's command reads, from text4point.dag.rule_params. A pre-training or
    fine-tuning job reads its section but not the lists that only say which jobs exist (variants, tasks, inits,
    seeds, label_fractions), so adding a seed or a variant reruns no finished job."""
    return sections(*dag.rule_params(rule))


def code(rule):
    """The package's source files that the named rule's command imports, from text4point.dag.code_files. A change
    to one of them reruns exactly the jobs that can run it; a job with a task wildcard loads only its task."""
    return lambda wildcards: dag.code_files(rule, getattr(wildcards, "task", None))


# Wildcard values, from the package's registries.
TASK_PATTERN = "|".join(task_names())
INIT_PATTERN = "|".join(INITS)
VARIANT_PATTERN = "|".join(VARIANT_NAMES)

DATA = f"data/{config['data']['source']}"
# Rules depend on the dataset through its small manifest, written last by the data stage: Snakemake
# checksums small inputs, so a `dvc pull`/`dvc checkout` that only renews mtimes reruns nothing.
DATASET = f"{DATA}/dataset.json"
CLIP_ID = config["clip"]["model"]
CLIP_BOOTSTRAP = config["clip"]["pretrained"] == "bootstrap"
FEATURES = f"data/clip_features/{CLIP_ID}"
CORR = "data/correspondences"
VARIANTS = config["pretrain"]["variants"]
TABLES = expand("results/tables/{name}.md", name=TABLE_NAMES)
TABLE_CSVS = expand("results/tables/{name}.csv", name=TABLE_NAMES)


def dirname_of(kind, name):
    """Directory of a named input/output manifest, for the CLI's --data/--out (a lint-clean param)."""
    if kind == "input":
        return lambda wildcards, input: os.path.dirname(input[name])
    return lambda wildcards, output: os.path.dirname(output[name])


def finetune_runs():
    ft = config["finetune"]
    return expand(
        "results/finetune/{task}/{init}/seed{seed}-frac{frac}/metrics.json",
        task=ft["tasks"],
        init=ft["inits"],
        seed=ft["seeds"],
        frac=ft["label_fractions"],
    )


def clip_model_inputs(wildcards=None):
    return ["models/clip/bootstrap.pt"] if CLIP_BOOTSTRAP else []


def finetune_clip_inputs(wildcards):
    """The frozen CLIP is needed at fine-tuning time only by the text4point init (its learnable prompt)."""
    return clip_model_inputs() if wildcards.init == "text4point" else []


def pretrain_checkpoint(wildcards):
    if wildcards.init == "scratch":
        return []
    return f"models/pretrain/{wildcards.init}/checkpoint.pt"


def launcher(wildcards, resources):
    """How a training job starts: `torchrun --standalone --nproc_per_node N --no-python` (N data-parallel
    processes on the job's node) when the profile gives the job N > 1 GPUs (resource `gpu`, which the Slurm
    executor requests with --gpus), else nothing: one process. Snakemake leaves params computed from resources
    out of the params rerun trigger, so giving a finished job more or fewer GPUs does not rerun it."""
    gpus = int(resources.get("gpu", 0) or 0)
    return f"torchrun --standalone --nproc_per_node {gpus} --no-python" if gpus > 1 else ""
