# Correspondences and frozen CLIP features. Directory outputs are represented by a manifest that the
# stage writes last (see DATASET in common.smk).


rule clip_bootstrap:
    input:
        data=DATASET,
        code=code("clip_bootstrap"),
    output:
        model="models/clip/bootstrap.pt",
        metrics="results/metrics/clip_bootstrap.json",
    params:
        cfg=rule_params("clip_bootstrap"),
        root=dirname_of("input", "data"),
    conda:
        "../envs/text4point.yaml"
    log:
        "logs/clip_bootstrap.log",
    benchmark:
        "results/benchmarks/stages/clip_bootstrap.tsv"
    shell:
        "text4point clip-bootstrap --params-json {params.cfg:q} --data {params.root} "
        "--out {output.model} --metrics {output.metrics} --quiet > {log} 2>&1"


rule correspondences:
    input:
        data=DATASET,
        code=code("correspondences"),
    output:
        manifest=f"{CORR}/manifest.json",
        metrics="results/metrics/correspondences.json",
    params:
        cfg=rule_params("correspondences"),
        root=dirname_of("input", "data"),
        out=dirname_of("output", "manifest"),
    conda:
        "../envs/text4point.yaml"
    log:
        "logs/correspondences.log",
    benchmark:
        "results/benchmarks/stages/correspondences.tsv"
    shell:
        "text4point correspondences --params-json {params.cfg:q} --data {params.root} "
        "--out {params.out} --metrics {output.metrics} --quiet > {log} 2>&1"


rule clip_features:
    input:
        data=DATASET,
        model=clip_model_inputs,
        code=code("clip_features"),
    output:
        manifest=f"{FEATURES}/manifest.json",
        metrics="results/metrics/clip_features.json",
    params:
        cfg=rule_params("clip_features"),
        checkpoint=lambda wildcards, input: f"--clip-checkpoint {input.model[0]}" if input.model else "",
        root=dirname_of("input", "data"),
        out=dirname_of("output", "manifest"),
    conda:
        "../envs/text4point.yaml"
    log:
        "logs/clip_features.log",
    benchmark:
        "results/benchmarks/stages/clip_features.tsv"
    shell:
        "text4point clip-features --params-json {params.cfg:q} --data {params.root} "
        "--out {params.out} --metrics {output.metrics} {params.checkpoint} --quiet > {log} 2>&1"
