"""bf16 mixed precision on the CPU for one fine-tuning job (results/experiments/finetune_budget.md, "bf16"):
ft_variant.py's run with the Trainer's autocast forced to bfloat16 on the CPU (the project's Trainer autocasts only
on CUDA) and the k-NN interpolation's sparse product kept in float32 (MKL has no bf16 sparse CSR product). A
measurement, not a code path of the project. From the project root with data/world made by the pipeline:
    python results/experiments/ft_bf16.py TASK SEED OUT.json {bf16|fp32}
"""
import json, sys, time
from pathlib import Path
import torch
from text4point import params, dag, training
from text4point.finetune.engine import FinetuneJob, run_stage
from text4point.models import pointnet2
task, seed, out, prec = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
autocast = torch.autocast
if prec == "bf16":
    class BF16(autocast):
        def __init__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
            super().__init__(device_type="cpu", dtype=torch.bfloat16, enabled=True)
    training.torch.autocast = BF16  # the Trainer's step is the only user in a fine-tuning job
    interpolate = pointnet2.interpolate
    def interpolate_fp32(x, *args, **kwargs):
        with autocast("cpu", enabled=False):
            return interpolate(x.float(), *args, **kwargs)
    pointnet2.interpolate = interpolate_fp32
cfg = params.validate(params.read_file("params.yaml"))
t = time.perf_counter()
r = run_stage(FinetuneJob(cfg=dag.job_params(cfg, "finetune"), data_root=Path("data/world"), task=task,
                          init="scratch", seed=seed, label_fraction=1.0, track=False, progress=False))
r.pop("confusion", None)
r["prec"] = prec; r["wall"] = time.perf_counter() - t
Path(out).write_text(json.dumps(r))
print(out, prec, r["primary"], round(r["wall"]), r["seconds_train"], r["final_loss"])
