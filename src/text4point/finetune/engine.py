"""The ``finetune`` stage: one job per task × initialisation × seed × label fraction.

``run_stage`` voxelizes the dataset's scenes (:mod:`.data`), builds the network (:mod:`.model`) from scratch
or from a ``pretrain`` checkpoint, trains it on the (fraction of the) ``train`` scenes with AdamW and a cosine
schedule (``finetune.*``), then scores every point of every ``val`` scene with the task's official metric (the
task's scorer, :mod:`text4point.tasks`, through :mod:`text4point.metrics`):

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

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import params as P
from .. import tasks, tracking
from ..checkpoints import load_checkpoint
from ..errors import InputError
from ..fsutil import atomic_path
from ..names import INITS, LANGUAGE_INITS, SCRATCH
from ..runtime import cpu_threads, resolve_device, seed_everything
from ..scene import Dataset
from ..tasks._base import class_balance_weights
from ..training import Trainer, TrainJob, make_optimizer, warmup_cosine
from .data import TrainScenes, centred, collate, label_fraction_scenes, load_scene, view_config
from .model import build


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
    scorer = tasks.get(task).scorer(label_set, ft)
    predictions = {}
    for cloud in clouds:
        view = centred(cloud)
        batch = collate([view]).to(device)
        out = model(batch.x, batch.pos, batch.batch)
        predictions[cloud.scene_id] = scorer.add(cloud, view, out, model.head, batch)
    return scorer.result(), predictions


@dataclass
class FinetuneJob:
    """One fine-tuning job: the resolved params, the dataset, the task × initialisation × training seed × label
    fraction, the checkpoints it starts from (``init_checkpoint``: the pre-training checkpoint, every init but
    scratch; ``clip_checkpoint``: the bootstrap CLIP, for the text4point init) and where its predictions go."""

    cfg: dict
    data_root: Path
    task: str
    init: str
    seed: int
    label_fraction: float
    init_checkpoint: Path | None = None
    clip_checkpoint: Path | None = None
    predictions_path: Path | None = None
    track: bool = True
    progress: bool = True

    def __post_init__(self):
        for name in ("data_root", "init_checkpoint", "clip_checkpoint", "predictions_path"):
            v = getattr(self, name)
            setattr(self, name, Path(v) if v else None)
        self.seed, self.label_fraction = int(self.seed), float(self.label_fraction)


def run_stage(job: FinetuneJob, device=None) -> dict:
    """Fine-tune and evaluate one job; returns its metrics (see the module docstring)."""
    tasks.get(job.task)  # an unknown task is a one-line error
    if job.init not in INITS:
        raise InputError(f"finetune.inits: expected one of {list(INITS)}, got {job.init!r}")
    if (job.init == SCRATCH) != (job.init_checkpoint is None):
        raise InputError(f"finetune init {job.init}: " + ("scratch takes no checkpoint" if job.init == SCRATCH
                                                          else "needs its pre-training checkpoint"))
    dev = resolve_device(device)
    with cpu_threads(dev, 1):
        return _run(job, dev)


def loss_subset(n: int, fraction: float, seed: int, step: int, device) -> torch.Tensor | None:
    """The rows of a training batch that are decoded and supervised (``finetune.loss_points``): a seeded random
    ``fraction`` of its ``n`` voxels, sorted; None (all) for 1. The encoder still sees every voxel, so the point
    density is the evaluation's; only the finest decoder level and the head run on fewer points."""
    if fraction >= 1.0:
        return None
    pick = np.random.default_rng([int(seed), int(step), 7]).choice(n, max(1, int(fraction * n)), replace=False)
    return torch.from_numpy(np.sort(pick)).to(device)


