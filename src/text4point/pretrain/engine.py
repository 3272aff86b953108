"""The ``pretrain`` stage: one job per variant (``text4point``, ``image_contrast``, ``pointcontrast``).

``run_stage`` trains :class:`~text4point.pretrain.model.Text4PointModel` on the ``train`` split's frames with
the project's training loop (:mod:`text4point.training`), checkpointing every epoch, then evaluates zero-shot
segmentation on ``val`` (:mod:`.zeroshot`) next to the same network randomly initialised.

- Optimiser: AdamW or SGD (``pretrain.optimizer``, ``lr``, ``weight_decay``, ``momentum``), cosine learning-rate
  decay to 0 over all steps, gradient clipping (``grad_clip``; 0 disables), AMP only on CUDA when ``amp``.
- Checkpoints: ``<checkpoint_dir>/epoch_NNNN.pt`` after every epoch (atomic): the trainer's state (model,
  optimiser, scaler, epoch, global step, every RNG state), the resolved params, the git commit, the backbone and
  the CLIP identity. A job resumes from the newest one; items are drawn from ``(seed, epoch, index)`` alone
  (:mod:`.data`), so a resumed run ends with the same weights as an uninterrupted one (exactly on CPU).
  A checkpoint of another backbone, CLIP, variant or other training params is refused in one line; only
  ``epochs`` (and ``workers``) may change, which continues the cosine schedule of the new length from the
  checkpoint's step (no longer identical to an uninterrupted run of that length).
- Non-finite loss: :class:`~text4point.training.TrainingDiverged`, one line naming the step and the values; the
  epoch checkpoints on disk are the last good state (the current epoch's is never written).
- CPU: training runs with one intra-op thread (:func:`text4point.runtime.cpu_threads`): with more, torch's
  parallel kernels made a resumed run differ from an uninterrupted one in the last bits.
- Data parallel: under ``torchrun`` (``WORLD_SIZE > 1``) the job joins the process group (gloo on CPU, NCCL on
  CUDA), shards the items with a distributed sampler, wraps the model in DDP; rank 0 alone writes checkpoints
  and MLflow, and the ranks' final weight hashes are gathered into the metrics.
- MLflow (rank 0): one run per job tagged with variant, backbone and CLIP identity; per-step ``loss``, the
  variant's terms and ``lr``; per-epoch means; the final checkpoint's metadata JSON as an artifact.

The final ``out_checkpoint`` (written atomically) holds ``{"model": state_dict, "meta": {...}}``, the metadata
also being the MLflow artifact: format, variant, backbone config, CLIP identity, label set, epochs, steps,
params and their hash, git commit, sha256 of the weights.

``log_every`` and ``zeroshot_eval`` are fields of :class:`PretrainJob`, not params.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import params as P
from .. import tracking
from ..checkpoints import latest_checkpoint, load_checkpoint, save, weights_sha256
from ..clip.cache import load_features
from ..errors import InputError
from ..fsutil import sha256_file
from ..models import backbone_from_params
from ..names import IMAGE_VARIANTS, VARIANTS
from ..point_features import num_channels
from ..runtime import cpu_threads, resolve_device, seed_everything
from ..scene import Dataset
from ..training import Dist, Hook, Trainer, TrainJob, make_loader, make_optimizer, warmup_cosine
from . import zeroshot
from .data import build_dataset, collate_for
from .model import Text4PointModel

FORMAT = "text4point-pretrain-v1"
EPOCH_FORMAT = "text4point-pretrain-epoch-v1"
# params that do not change what is trained: resuming with another value is fine
RESUME_FREE = ("workers", "variants", "epochs")


# ---------------------------------------------------------------- small helpers


def _describe_clip(identity: dict | None) -> str:
    if not identity:
        return "none"
    sha = str(identity.get("weights_sha256", "?"))[:12]
    return f"{identity.get('model')} ({identity.get('pretrained')}, sha256 {sha})"


def _describe_backbone(b: dict) -> str:
    return f"{b.get('name')} (width {b.get('width')})"




def clip_identity(cfg: dict, features_dir: Path | None, clip_checkpoint: Path | None) -> dict | None:
    """The CLIP identity the params ask for: the checkpoint's sha256 (bootstrap or a checkpoint path), else the
    features cache's own identity when its model name is the configured one (an open_clip pretrained tag:
    the weights are not on this machine to hash)."""
    c = cfg["clip"]
    name, pretrained = str(c["model"]), str(c["pretrained"])
    path = None
    if clip_checkpoint is not None:
        path = Path(clip_checkpoint)
    elif pretrained != "bootstrap" and Path(pretrained).expanduser().is_file():
        path = Path(pretrained).expanduser()
    if path is not None:
        if not path.is_file():
            raise InputError(f"{path}: CLIP checkpoint not found")
        return {"model": name, "pretrained": pretrained, "weights_sha256": sha256_file(path)}
    if features_dir is None:
        return None
    manifest = Path(features_dir) / "manifest.json"
    try:
        got = json.loads(manifest.read_text()).get("identity") or {}
    except FileNotFoundError:
        raise InputError(f"{manifest}: file not found (run the clip_features stage)") from None
    if pretrained == "bootstrap":
        raise InputError("clip.pretrained: 'bootstrap' needs the bootstrap CLIP checkpoint (--clip-checkpoint) "
                         "to check the features cache against")
    if got.get("model") != name or got.get("pretrained") != pretrained:
        raise InputError(f"{manifest}: CLIP features were made with {_describe_clip(got)}, but params ask for "
                         f"{name} ({pretrained}) (rerun the clip_features stage)")
    return got












def check_compatible(path: Path, ck: dict, variant: str, backbone: dict, identity: dict | None,
                     train_params: dict) -> None:
    """One-line ``InputError`` when checkpoint ``ck`` (at ``path``) cannot continue this job."""
    from ..clip.load import same_weights

    cb, ci = ck.get("backbone") or {}, ck.get("clip_identity")
    same_backbone = cb.get("name") == backbone["name"] and cb.get("width") == backbone["width"]
    same_clip = (ci is None and identity is None) or (ci is not None and identity is not None
                                                      and same_weights(ci, identity))
    same_clip = same_clip or variant not in IMAGE_VARIANTS  # pointcontrast never sees CLIP
    if not (same_backbone and same_clip):
        raise InputError(f"checkpoint {path} was made with backbone {_describe_backbone(cb)} / CLIP "
                         f"{_describe_clip(ci)}, but params ask for backbone {_describe_backbone(backbone)} / CLIP "
                         f"{_describe_clip(identity)}")
    if ck.get("variant") != variant:
        raise InputError(f"checkpoint {path} was made by pre-training variant {ck.get('variant')}, but this job is "
                         f"{variant}")
    old = ck.get("train_params") or {}
    changed = sorted(k for k in set(old) | set(train_params) if old.get(k) != train_params.get(k))
    if changed:
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {train_params.get(k)!r}" for k in changed[:4])
        raise InputError(f"checkpoint {path} was made with other training params ({diff}); remove "
                         f"{path.parent} to start over")


# ---------------------------------------------------------------- building blocks


def build_model(cfg: dict, variant: str, clip_dim: int | None, text: torch.Tensor | None) -> Text4PointModel:
    """The variant's model, initialised from ``cfg["seed"]`` (so the random baseline is this very init)."""
    pc = cfg["pretrain"]
    seed_everything(int(cfg["seed"]))
    return Text4PointModel(backbone_from_params(pc), int(clip_dim or 0), text, variant, pc)


