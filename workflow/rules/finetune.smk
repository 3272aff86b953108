# Fine-tuning jobs and the tables (issue #5): one job per task x init x seed x label fraction.
# A fine-tuning job is one process (the fine-tuning engine has no data-parallel mode): on a cluster it gets
# one GPU (workflow/profiles/slurm), and only pre-training launches through torchrun.


rule finetune:
    input:
        data=DATASET,
        init=pretrain_checkpoint,
        clip=finetune_clip_inputs,
    output:
        metrics="results/finetune/{task}/{init}/seed{seed}-frac{frac}/metrics.json",
        predictions="results/finetune/{task}/{init}/seed{seed}-frac{frac}/predictions.npz",
    wildcard_constraints:
        task="semseg|insseg|det",
        init="scratch|text4point|image_contrast|pointcontrast",
        seed=r"\d+",
    params:
        cfg=sections("seed", *FINETUNE_JOB, *PRETRAIN_JOB, "clip", "correspondences.voxel_size", "tracking"),
        root=dirname_of("input", "data"),
        init=lambda wildcards, input: f"--init-checkpoint {input.init}" if input.init else "",
        clip=lambda wildcards, input: f"--clip-checkpoint {input.clip[0]}" if input.clip else "",
    conda:
        "../envs/text4point.yaml"
    log:
        "logs/finetune/{task}/{init}/seed{seed}-frac{frac}.log",
    benchmark:
        "results/benchmarks/stages/finetune_{task}_{init}_seed{seed}-frac{frac}.tsv"
    shell:
        "text4point finetune --params-json {params.cfg:q} --task {wildcards.task} --init {wildcards.init} "
        "--seed {wildcards.seed} --label-fraction {wildcards.frac} --data {params.root} {params.init} {params.clip} "
        "--out {output.metrics} --predictions {output.predictions} --quiet > {log} 2>&1"


rule tables:
    input:
        finetune_runs(),
        expand("results/metrics/pretrain/{variant}.json", variant=VARIANTS),
    output:
        TABLES,
        report(TABLE_CSVS, caption="../report/table.rst", category="Tables"),
    params:
        cfg=sections("finetune", "pretrain", "tracking"),
    conda:
        "../envs/text4point.yaml"
    log:
        "logs/tables.log",
    benchmark:
        "results/benchmarks/stages/tables.tsv"
    shell:
        "text4point tables --params-json {params.cfg:q} --finetune-dir results/finetune "
        "--pretrain-dir results/metrics/pretrain --out-dir results/tables > {log} 2>&1"


rule figures:
    input:
        finetune_runs(),
        data=DATASET,
    output:
        figures=report(directory("results/figures/finetune"), patterns=["{name}.png"],
                       caption="../report/figures.rst", category="Figures"),
    params:
        cfg=sections("finetune"),
        root=dirname_of("input", "data"),
    conda:
        "../envs/text4point.yaml"
    log:
        "logs/figures.log",
    benchmark:
        "results/benchmarks/stages/figures.tsv"
    shell:
        "text4point figures --params-json {params.cfg:q} --data {params.root} --finetune-dir results/finetune "
        "--out-dir {output.figures} > {log} 2>&1"
