# Pre-training variants (issue #4): one job per variant.


rule pretrain:
    input:
        data=DATASET,
        corr=f"{CORR}/manifest.json",
        features=f"{FEATURES}/manifest.json",
    output:
        checkpoint="models/pretrain/{variant}/checkpoint.pt",
        metrics="results/metrics/pretrain/{variant}.json",
    wildcard_constraints:
        variant="|".join(["text4point", "image_contrast", "pointcontrast"]),
    params:
        cfg=sections("seed", "pretrain", "clip", "tracking"),
    conda:
        "../envs/text4point.yaml"
    log:
        "logs/pretrain/{variant}.log",
    benchmark:
        "results/benchmarks/stages/pretrain_{variant}.tsv"
    shell:
        "text4point pretrain --params-json {params.cfg:q} --variant {wildcards.variant} "
        "--out {output.checkpoint} --metrics {output.metrics} > {log} 2>&1"
