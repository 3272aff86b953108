rule data:
    input:
        code=code("data"),
    output:
        dataset=DATASET,
        metrics="results/metrics/data.json",
        scene_stats="results/metrics/data_scenes.csv",
    params:
        cfg=rule_params("data"),
        root=dirname_of("output", "dataset"),
    conda:
        "../envs/text4point.yaml"
    log:
        "logs/data.log",
    benchmark:
        "results/benchmarks/stages/data.tsv"
    threads: config["data"][SOURCE]["workers"] if "workers" in config["data"][SOURCE] else 1
    shell:
        "text4point data --params-json {params.cfg:q} --out {params.root} "
        "--metrics {output.metrics} --scene-stats {output.scene_stats} --quiet > {log} 2>&1"


if PRETRAIN_SOURCE != SOURCE:

    rule pretrain_data:
        input:
            code=code("pretrain_data"),
        output:
            dataset=PRETRAIN_DATASET,
            metrics="results/metrics/data_pretrain.json",
            scene_stats="results/metrics/data_pretrain_scenes.csv",
        params:
            cfg=rule_params("pretrain_data"),
            root=dirname_of("output", "dataset"),
            source=PRETRAIN_SOURCE,
        conda:
            "../envs/text4point.yaml"
        log:
            "logs/data_pretrain.log",
        benchmark:
            "results/benchmarks/stages/data_pretrain.tsv"
        threads: config["data"][PRETRAIN_SOURCE]["workers"] if "workers" in config["data"][PRETRAIN_SOURCE] else 1
        shell:
            "text4point data --params-json {params.cfg:q} --source {params.source} --out {params.root} "
            "--metrics {output.metrics} --scene-stats {output.scene_stats} --quiet > {log} 2>&1"


rule show:
    input:
        data=DATASET,
        code=code("show"),
    output:
        directory("results/figures/data"),
    params:
        scenes=config["show"]["scenes"],
        root=dirname_of("input", "data"),
    conda:
        "../envs/text4point.yaml"
    log:
        "logs/show.log",
    benchmark:
        "results/benchmarks/stages/show.tsv"
    shell:
        "text4point show --data {params.root} --out-dir {output} --scenes {params.scenes} > {log} 2>&1"