# ---------------------------------------------------------------- the stage


@dataclass
class PretrainJob:
    """One pre-training job: the resolved params, the inputs and outputs, and the knobs not in params.yaml.

    ``features_dir`` is the ``clip_features`` output (needed by ``text4point`` / ``image_contrast`` and by the
    zero-shot baseline; may be None for ``pointcontrast``); ``checkpoint_dir`` holds the epoch checkpoints
    (default ``out_checkpoint.parent / "epochs"``); ``clip_checkpoint`` is the bootstrap CLIP, hashed to check
    the features cache's identity; ``log_every`` is the steps between host transfers of the losses."""

    cfg: dict
    data_root: Path
    corr_dir: Path
    features_dir: Path | None
    variant: str
    out_checkpoint: Path
    checkpoint_dir: Path | None = None
    clip_checkpoint: Path | None = None
    log_every: int = 10
    zeroshot_eval: bool = True
    track: bool = True
    progress: bool = True

    def __post_init__(self):
        for name in ("data_root", "corr_dir", "features_dir", "out_checkpoint", "checkpoint_dir", "clip_checkpoint"):
            v = getattr(self, name)
            setattr(self, name, Path(v) if v is not None else None)
        if self.checkpoint_dir is None:
            self.checkpoint_dir = self.out_checkpoint.parent / "epochs"
        self.log_every = max(int(self.log_every), 1)


