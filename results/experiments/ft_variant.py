"""Quick fine-tuning run outside the pipeline (results/experiments/finetune_budget.md): scratch, 100 % of the train
scenes, one task and training seed, params.yaml with dotted-key overrides from JSON; MLflow off. Run from the
project root with data/world made by the pipeline:
    python results/experiments/ft_variant.py TASK SEED JSON OUT.json
"""
import json, sys, time
from pathlib import Path
from text4point import params, dag
from text4point.finetune.engine import FinetuneJob, run_stage
task, seed, over, out = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
cfg = params.read_file("params.yaml")
for k, v in over.items():
    *ps, leaf = k.split("."); d = cfg
    for p in ps: d = d.setdefault(p, {})
    d[leaf] = v
cfg = params.validate(cfg)
jp = dag.job_params(cfg, "finetune")
t = time.perf_counter()
r = run_stage(FinetuneJob(cfg=jp, data_root=Path("data/world"), task=task, init="scratch", seed=seed,
                          label_fraction=1.0, track=False, progress=False))
r.pop("confusion", None)
r["over"] = over; r["wall"] = time.perf_counter() - t
Path(out).write_text(json.dumps(r))
print(out, r["primary"], round(r["wall"]), r["final_loss"])
