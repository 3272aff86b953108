"""Test-time augmentation for semseg (results/experiments/finetune_budget.md, "Test-time voting"): a default scratch
job at 100 % (params.yaml, MLflow off), then its val scenes scored again with the mean softmax over 2 (flip), 4
(quarter rotations) and 8 (both) views of every voxel, each view transformed as a training view is (positions and
input channels). From the project root with data/world made by the pipeline:
    python results/experiments/semseg_tta.py SEED OUT.json
"""
import json, sys, time
from pathlib import Path
import numpy as np, torch
from text4point import params, dag, tasks
from text4point.finetune import engine
from text4point.finetune.data import centred, collate
seed = int(sys.argv[1]); out_path = sys.argv[2]
res = {}
def evaluate(model, task, clouds, label_set, ft, device):
    model.eval()
    base, preds = _evaluate(model, task, clouds, label_set, ft, device)
    res["votes1"] = base["miou"]
    for nv, views in [(4, [(q, False) for q in range(4)]), (8, [(q, f) for q in range(4) for f in (False, True)]), (2, [(0, False), (0, True)])]:
        scorer = tasks.get(task).scorer(label_set, ft)
        t = time.perf_counter()
        with torch.no_grad():
            for cloud in clouds:
                v0 = centred(cloud)
                acc = None
                for q, f in views:
                    c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][q]
                    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float64)
                    if f:
                        R = np.diag([-1.0, 1.0, 1.0]) @ R
                    v = dict(v0, pos=(v0["pos"].astype(np.float64) @ R.T).astype(np.float32), x=cloud.features(None, R))
                    b = collate([v]).to(device)
                    o = model(b.x, b.pos, b.batch)
                    p = torch.softmax(o["head"], 1)
                    acc = p if acc is None else acc + p
                scorer.add(cloud, v0, {"head": acc}, model.head, None)
        res[f"votes{nv}"] = scorer.result()["miou"]; res[f"sec{nv}"] = time.perf_counter() - t
    return base, preds
_evaluate = engine.evaluate
engine.evaluate = evaluate
cfg = params.validate(params.read_file("params.yaml"))
r = engine.run_stage(engine.FinetuneJob(cfg=dag.job_params(cfg, "finetune"), data_root=Path("data/world"), task="semseg",
                     init="scratch", seed=seed, label_fraction=1.0, track=False, progress=False))
res["primary"] = r["primary"]
Path(out_path).write_text(json.dumps(res)); print(seed, res)