def run_stage(job: PretrainJob, device=None) -> dict:
    """Pre-train ``job.variant`` and return the stage's metrics (see the module docstring)."""
    if job.variant not in VARIANTS:
        raise InputError(f"pretrain.variants: expected one of {list(VARIANTS)}, got {job.variant!r}")
    t_start = time.perf_counter()
    dist = Dist(resolve_device(device))
    try:
        with cpu_threads(dist.device, 1):
            return _run(job, dist, t_start)
    finally:
        dist.close()


class _EpochCheckpoints(Hook):
    """Writes ``epoch_NNNN.pt`` (rank 0) after every epoch: the trainer's state and the job's identity."""

    def __init__(self, directory: Path, identity: dict):
        self.directory, self.identity = directory, identity

    def after_epoch(self, trainer: Trainer, row: dict) -> None:
        if trainer.dist.main:
            state = {"format": EPOCH_FORMAT, **trainer.state_dict(), **self.identity}
            save(state, self.directory / f"epoch_{trainer.epoch:04d}.pt")
        trainer.dist.barrier()


def _run(job: PretrainJob, dist: Dist, t_start: float) -> dict:
    cfg, variant = job.cfg, job.variant
    pc, seed, dev = cfg["pretrain"], int(cfg["seed"]), dist.device
    ds = Dataset(job.data_root)
    label_set = ds.label_set.name
    if variant in IMAGE_VARIANTS and job.features_dir is None:
        raise InputError(f"pretrain variant {variant}: needs the clip_features output (none was given)")
    identity = clip_identity(cfg, job.features_dir, job.clip_checkpoint) if job.features_dir is not None else None
    features = load_features(job.features_dir, identity) if job.features_dir is not None else None
    text, clip_dim = None, None
    if features is not None:
        entry = features.text().get(label_set)
        if entry is None:
            raise InputError(f"{job.features_dir}: text embeddings have no label set {label_set!r} (the dataset's)")
        text = torch.as_tensor(entry["prompt_embeddings"]).float()
        clip_dim = int(text.shape[1])

    dataset = build_dataset(variant, job.corr_dir, job.data_root, features, ds.split("train", nonempty=True), pc,
                            seed)
    loader, sampler, generator = make_loader(dataset, collate_for(variant), int(pc["batch_size"]), int(pc["workers"]),
                                             seed, dev, dist.rank, dist.world)
    steps_per_epoch = len(loader)
    epochs = int(pc["epochs"])

    model = build_model(cfg, variant, clip_dim, text if variant == "text4point" else None).to(dev)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], pc["optimizer"], pc["lr"],
                               pc["weight_decay"], pc["momentum"])
    backbone = {"name": pc["backbone"], "width": int(pc["width"]), "bottleneck_dim": int(pc["bottleneck_dim"]),
                "out_dim": int(pc["out_dim"]), "in_channels": num_channels(pc["channels"]),
                "channels": list(pc["channels"])}
    train_params = {"seed": seed, **{k: v for k, v in pc.items() if k not in RESUME_FREE}}
    logged_params = {k: cfg[k] for k in ("seed", "clip", "correspondences", "pretrain") if k in cfg}
    logged_params = {**logged_params, "variant": variant}
    phash = P.params_hash(logged_params)
    commit = tracking.git_commit()

    ddp_model = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_model = DDP(model, device_ids=[dist.local_rank] if dev.type == "cuda" else None)

    def batches(epoch: int):
        sampler.set_epoch(epoch)
        for batch in loader:
            yield batch.to(dev, non_blocking=True)

    points_seen = matches_seen = 0

    def forward(batch):
        nonlocal points_seen, matches_seen
        points_seen += batch.num_points
        matches_seen += sum(batch.m_counts)
        return ddp_model(batch)

    identity_meta = {"params": logged_params, "train_params": train_params, "params_hash": phash,
                     "git_commit": commit, "backbone": backbone, "clip_identity": identity, "variant": variant}
    train_job = TrainJob(name=f"pretrain {variant}", stage="pretrain", steps=epochs * steps_per_epoch,
                         steps_per_epoch=steps_per_epoch, schedule=warmup_cosine(pc["lr"], epochs * steps_per_epoch),
                         grad_clip=float(pc["grad_clip"]), amp=bool(pc["amp"]), log_every=job.log_every,
                         progress=job.progress, tags={"variant": variant})
    trainer = Trainer(train_job, model, optimizer, forward, batches, dev, dist,
                      hooks=[_EpochCheckpoints(job.checkpoint_dir, identity_meta)], generator=generator)
    resumed_from, run_id = None, None
    last = latest_checkpoint(job.checkpoint_dir)
    if last is not None:
        ck = load_checkpoint(last)
        check_compatible(last, ck, variant, backbone, identity, train_params)
        trainer.load_state_dict(ck, last)
        resumed_from, run_id = str(last), ck.get("mlflow_run_id")
        del ck

    tags = {"backbone": pc["backbone"], "clip_identity": _describe_clip(identity), "world_size": dist.world}
    if resumed_from:
        tags["resumed_from"] = resumed_from
    track = job.track and dist.main
    with tracking.run("pretrain", logged_params, tags=tags, experiment_prefix=cfg["tracking"]["experiment_prefix"],
                      run_name=f"pretrain-{variant}", enabled=track, run_id=run_id,
                      key={"variant": variant, "params_hash": phash}) as active:
        identity_meta["mlflow_run_id"] = active.info.run_id if active is not None else None
        if dist.main:
            job.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        t_train = time.perf_counter()
        ddp_model.train()
        trainer.fit()
        t_train = time.perf_counter() - t_train

        sd = model.state_dict()
        sha = weights_sha256(sd)
        rank_shas = dist.gather(sha)
        meta = {"format": FORMAT, "variant": variant, "backbone": backbone, "clip_identity": identity,
                "clip_dim": clip_dim, "label_set": label_set, "epochs": epochs, "global_step": trainer.global_step,
                "params": logged_params, "params_hash": phash, "git_commit": commit, "weights_sha256": sha}
        metrics: dict = {"variant": variant, "backbone": pc["backbone"], "width": int(pc["width"]),
                         "epochs": epochs, "steps": trainer.global_step, "steps_per_epoch": steps_per_epoch,
                         "items": len(dataset), "items_skipped": dict(dataset.skipped), "world_size": dist.world,
                         "resumed_from": resumed_from, "weights_sha256": sha, "rank_weights_sha256": rank_shas,
                         "ranks_identical": len(set(rank_shas)) == 1, "params_hash": phash,
                         "per_epoch": trainer.epochs}
        if trainer.epochs:
            metrics.update({f"final_{k}": v for k, v in trainer.epochs[-1].items() if k not in ("epoch", "seconds")})
            metrics["seconds_train"] = round(t_train, 2)
            metrics["points_seen"] = int(points_seen * dist.world)
            metrics["matches_seen"] = int(matches_seen * dist.world)
            metrics["points_per_second"] = round(points_seen * dist.world / t_train, 1) if t_train > 0 else 0.0
        if dist.main:
            save({"model": sd, "meta": meta}, job.out_checkpoint)
            if job.zeroshot_eval and text is not None:
                metrics.update(_zeroshot(cfg, variant, model, clip_dim, text, job.data_root, job.corr_dir, ds, dev,
                                         features))
            elif job.zeroshot_eval:
                metrics["zeroshot_note"] = "no CLIP features given: zero-shot evaluation skipped"
            metrics["seconds"] = round(time.perf_counter() - t_start, 2)
            tracking.log_dict(meta, "checkpoint_meta.json")
            tracking.log_metrics(metrics)
        dist.barrier()
    return metrics


