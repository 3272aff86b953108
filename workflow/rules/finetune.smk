# Fine-tuning jobs and the tables (issue #5): one job per task x init x seed x label fraction.
# A fine-tuning job is one process (the fine-tuning engine has no data-parallel mode): on a cluster it gets
# one GPU (workflow/profiles/slurm), and only pre-training launches through torchrun.


for mode in MODES:

    rule:
        name:
            "finetune" + ("_variation" if mode else "")
        input:
            data=DATASET,
            init=pretrain_checkpoint,
            clip=finetune_clip_inputs,
            code=code("finetune"),
        output:
            metrics=f"results/{mode}finetune/{{task}}/{{init}}/seed{{seed}}-frac{{frac}}/metrics.json",
            predictions=f"results/{mode}finetune/{{task}}/{{init}}/seed{{seed}}-frac{{frac}}/predictions.npz",
        wildcard_constraints:
            task=TASK_PATTERN,
            init=INIT_PATTERN,
            seed=r"\d+",
            variation=VARIATION_PATTERN,
        params:
            cfg=rule_params("finetune"),
            root=dirname_of("input", "data"),
            init=lambda wildcards, input: f"--init-checkpoint {input.init}" if input.init else "",
            clip=lambda wildcards, input: f"--clip-checkpoint {input.clip[0]}" if input.clip else "",
        conda:
            "../envs/text4point.yaml"
        log:
            f"logs/{mode}finetune/{{task}}/{{init}}/seed{{seed}}-frac{{frac}}.log",
        benchmark:
            f"results/benchmarks/stages/{mode}finetune_{{task}}_{{init}}_seed{{seed}}-frac{{frac}}.tsv"
        shell:
            "text4point finetune --params-json {params.cfg:q} --task {wildcards.task} --init {wildcards.init} "
            "--seed {wildcards.seed} --label-fraction {wildcards.frac} --data {params.root} {params.init} "
            "{params.clip} --out {output.metrics} --predictions {output.predictions} --quiet > {log} 2>&1"


rule variations:
    """Every variation's fine-tuning jobs (and the upstream jobs they need): the DVC stage `variations` runs it."""
    input:
        variation_runs(),


rule tables:
    input:
        finetune_runs(),
        variation_runs(),
        expand("results/metrics/pretrain/{variant}.json", variant=VARIANTS),
        teacher_inputs(),
        code=code("tables"),
    output:
        TABLES,
        report(TABLE_CSVS, caption="../report/table.rst", category="Tables"),
    params:
        cfg=rule_params("tables"),
    conda:
        "../envs/text4point.yaml"
    log:
        "logs/tables.log",
    benchmark:
        "results/benchmarks/stages/tables.tsv"
    shell:
        "text4point tables --params-json {params.cfg:q} --finetune-dir results/finetune "
        "--pretrain-dir results/metrics/pretrain --variations-dir results/variations --out-dir results/tables "
        "> {log} 2>&1"


rule figures:
    input:
        finetune_runs(),
        data=DATASET,
        code=code("figures"),
    output:
        figures=report(directory("results/figures/finetune"), patterns=["{name}.png"],
                       caption="../report/figures.rst", category="Figures"),
    params:
        cfg=rule_params("figures"),
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
