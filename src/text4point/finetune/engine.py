"""The ``finetune`` stage: one job per task × initialisation × seed × label fraction.

``run_stage`` voxelizes the dataset's scenes (:mod:`.data`), builds the network (:mod:`.model`) from scratch
or from a ``pretrain`` checkpoint, trains it on the (fraction of the) ``train`` scenes with AdamW and a cosine
schedule (``finetune.*``), then scores every point of every ``val`` scene with the task's official metric
(:mod:`text4point.metrics`):

- ``semseg``: mIoU over the label set's classes (ignore label excluded), overall and mean class accuracy;
- ``insseg``: ScanNet's instance AP (0.5:0.95), AP50, AP25 over the thing classes;
- ``det``: VoteNet's mAP at 3D IoU 0.25 and 0.5 over the thing classes, axis-aligned boxes.

The job is seeded by its training seed (network initialisation, data order, augmentation); the scenes of the
data-efficient regime come from the data seed (``seed`` in params). CPU runs use one intra-op thread (as the
other stages do). One MLflow run per job, tagged with task, init, seed and label fraction, with the training
loss curve, the final metrics and (semseg) the confusion matrix as an artifact. Returns the metrics dict that the
CLI writes as the job's ``metrics.json``; ``predictions`` (per val scene, per point) are written beside it
when ``predictions_path`` is given, for the figures.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import params as P
from .. import faults, tracking
from ..correspondences import cpu_threads
from ..errors import InputError
from ..fsutil import atomic_path
from ..metrics import confusion_matrix, detection_ap, instance_ap, semantic_metrics
from ..pretrain.engine import cosine_schedule, load_checkpoint
from ..runtime import seed_everything
from ..scene import Dataset
from .data import TrainScenes, centred, collate, label_fraction_scenes, load_scene
from .model import INITS, TASKS, build

PRIMARY = {"semseg": "miou", "insseg": "ap50", "det": "map25"}


def _load_init(path: Path) -> dict:
    ck = load_checkpoint(path)
    if not isinstance(ck, dict) or "model" not in ck or "meta" not in ck:
        raise InputError(f"{path}: expected a pretrain stage checkpoint with 'model' and 'meta'")
    return ck


def _prompt(cfg: dict, device, clip_checkpoint: Path | None, meta: dict, init_path: Path, label_set):
    from ..clip.load import load_clip, same_weights
    from ..clip.prompt import PromptLearner

    handle = load_clip(cfg["clip"], device, clip_checkpoint)
    made = meta.get("clip_identity") or {}
    if not same_weights(made, handle.identity):
        raise InputError(f"checkpoint {init_path} was pre-trained with CLIP {made.get('model')} (sha256 "
                         f"{str(made.get('weights_sha256'))[:12]}), but params give {handle.name} (sha256 "
                         f"{str(handle.identity['weights_sha256'])[:12]})")
    return PromptLearner(handle.model, handle.tokenizer, label_set.classes,
                         int(cfg["finetune"]["prompt_context"]))


@torch.no_grad()
def evaluate(model, task: str, clouds, label_set, ft: dict, device) -> tuple[dict, dict]:
    """(metrics, per-scene point predictions) of ``model`` on ``clouds`` (every voxel, scored on the points)."""
    model.eval()
    k = len(label_set.classes)
    things = list(label_set.thing_ids)
    conf = np.zeros((k, k), np.int64)
    inst_preds, inst_gts, det_preds, det_gts, predictions = [], [], [], [], {}
    for cloud in clouds:
        view = centred(cloud)
        batch = collate([view]).to(device)
        out = model(batch.x, batch.pos, batch.batch)
        if task == "semseg":
            pred_vox = out["head"].argmax(1).cpu().numpy()
            pred = pred_vox[cloud.point_voxel]
            conf += confusion_matrix(pred, cloud.point_semantic, k)
            predictions[cloud.scene_id] = {"semantic": pred.astype(np.uint8)}
        elif task == "insseg":
            o = out["head"]
            props = model.head.predict(batch.pos, batch.batch, o.sem_logits, o.offsets, things,
                                       radius=float(ft["insseg"]["radius"]),
                                       min_points=int(ft["insseg"]["min_points"]), num_clouds=1)[0]
            masks, inst_map = [], np.zeros(len(cloud.point_voxel), np.int32)
            for j, vox in enumerate(props["masks"]):
                in_vox = np.zeros(len(cloud.pos), bool)
                in_vox[np.asarray(vox, np.int64)] = True
                m = in_vox[cloud.point_voxel]
                masks.append(m)
                inst_map[m & (inst_map == 0)] = j + 1
            inst_preds.append({"masks": masks, "classes": props["classes"], "scores": props["scores"]})
            inst_gts.append({"semantic": cloud.point_semantic, "instance": cloud.point_instance})
            predictions[cloud.scene_id] = {"instance": inst_map,
                                           "instance_classes": np.asarray(props["classes"], np.int64)}
        else:
            got = model.head.predict(out["det"], iou_threshold=float(ft["det"]["nms_iou"]), num_clouds=1)[0]
            boxes = np.asarray(got["boxes"], np.float64).reshape(-1, 6).copy()
            boxes[:, :3] += view["centre"]
            det_preds.append({"boxes": boxes, "classes": got["classes"], "scores": got["scores"]})
            det_gts.append({"boxes": cloud.boxes, "classes": cloud.box_classes})
            predictions[cloud.scene_id] = {"boxes": boxes, "box_classes": np.asarray(got["classes"], np.int64),
                                           "box_scores": np.asarray(got["scores"], np.float64)}
    names = list(label_set.classes)
    if task == "semseg":
        m = semantic_metrics(conf, names)
        metrics = {"miou": m["miou"], "accuracy": m["accuracy"], "mean_class_accuracy": m["mean_class_accuracy"],
                   "per_class": m["iou"], "confusion": conf.tolist()}
    elif task == "insseg":
        m = instance_ap(inst_preds, inst_gts, things, [names[c] for c in things])
        metrics = {"ap": m["ap"], "ap50": m["ap50"], "ap25": m["ap25"],
                   "per_class": {c: v["ap50"] for c, v in m["classes"].items()}}
    else:
        m = detection_ap(det_preds, det_gts, (0.25, 0.5), class_names=[names[c] for c in things], class_ids=things)
        metrics = {"map25": m["map"]["0.25"], "map50": m["map"]["0.5"], "per_class": m["ap"]["0.25"]}
    for key in ("miou", "ap", "ap50", "ap25", "map25", "map50"):  # no evaluable class: report 0, as ScanNet would
        if key in metrics and metrics[key] is None:
            metrics[key] = 0.0
    return metrics, predictions


def run_stage(cfg: dict, data_root: Path, task: str, init: str, seed: int, label_fraction: float,
              init_checkpoint: Path | None = None, clip_checkpoint: Path | None = None, device=None,
              progress: bool = True, predictions_path: Path | None = None, track: bool = True) -> dict:
    """Fine-tune and evaluate one job; returns its metrics (see the module docstring)."""
    from ..runtime import device as default_device

    if task not in TASKS:
        raise InputError(f"finetune.tasks: expected one of {list(TASKS)}, got {task!r}")
    if init not in INITS:
        raise InputError(f"finetune.inits: expected one of {list(INITS)}, got {init!r}")
    if (init == "scratch") != (init_checkpoint is None):
        raise InputError(f"finetune init {init}: " + ("scratch takes no checkpoint" if init == "scratch"
                                                      else "needs its pre-training checkpoint"))
    dev = torch.device(device) if device is not None else default_device()
    with cpu_threads(dev, 1):
        return _run(cfg, Path(data_root), task, init, int(seed), float(label_fraction),
                    Path(init_checkpoint) if init_checkpoint else None,
                    Path(clip_checkpoint) if clip_checkpoint else None, dev, progress, predictions_path, track)


def _run(cfg, data_root, task, init, seed, fraction, init_path, clip_checkpoint, dev, progress,
         predictions_path, track) -> dict:
    from tqdm import tqdm

    t0 = time.perf_counter()
    ft = cfg["finetune"]
    ds = Dataset(data_root)
    label_set = ds.label_set
    voxel = float(cfg["correspondences"]["voxel_size"])
    train_ids = label_fraction_scenes(ds.split("train", nonempty=True), fraction, int(cfg["seed"]))
    val_ids = ds.split("val", nonempty=True)
    train_clouds = [load_scene(ds, s, voxel) for s in train_ids]
    val_clouds = [load_scene(ds, s, voxel) for s in val_ids]

    ck = _load_init(init_path) if init_path is not None else None
    prompt = _prompt(cfg, dev, clip_checkpoint, ck["meta"], init_path, label_set) if init == "text4point" else None
    seed_everything(seed)
    model = build(cfg, task, init, len(label_set.classes), ck, prompt, str(init_path or "")).to(dev)
    del ck
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(ft["lr"]), weight_decay=float(ft["weight_decay"]))
    bs = int(ft["batch_size"])
    steps_per_pass = math.ceil(len(train_clouds) / bs)
    total = int(ft["steps"])
    scheduler = cosine_schedule(optimizer, total)
    data = TrainScenes(train_clouds, int(ft["max_points"]), seed)

    logged = {"seed": cfg["seed"], "finetune": ft, "pretrain": cfg["pretrain"], "clip": cfg["clip"],
              "correspondences": {"voxel_size": voxel}, "task": task, "init": init, "train_seed": seed,
              "label_fraction": fraction}
    phash = P.params_hash(logged)
    tags = {"task": task, "init": init, "seed": seed, "label_fraction": fraction, "params_hash": phash,
            "dataset": ds.meta.get("source", "?")}
    run_ctx = (tracking.run("finetune", logged, tags=tags,
                            experiment_prefix=cfg.get("tracking", {}).get("experiment_prefix", "text4point"),
                            run_name=f"{task}-{init}-seed{seed}-frac{fraction}") if track else contextlib.nullcontext())
    history = []
    with run_ctx as active:
        gen = np.random.default_rng([seed, 3])
        history_steps: list[int] = []
        model.train()
        log_every = max(1, total // 20)
        sums: dict[str, float] = {}
        bar = tqdm(range(total), desc=f"finetune {task}/{init} seed {seed} frac {fraction}", disable=not progress,
                   leave=False)
        for step in bar:
            # Passes over the (fraction of the) train scenes in a fresh order each; the step budget is the same
            # for every label fraction (CSC's data-efficient protocol keeps the schedule, not the epochs).
            epoch, i = divmod(step, steps_per_pass)
            if i == 0:
                order = gen.permutation(len(data))
            items = [data[(epoch, int(j))] for j in order[i * bs:(i + 1) * bs]]
            batch = collate(items).to(dev)
            out = model(batch.x, batch.pos, batch.batch)
            terms = model.losses(out, batch)
            loss = terms["loss"]
            if not torch.isfinite(loss):
                desc = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
                raise InputError(f"finetune {task}/{init} seed {seed}: non-finite loss at step {step + 1}: {desc}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if float(ft["grad_clip"]) > 0:
                nn.utils.clip_grad_norm_(params, float(ft["grad_clip"]))
            optimizer.step()
            scheduler.step()
            faults.point("finetune.step", step=step + 1, task=task, init=init)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if (step + 1) % log_every == 0 or step + 1 == total:
                n = (step % log_every) + 1
                row = {k: v / n for k, v in sums.items()}
                sums = {}
                history.append(row)
                history_steps.append(step + 1)
                if track:
                    import mlflow

                    mlflow.log_metrics({f"train_{k}": v for k, v in row.items()}, step=step + 1)
        t_train = time.perf_counter() - t0
        metrics, predictions = evaluate(model, task, val_clouds, label_set, ft, dev)
        result = {"task": task, "init": init, "seed": seed, "label_fraction": fraction,
                  "dataset": label_set.name, "split": "val", "val_scenes": len(val_ids),
                  "train_scenes": len(train_ids), "train_scene_ids": train_ids, "steps": total,
                  "passes": round(total / steps_per_pass, 2),
                  "primary_metric": PRIMARY[task], "primary": metrics[PRIMARY[task]],
                  **{k: v for k, v in metrics.items() if k not in ("confusion",)},
                  "final_loss": history[-1]["loss"] if history else None,
                  "loss_history": [round(r["loss"], 5) for r in history], "loss_steps": history_steps, "params_hash": phash,
                  "mlflow_run_id": active.info.run_id if track else None,
                  "seconds_train": round(t_train, 2), "seconds": round(time.perf_counter() - t0, 2)}
        if track:
            import mlflow

            mlflow.log_metrics({k: float(v) for k, v in result.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None})
            if "confusion" in metrics:
                mlflow.log_dict({"classes": list(label_set.classes), "confusion": metrics["confusion"]},
                                "confusion_matrix.json")
            mlflow.log_dict({k: v for k, v in result.items()}, "metrics.json")
    if "confusion" in metrics:
        result["confusion"] = metrics["confusion"]
    if predictions_path is not None:
        flat = {f"{sid}/{k}": v for sid, d in predictions.items() for k, v in d.items()}
        with atomic_path(Path(predictions_path)) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **flat)
    return result


__all__ = ["PRIMARY", "evaluate", "run_stage"]