def _zeroshot(cfg, variant, model, clip_dim, text, data_root, corr_dir, ds, dev, features=None) -> dict:
    from ..corrfiles import load_manifest

    voxel = float(load_manifest(corr_dir)["params"]["voxel_size"])
    val = ds.split("val")
    classes = list(ds.label_set.classes)
    channels = tuple(cfg["pretrain"]["channels"])
    # the random network: same seed, same architecture; pointcontrast has no CLIP-space head, so its random
    # baseline is the image_contrast architecture, whose backbone is initialised first from the same seed
    random_variant = variant if variant in IMAGE_VARIANTS else "image_contrast"
    rand = build_model(cfg, random_variant, clip_dim, text if random_variant == "text4point" else None).to(dev)
    out = {}
    r = zeroshot.evaluate(rand, data_root, val, text, voxel, dev, channels, classes)
    out.update({"zeroshot_miou_random": r["miou"], "zeroshot_accuracy_random": r["accuracy"],
                "zeroshot_iou_random": r["iou"], "zeroshot_miou_majority_constant": r["miou_majority_constant"],
                "zeroshot_accuracy_majority_constant": r["accuracy_majority_constant"]})
    del rand
    # the 2D teacher's own zero-shot labelling of the points it sees (the ceiling), and the network on those points
    tol = float(cfg["correspondences"]["depth_tolerance"])
    ceiling = None
    if variant in IMAGE_VARIANTS:
        t = zeroshot.evaluate(model, data_root, val, text, voxel, dev, channels, classes,
                              teacher=(features, tol) if features is not None else None)
        out.update({"zeroshot_miou": t["miou"], "zeroshot_accuracy": t["accuracy"], "zeroshot_iou": t["iou"],
                    "zeroshot_classes_evaluated": t["classes_evaluated"], "zeroshot_points": t["points"]})
        if features is not None:
            ceiling = t["teacher"]
            out.update({"zeroshot_miou_covered": t["covered"]["miou"],
                        "zeroshot_accuracy_covered": t["covered"]["accuracy"],
                        "zeroshot_teacher_agreement": t["agreement"]})
    else:
        out["zeroshot_note"] = ("pointcontrast trains no CLIP-space head: only the random network's zero-shot "
                                "mIoU is reported")
        if features is not None:
            ceiling = zeroshot.teacher_ceiling(data_root, features, val, text, tol, classes)
    if ceiling is not None:
        out.update({"zeroshot_miou_teacher": ceiling["miou"], "zeroshot_accuracy_teacher": ceiling["accuracy"],
                    "zeroshot_teacher_coverage": ceiling["coverage"]})
    out["zeroshot_scenes"] = len(val)
    return out


__all__ = ["FORMAT", "PretrainJob", "build_model", "check_compatible", "clip_identity", "run_stage"]
