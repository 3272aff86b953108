# Pre-training variants (issue #4): one job per variant. Epoch checkpoints go to
# models/pretrain/{variant}/epochs/ and a rerun resumes from the newest compatible one. A job given several
# GPUs (resource `gpu`, set in the profile) trains data-parallel under torchrun (see launcher in common.smk).


rule pretrain:
    input:
        data=DATASET,
        corr=f"{CORR}/manifest.json",
        features=f"{FEATURES}/manifest.json",
        model=clip_model_inputs,
        code=code("pretrain"),
    output:
        checkpoint="models/pretrain/{variant}/checkpoint.pt",
        metrics="results/metrics/pretrain/{variant}.json",
    wildcard_constraints:
        variant=VARIANT_PATTERN,
    params:
        cfg=rule_params("pretrain"),
        checkpoint=lambda wildcards, input: f"--clip-checkpoint {input.model[0]}" if input.model else "",
        root=dirname_of("input", "data"),
        corr=dirname_of("input", "corr"),
        features=dirname_of("input", "features"),
        launch=launcher,
    conda:
        "../envs/text4point.yaml"
    log:
        "logs/pretrain/{variant}.log",
    benchmark:
        "results/benchmarks/stages/pretrain_{variant}.tsv"
    shell:
        "{params.launch} text4point pretrain --params-json {params.cfg:q} --variant {wildcards.variant} "
        "--data {params.root} --corr {params.corr} --features {params.features} {params.checkpoint} "
        "--out {output.checkpoint} --metrics {output.metrics} --quiet > {log} 2>&1"
