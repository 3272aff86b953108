# text4point: the whole pipeline as one DAG. This file only loads and validates params.yaml and
# includes the rules; helpers live in workflow/rules/common.smk, resources in workflow/profiles/.
from snakemake.utils import min_version

min_version("9.0")


# params.yaml is read by text4point first: a file that is not YAML, or not a mapping, stops here with one line
# (Snakemake's own message would point at this Snakefile).
import sys

from text4point.errors import InputError
from text4point.params import read_file as _read_params

try:
    _read_params("params.yaml")
except InputError as _e:
    sys.exit(f"error: {_e}")


configfile: "params.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/clip.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"


rule all:
    input:
        rules.show.output,
        TABLES,
        rules.figures.output,
        TABLE_CSVS,
        artifacts(),
    default_target: True
