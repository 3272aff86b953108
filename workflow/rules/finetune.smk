# Fine-tuning jobs and the tables (issue #5): one job per task x init x seed x label fraction.


rule finetune:
    input:
        data=DATASET,
        features=f"{FEATURES}/manifest.json",
        init=pretrain_checkpoint,
    output:
        metrics="results/finetune/{task}/{init}/seed{seed}-frac{frac}/metrics.json",
    wildcard_constraints:
        task="semseg|insseg|det",
        init="scratch|text4point|image_contrast|pointcontrast",
        seed=r"\d+",
    params:
        cfg=sections("seed", "finetune", "clip", "tracking"),
    conda:
        "../envs/text4point.yaml"
    log:
        "logs/finetune/{task}/{init}/seed{seed}-frac{frac}.log",
    benchmark:
        "results/benchmarks/stages/finetune_{task}_{init}_seed{seed}-frac{frac}.tsv"
    shell:
        "text4point finetune --params-json {params.cfg:q} --task {wildcards.task} --init {wildcards.init} "
        "--seed {wildcards.seed} --label-fraction {wildcards.frac} --out {output.metrics} > {log} 2>&1"


rule tables:
    input:
        finetune_runs(),
        expand("results/metrics/pretrain/{variant}.json", variant=VARIANTS),
    output:
        TABLES,
    params:
        cfg=sections("finetune", "pretrain"),
    conda:
        "../envs/text4point.yaml"
    log:
        "logs/tables.log",
    benchmark:
        "results/benchmarks/stages/tables.tsv"
    shell:
        "text4point tables --params-json {params.cfg:q} --out-dir results/tables > {log} 2>&1"
