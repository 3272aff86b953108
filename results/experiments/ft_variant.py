"""Quick fine-tuning run outside the pipeline (results/experiments/finetune_budget.md): one task, training seed,
init (scratch unless INIT is given) and label fraction (1.0 unless FRACTION is given), params.yaml with dotted-key
overrides from JSON; MLflow off. Run from the project root with data/world (and, for INIT,
models/pretrain/INIT/checkpoint.pt and models/clip/bootstrap.pt) made by the pipeline:
    python results/experiments/ft_variant.py TASK SEED JSON OUT.json [INIT [FRACTION]]
"""
import json, sys, time
from pathlib import Path
from text4point import params, dag
from text4point.finetune.engine import FinetuneJob, run_stage
task, seed, over, out = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
init = sys.argv[5] if len(sys.argv) > 5 else "scratch"
fraction = float(sys.argv[6]) if len(sys.argv) > 6 else 1.0
ckpt = {} if init == "scratch" else {"init_checkpoint": Path(f"models/pretrain/{init}/checkpoint.pt"),
                                     "clip_checkpoint": Path("models/clip/bootstrap.pt")}
cfg = params.read_file("params.yaml")
for k, v in over.items():
    *ps, leaf = k.split("."); d = cfg
    for p in ps: d = d.setdefault(p, {})
    d[leaf] = v
cfg = params.validate(cfg)
jp = dag.job_params(cfg, "finetune")
t = time.perf_counter()
r = run_stage(FinetuneJob(cfg=jp, data_root=Path("data/world"), task=task, init=init, seed=seed,
                          label_fraction=fraction, track=False, progress=False, **ckpt))
r.pop("confusion", None)
r["over"] = over; r["init"] = init; r["wall"] = time.perf_counter() - t
Path(out).write_text(json.dumps(r))
print(out, r["primary"], round(r["wall"]), r["final_loss"])