def loss_windows(history: list[dict], total: int) -> tuple[list[float], list[int]]:
    """The training loss averaged over windows of ``max(1, total // 20)`` steps (the last one ends at ``total``):
    the curve of ``metrics.json`` (``loss_history`` at ``loss_steps``)."""
    width = max(1, total // 20)
    values, steps, acc = [], [], []
    for row in history:
        acc.append(row["loss"])
        if row["step"] % width == 0 or row["step"] == total:
            values.append(sum(acc) / len(acc))
            steps.append(row["step"])
            acc = []
    return values, steps


def _run(job: FinetuneJob, dev) -> dict:
    t0 = time.perf_counter()
    cfg, task, init, seed, fraction = job.cfg, job.task, job.init, job.seed, job.label_fraction
    ft = cfg["finetune"]
    ds = Dataset(job.data_root)
    label_set = ds.label_set
    voxel = float(cfg["correspondences"]["voxel_size"])
    train_ids = label_fraction_scenes(ds.split("train", nonempty=True), fraction, int(cfg["seed"]))
    val_ids = ds.split("val", nonempty=True)
    channels = tuple(cfg["pretrain"]["channels"])
    train_clouds = [load_scene(ds, s, voxel, channels) for s in train_ids]
    val_clouds = [load_scene(ds, s, voxel, channels) for s in val_ids]

    ck = _load_init(job.init_checkpoint) if job.init_checkpoint is not None else None
    prompt = (_prompt(cfg, dev, job.clip_checkpoint, ck["meta"], job.init_checkpoint, label_set)
              if init in LANGUAGE_INITS else None)
    seed_everything(seed)
    model = build(cfg, task, init, len(label_set.classes), ck, prompt, str(job.init_checkpoint or "")).to(dev)
    del ck
    if float(ft["class_balance"]) > 0 and hasattr(model.head, "class_weights"):
        model.head.class_weights = class_balance_weights(np.concatenate([c.semantic for c in train_clouds]),
                                                         len(label_set.classes), float(ft["class_balance"]))
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], "adamw", ft["lr"],
                               ft["weight_decay"])
    bs = int(ft["batch_size"])
    view = view_config(ft)
    if view.rotation == "free" and not tasks.get(task).free_rotation:
        raise InputError(f"finetune.view.rotation: {task} keeps boxes axis-aligned, expected quarter or none, "
                         f"got free")
    data = TrainScenes(train_clouds, int(ft["max_points"]), seed, view)
    steps_per_pass = -(-len(data) // bs)
    total = int(ft["steps"])
    gen = np.random.default_rng([seed, 3])
    stream: list[int] = []  # the scene of each view: passes over the train scenes, a fresh order each
    loss_points = float(ft["loss_points"])

    def batches(epoch: int):
        # ``batch_size`` views per step from passes over the (fraction of the) train scenes, so a step may hold
        # several views (crops) of one scene when there are fewer scenes than views; view v of scene j is keyed
        # (v, j). The step budget is the same for every label fraction (CSC's data-efficient protocol keeps the
        # schedule, not the epochs). A trainer epoch is ``steps_per_pass`` steps.
        for step in range(epoch * steps_per_pass, (epoch + 1) * steps_per_pass):
            while len(stream) < (step + 1) * bs:
                stream.extend(gen.permutation(len(data)).tolist())
            yield step, collate([data[(v, stream[v])] for v in range(step * bs, (step + 1) * bs)]).to(dev)

    def forward(item) -> dict:
        step, batch = item
        index = loss_subset(batch.num_points, loss_points, seed, step, dev)
        return model.losses(model(batch.x, batch.pos, batch.batch, index), batch)

    logged = {"seed": cfg["seed"], "finetune": ft, "pretrain": cfg["pretrain"], "clip": cfg["clip"],
              "correspondences": {"voxel_size": voxel}, "task": task, "init": init, "train_seed": seed,
              "label_fraction": fraction}
    phash = P.params_hash(logged)
    key = {"task": task, "init": init, "seed": seed, "label_fraction": fraction, "params_hash": phash}
    tags = {"dataset": ds.meta.get("source", "?")}
    train_job = TrainJob(name=f"finetune {task}/{init} seed {seed} frac {fraction}", stage="finetune", steps=total,
                         steps_per_epoch=steps_per_pass, schedule=warmup_cosine(ft["lr"], total),
                         grad_clip=float(ft["grad_clip"]), log_every=max(1, total // 20), progress=job.progress,
                         tags={"task": task, "init": init})
    with tracking.run("finetune", logged, tags=tags, experiment_prefix=cfg["tracking"]["experiment_prefix"],
                      run_name=f"{task}-{init}-seed{seed}-frac{fraction}", enabled=job.track, key=key) as active:
        model.train()
        trainer = Trainer(train_job, model, optimizer, forward, batches, dev).fit()
        t_train = time.perf_counter() - t0
        metrics, predictions = evaluate(model, task, val_clouds, label_set, ft, dev)
        history, history_steps = loss_windows(trainer.history, total)
        primary = tasks.get(task).primary
        result = {"task": task, "init": init, "seed": seed, "label_fraction": fraction,
                  "dataset": label_set.name, "split": "val", "val_scenes": len(val_ids),
                  "train_scenes": len(train_ids), "train_scene_ids": train_ids, "steps": total,
                  "passes": round(total * bs / len(train_ids), 2),
                  "primary_metric": primary, "primary": metrics[primary],
                  **{k: v for k, v in metrics.items() if k not in ("confusion",)},
                  "final_loss": history[-1] if history else None,
                  "loss_history": [round(v, 5) for v in history], "loss_steps": history_steps, "params_hash": phash,
                  "mlflow_run_id": active.info.run_id if active is not None else None,
                  "seconds_train": round(t_train, 2), "seconds": round(time.perf_counter() - t0, 2)}
        tracking.log_metrics(result)
        if "confusion" in metrics:
            tracking.log_dict({"classes": list(label_set.classes), "confusion": metrics["confusion"]},
                              "confusion_matrix.json")
        tracking.log_dict(dict(result), "metrics.json")
    if "confusion" in metrics:
        result["confusion"] = metrics["confusion"]
    if job.predictions_path is not None:
        flat = {f"{sid}/{k}": v for sid, d in predictions.items() for k, v in d.items()}
        with atomic_path(job.predictions_path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **flat)
    return result


__all__ = ["FinetuneJob", "evaluate", "loss_subset", "loss_windows", "run_stage"]
