# Pre-training variants: one job per variant (and per variation that changes it, under variations/<name>/).
# Epoch checkpoints go to models/[variations/<name>/]pretrain/{variant}/epochs/ and a rerun resumes from the
# newest compatible one. A job given several GPUs (resource `gpu`, set in the profile) trains data-parallel under
# torchrun (see launcher in common.smk).

for mode in MODES:

    rule:
        name:
            "pretrain" + ("_variation" if mode else "")
        input:
            data=PRETRAIN_DATASET,
            corr=correspondences_input,
            features=features_input,
            model=bootstrap_input,
            code=code("pretrain"),
        output:
            checkpoint=f"models/{mode}pretrain/{{variant}}/checkpoint.pt",
            metrics=f"results/{mode}metrics/pretrain/{{variant}}.json",
        wildcard_constraints:
            variant=VARIANT_PATTERN,
            variation=VARIATION_PATTERN,
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
            f"logs/{mode}pretrain/{{variant}}.log",
        benchmark:
            f"results/benchmarks/stages/{mode}pretrain_{{variant}}.tsv"
        shell:
            "{params.launch} text4point pretrain --params-json {params.cfg:q} --variant {wildcards.variant} "
            "--data {params.root} --corr {params.corr} --features {params.features} {params.checkpoint} "
            "--out {output.checkpoint} --metrics {output.metrics} --quiet > {log} 2>&1"
