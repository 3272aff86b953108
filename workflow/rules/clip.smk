# Correspondences and frozen CLIP features. Directory outputs are represented by a manifest that the
# stage writes last (see DATASET in common.smk). Each rule exists for the default jobs and, under
# variations/<name>/, for the variations that change its jobs (MODES in common.smk).

for mode in MODES:

    rule:
        name:
            "clip_bootstrap" + ("_variation" if mode else "")
        input:
            data=PRETRAIN_DATASET,
            code=code("clip_bootstrap"),
        output:
            model=f"models/{mode}clip/bootstrap.pt",
            metrics=f"results/{mode}metrics/clip_bootstrap.json",
        wildcard_constraints:
            variation=VARIATION_PATTERN,
        params:
            cfg=rule_params("clip_bootstrap"),
            root=dirname_of("input", "data"),
        conda:
            "../envs/text4point.yaml"
        log:
            f"logs/{mode}clip_bootstrap.log",
        benchmark:
            f"results/benchmarks/stages/{mode}clip_bootstrap.tsv"
        shell:
            "text4point clip-bootstrap --params-json {params.cfg:q} --data {params.root} "
            "--out {output.model} --metrics {output.metrics} --quiet > {log} 2>&1"

    rule:
        name:
            "correspondences" + ("_variation" if mode else "")
        input:
            data=PRETRAIN_DATASET,
            code=code("correspondences"),
        output:
            manifest=f"data/{mode}correspondences/manifest.json",
            metrics=f"results/{mode}metrics/correspondences.json",
        wildcard_constraints:
            variation=VARIATION_PATTERN,
        params:
            cfg=rule_params("correspondences"),
            root=dirname_of("input", "data"),
            out=dirname_of("output", "manifest"),
        conda:
            "../envs/text4point.yaml"
        log:
            f"logs/{mode}correspondences.log",
        benchmark:
            f"results/benchmarks/stages/{mode}correspondences.tsv"
        shell:
            "text4point correspondences --params-json {params.cfg:q} --data {params.root} "
            "--out {params.out} --metrics {output.metrics} --quiet > {log} 2>&1"

    rule:
        name:
            "clip_features" + ("_variation" if mode else "")
        input:
            data=PRETRAIN_DATASET,
            model=bootstrap_input,
            code=code("clip_features"),
        output:
            manifest=f"{features_dir(mode)}/manifest.json",
            metrics=f"results/{mode}metrics/clip_features.json",
        wildcard_constraints:
            variation=VARIATION_PATTERN,
        params:
            cfg=rule_params("clip_features"),
            checkpoint=lambda wildcards, input: f"--clip-checkpoint {input.model[0]}" if input.model else "",
            root=dirname_of("input", "data"),
            out=dirname_of("output", "manifest"),
        conda:
            "../envs/text4point.yaml"
        log:
            f"logs/{mode}clip_features.log",
        benchmark:
            f"results/benchmarks/stages/{mode}clip_features.tsv"
        shell:
            "text4point clip-features --params-json {params.cfg:q} --data {params.root} "
            "--out {params.out} --metrics {output.metrics} {params.checkpoint} --quiet > {log} 2>&1"
