"""Params JSON for `text4point tables`, restricted to the teacher study's jobs: semseg, scratch and text4point,
the teacher variations of configs/teacher.yaml only (so the table can be built without the whole default
pipeline's 102 fine-tuning jobs). Run from the project root; prints the JSON. See README.md beside it."""
import json

import yaml

from text4point import dag, params

cfg = params.read_file("params.yaml")
cfg["variations"] = yaml.safe_load(open("configs/teacher.yaml"))["variations"]
cfg["finetune"]["tasks"] = ["semseg"]
cfg["finetune"]["inits"] = ["scratch", "text4point"]
cfg["pretrain"]["variants"] = ["text4point"]
print(json.dumps(dag.job_params(params.validate(cfg), "tables"), sort_keys=True))
