# text4point: the whole pipeline as one DAG. This file only loads and validates params.yaml and
# includes the rules; helpers live in workflow/rules/common.smk, resources in workflow/profiles/.
from snakemake.utils import min_version

min_version("9.0")


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
    default_target: True
