"""Params JSON for a stand-alone `text4point pretrain` run: the default params with pretrain.epochs = argv[1];
optionally pretrain.loss_weights updated from the JSON in argv[2] ('{}' for none), the seed = argv[3], and other
pretrain keys updated from the JSON in argv[4] (e.g. '{"width": 64}'). Run from the project root; prints the JSON.
See results/experiments/dense_teacher.md ("A longer schedule") and student_gap.md."""
import json, sys
from text4point import params, dag
cfg = params.read_file("params.yaml")
cfg["pretrain"]["epochs"] = int(sys.argv[1])
if len(sys.argv) > 2:
    cfg["pretrain"].setdefault("loss_weights", {}).update(json.loads(sys.argv[2]))
if len(sys.argv) > 3:
    cfg["seed"] = int(sys.argv[3])
if len(sys.argv) > 4:
    cfg["pretrain"].update(json.loads(sys.argv[4]))
print(json.dumps(dag.job_params(params.validate(cfg), "pretrain"), sort_keys=True))
