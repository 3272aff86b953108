"""The ``pretrain`` stage: one job per variant (``text4point``, ``image_contrast``, ``pointcontrast``).

``run_stage`` trains :class:`~text4point.pretrain.model.Text4PointModel` on the ``train`` split's frames,
checkpointing every epoch, then evaluates zero-shot segmentation on ``val`` (:mod:`.zeroshot`) next to the
same network randomly initialised.

- Optimiser: AdamW or SGD (``pretrain.optimizer``, ``lr``, ``weight_decay``, ``momentum``), cosine learning-rate
  decay to 0 over all steps (updated every step), gradient clipping (``grad_clip``; 0 disables), AMP
  (``torch.autocast`` + ``GradScaler``) only on CUDA when ``amp``.
- Checkpoints: ``<checkpoint_dir>/epoch_NNNN.pt`` after every epoch (atomic), holding the model, optimiser,
  scheduler and scaler states, epoch, global step, every RNG state (python, numpy, torch CPU, CUDA, the
  DataLoader generator) as tensors/plain types, the resolved params, the git commit, the backbone and the CLIP
  identity. A job resumes from the newest one; items are drawn from ``(seed, epoch, index)`` alone
  (:mod:`.data`), so a resumed run ends with the same weights as an uninterrupted one (exactly on CPU).
  A checkpoint of another backbone, CLIP, variant or other training params is refused in one line; only
  ``epochs`` (and ``workers``) may change, which continues the cosine schedule of the new length from the
  checkpoint's step (no longer identical to an uninterrupted run of that length).
- Non-finite loss: the step's losses stay on the device; every ``log_every`` steps (and at the end of each
  epoch) they are copied to the host in one transfer, logged per step, and checked. A non-finite value
  stops the job with one line naming the step and the loss values; the epoch checkpoints on disk are the
  last good state (the current epoch's is never written).
- CPU: training runs with one intra-op thread (as the correspondences stage does). With two threads on a
  shared 2-core machine, torch's parallel kernels gave results that differed in the last bits between an
  uninterrupted and a resumed run (so no exact resume) and ran up to ~100x slower when a core was taken
  by another job; parallelism on CPU comes from the DataLoader workers and from torchrun processes.
- Data parallel: under ``torchrun`` (``WORLD_SIZE > 1``) the job joins the process group (gloo on CPU,
  NCCL on CUDA), shards the items with a distributed sampler, wraps the model in DDP; rank 0 alone writes
  checkpoints and MLflow, and the ranks' final weight hashes are gathered into the metrics.
- MLflow (rank 0): one run per job (``tracking.run("pretrain", ...)``) tagged with variant, backbone and CLIP
  identity; per-step ``loss``, the variant's terms and ``lr``; per-epoch means; the final checkpoint's
  metadata JSON as an artifact.

The final ``out_checkpoint`` (written atomically) holds ``{"model": state_dict, "meta": {...}}``, the metadata
also being the MLflow artifact: format, variant, backbone config, CLIP identity, label set, epochs, steps,
params and their hash, git commit, sha256 of the weights.

Not every knob is in ``params.yaml`` yet: ``cross_frame`` (matches of overlapping frames' images, default
off), ``log_every`` and ``zeroshot`` are keyword arguments of :func:`run_stage`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .. import params as P
from .. import faults, tracking
from ..clip.features import load_features
from ..correspondences import cpu_threads
from ..errors import InputError
from ..fsutil import atomic_path, sha256_file
from ..models import build_backbone
from ..scene import Dataset
from . import zeroshot
from .data import IMAGE_VARIANTS, VARIANTS, build_dataset, make_loader
from .model import Text4PointModel, loss_names

FORMAT = "text4point-pretrain-v1"
EPOCH_FORMAT = "text4point-pretrain-epoch-v1"
EPOCH_FILE = re.compile(r"^epoch_(\d{4,})\.pt$")
# params that do not change what is trained: resuming with another value is fine
RESUME_FREE = ("workers", "variants", "epochs")


class TrainingDiverged(InputError):
    """A non-finite loss stopped training (one line: the step and the loss values)."""


# ---------------------------------------------------------------- small helpers


def _describe_clip(identity: dict | None) -> str:
    if not identity:
        return "none"
    sha = str(identity.get("weights_sha256", "?"))[:12]
    return f"{identity.get('model')} ({identity.get('pretrained')}, sha256 {sha})"


def _describe_backbone(b: dict) -> str:
    return f"{b.get('name')} (width {b.get('width')})"


def weights_sha256(state_dict: dict) -> str:
    """sha256 over the state dict's tensors (names, dtypes, shapes, bytes) in key order."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        t = state_dict[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


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


def _rng_state(generator: torch.Generator | None) -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, pstate, pgauss = random.getstate()
    state = {
        "python": {"version": int(version), "state": torch.tensor(pstate, dtype=torch.int64),
                   "gauss": None if pgauss is None else float(pgauss)},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": generator.get_state() if generator is not None else None,
    }
    return state


def _set_rng_state(state: dict, generator: torch.Generator | None) -> None:
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and state.get("loader") is not None:
        generator.set_state(state["loader"])


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The epoch checkpoint with the highest epoch number in ``checkpoint_dir`` (None if there is none)."""
    if not Path(checkpoint_dir).is_dir():
        return None
    found = [(int(m.group(1)), p) for p in Path(checkpoint_dir).iterdir() if (m := EPOCH_FILE.match(p.name))]
    return max(found)[1] if found else None


def load_checkpoint(path: Path) -> dict:
    """``torch.load`` of a checkpoint on the CPU (weights only); a missing or unreadable file is one line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: checkpoint not found") from None
    except Exception as e:  # noqa: BLE001 - truncated/corrupt/unpicklable files
        raise InputError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
                         ) from None


def load_weights(module: nn.Module, state: dict, path: Path | str, strict: bool = True) -> None:
    """``module.load_state_dict(state)``; tensors that do not fit are one line naming the first bad key."""
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as e:  # torch lists every mismatch, one per line, under a header line
        lines = [s.strip() for s in str(e).splitlines() if s.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(e).__name__)
        raise InputError(f"checkpoint {path}: does not fit this model ({detail[:240]})") from None


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


# ---------------------------------------------------------------- distributed


class _Dist:
    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank, self.local_rank, self.owns_group = 0, 0, False
        self.device = device
        if self.world > 1:
            import torch.distributed as dist

            self.rank = int(os.environ.get("RANK", "0"))
            self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
            if device.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
                self.owns_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            t = t.clone()
            dist.all_reduce(t)
            t /= self.world
        return t

    def sync_buffers(self, model: nn.Module) -> None:
        """Average the floating-point buffers (BatchNorm running statistics) over the ranks: each rank updated
        them with its own batches, and DDP only broadcasts rank 0's at the next forward."""
        if self.world > 1:
            import torch.distributed as dist

            for buf in model.buffers():
                if buf.is_floating_point():
                    dist.all_reduce(buf)
                    buf /= self.world

    def gather(self, obj) -> list:
        if self.world <= 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


# ---------------------------------------------------------------- building blocks


def build_model(cfg: dict, variant: str, clip_dim: int | None, text: torch.Tensor | None) -> Text4PointModel:
    """The variant's model, initialised from ``cfg["seed"]`` (so the random baseline is this very init)."""
    from ..runtime import seed_everything

    pc = cfg["pretrain"]
    seed_everything(int(cfg["seed"]))
    backbone = build_backbone(pc["backbone"], in_channels=3, width=int(pc["width"]),
                              bottleneck_dim=int(pc["bottleneck_dim"]), out_dim=int(pc["out_dim"]))
    return Text4PointModel(backbone, int(clip_dim or 0), text, variant, pc)


def build_optimizer(model: nn.Module, pc: dict) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if pc["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=float(pc["lr"]), momentum=float(pc["momentum"]),
                               weight_decay=float(pc["weight_decay"]))
    return torch.optim.AdamW(params, lr=float(pc["lr"]), weight_decay=float(pc["weight_decay"]))


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    total = max(int(total_steps), 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total)))


def _log_batch(rows: list[tuple[str, float, int]]) -> None:
    import mlflow
    from mlflow.entities import Metric

    run = mlflow.active_run()
    if run is None or not rows:
        return
    now = int(time.time() * 1000)
    client = mlflow.tracking.MlflowClient()
    metrics = [Metric(k, float(v), now, int(s)) for k, v, s in rows]
    for i in range(0, len(metrics), 900):
        client.log_batch(run.info.run_id, metrics=metrics[i:i + 900])


# ---------------------------------------------------------------- the stage


def run_stage(cfg: dict, data_root: Path, corr_dir: Path, features_dir: Path | None, variant: str,
              out_checkpoint: Path, device=None, progress: bool = True, checkpoint_dir: Path | None = None,
              clip_checkpoint: Path | None = None, *, cross_frame: bool = False, log_every: int = 10,
              zeroshot_eval: bool = True, track: bool = True) -> dict:
    """Pre-train ``variant`` and return the stage's metrics (see the module docstring).

    Args:
        cfg: the full resolved params (``seed``, ``clip``, ``correspondences``, ``pretrain``, ``tracking``).
        data_root: dataset root; its ``train`` split trains, its ``val`` split is evaluated zero-shot.
        corr_dir: the ``correspondences`` stage's output.
        features_dir: the ``clip_features`` stage's output (needed by ``text4point``/``image_contrast``, and
            by the zero-shot baseline of ``pointcontrast``; may be None for ``pointcontrast``).
        variant: ``text4point`` | ``image_contrast`` | ``pointcontrast``.
        out_checkpoint: the final weights + metadata (written atomically).
        device: torch device (default: :func:`text4point.runtime.device`).
        checkpoint_dir: epoch checkpoints (default ``out_checkpoint.parent / "epochs"``).
        clip_checkpoint: the bootstrap CLIP checkpoint, hashed to check the features cache's identity.
        cross_frame: also use matches of overlapping frames' images with a frame's points.
        log_every: steps between host transfers of the losses (logging and the non-finite check).
        zeroshot_eval: run the zero-shot evaluation at the end.
        track: record the job in MLflow.
    """
    from ..runtime import device as default_device

    if variant not in VARIANTS:
        raise InputError(f"pretrain.variants: expected one of {list(VARIANTS)}, got {variant!r}")
    t_start = time.perf_counter()
    pc = cfg["pretrain"]
    seed = int(cfg["seed"])
    dist = _Dist(torch.device(device) if device is not None else default_device())
    try:
        with cpu_threads(dist.device, 1):
            return _run(cfg, pc, seed, dist, Path(data_root), Path(corr_dir),
                        Path(features_dir) if features_dir is not None else None, variant, Path(out_checkpoint),
                        progress, Path(checkpoint_dir) if checkpoint_dir is not None else None,
                        Path(clip_checkpoint) if clip_checkpoint is not None else None, cross_frame,
                        max(int(log_every), 1), zeroshot_eval, track, t_start)
    finally:
        dist.close()


def _run(cfg, pc, seed, dist, data_root, corr_dir, features_dir, variant, out_checkpoint, progress,
         checkpoint_dir, clip_checkpoint, cross_frame, log_every, zeroshot_eval, track, t_start) -> dict:
    dev = dist.device
    ds = Dataset(data_root)
    label_set = ds.label_set.name
    needs_clip = variant in IMAGE_VARIANTS
    if needs_clip and features_dir is None:
        raise InputError(f"pretrain variant {variant}: needs the clip_features output (none was given)")
    identity = clip_identity(cfg, features_dir, clip_checkpoint) if features_dir is not None else None
    features = load_features(features_dir, identity) if features_dir is not None else None
    text, clip_dim = None, None
    if features is not None:
        entry = features.text().get(label_set)
        if entry is None:
            raise InputError(f"{features_dir}: text embeddings have no label set {label_set!r} (the dataset's)")
        text = torch.as_tensor(entry["prompt_embeddings"]).float()
        clip_dim = int(text.shape[1])

    dataset = build_dataset(variant, corr_dir, data_root, features, ds.split("train", nonempty=True), pc, seed,
                            cross_frame=cross_frame)
    workers = int(pc["workers"])
    loader, sampler, generator = make_loader(dataset, int(pc["batch_size"]), workers, seed, dev, dist.rank,
                                             dist.world)
    steps_per_epoch = len(loader)
    epochs = int(pc["epochs"])
    total_steps = epochs * steps_per_epoch

    model = build_model(cfg, variant, clip_dim, text if variant == "text4point" else None).to(dev)
    optimizer = build_optimizer(model, pc)
    scheduler = cosine_schedule(optimizer, total_steps)
    use_amp = bool(pc["amp"]) and dev.type == "cuda"
    scaler = torch.amp.GradScaler(dev.type, enabled=use_amp)

    backbone = {"name": pc["backbone"], "width": int(pc["width"]), "bottleneck_dim": int(pc["bottleneck_dim"]),
                "out_dim": int(pc["out_dim"]), "in_channels": 3}
    train_params = {"seed": seed, "cross_frame": bool(cross_frame),
                    **{k: v for k, v in pc.items() if k not in RESUME_FREE}}
    logged_params = {k: cfg[k] for k in ("seed", "clip", "correspondences", "pretrain") if k in cfg}
    logged_params = {**logged_params, "variant": variant, "cross_frame": bool(cross_frame)}
    phash = P.params_hash(logged_params)
    commit = tracking.git_commit()

    ckdir = checkpoint_dir or (out_checkpoint.parent / "epochs")
    start_epoch, global_step, resumed_from = 0, 0, None
    last = latest_checkpoint(ckdir)
    if last is not None:
        ck = load_checkpoint(last)
        check_compatible(last, ck, variant, backbone, identity, train_params)
        load_weights(model, ck["model"], last)
        try:
            optimizer.load_state_dict(ck["optimizer"])
            scheduler.load_state_dict(ck["scheduler"])
            scaler.load_state_dict(ck["scaler"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise InputError(f"checkpoint {last}: does not fit this model ({str(e).splitlines()[0][:200]})") from None
        start_epoch, global_step = int(ck["epoch"]), int(ck["global_step"])
        _set_rng_state(ck["rng"], generator)
        resumed_from = str(last)
        del ck
    epoch_states = []

    ddp_model = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_model = DDP(model, device_ids=[dist.local_rank] if dev.type == "cuda" else None)

    names = loss_names(variant)
    tags = {"variant": variant, "backbone": pc["backbone"], "clip_identity": _describe_clip(identity),
            "params_hash": phash, "world_size": dist.world}
    if resumed_from:
        tags["resumed_from"] = resumed_from
    run_ctx = (tracking.run("pretrain", logged_params, tags=tags,
                            experiment_prefix=cfg.get("tracking", {}).get("experiment_prefix", "text4point"),
                            run_name=f"pretrain-{variant}")
               if (track and dist.main) else contextlib.nullcontext())

    points_seen = 0
    t_train = 0.0
    with run_ctx:
        if dist.main:
            ckdir.mkdir(parents=True, exist_ok=True)
        ddp_model.train()
        for epoch in range(start_epoch, epochs):
            sampler.set_epoch(epoch)
            t_epoch = time.perf_counter()
            sums = torch.zeros(1 + len(names), device=dev)
            buf: list[tuple[torch.Tensor, float, int]] = []
            bar = tqdm(loader, desc=f"pretrain {variant} epoch {epoch + 1}/{epochs}", unit="batch",
                       disable=not (progress and dist.main), leave=False)
            for i, batch in enumerate(bar):
                batch = batch.to(dev, non_blocking=True)
                points_seen += batch.num_points
                with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=use_amp):
                    losses = ddp_model(batch)
                lr = float(optimizer.param_groups[0]["lr"])
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(losses["loss"]).backward()
                if float(pc["grad_clip"]) > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), float(pc["grad_clip"]))
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                global_step += 1
                faults.point("pretrain.step", epoch=epoch + 1, step=i + 1, variant=variant)
                vals = torch.stack([losses["loss"].detach().float()] + [losses[n].float() for n in names])
                sums += vals
                buf.append((vals, lr, global_step))
                if len(buf) >= log_every or i == steps_per_epoch - 1:
                    _flush(buf, names, dist, epoch, variant, track)
                    buf = []
            bar.close()
            if buf:
                _flush(buf, names, dist, epoch, variant, track)
            dist.sync_buffers(model)
            means = (dist.mean(sums) / max(steps_per_epoch, 1)).cpu().tolist()
            seconds = time.perf_counter() - t_epoch
            t_train += seconds
            epoch_row = {"epoch": epoch + 1, "loss": means[0], **dict(zip(names, means[1:])), "seconds": seconds}
            epoch_states.append(epoch_row)
            if dist.main:
                if track:
                    _log_batch([(f"epoch_{k}", v, epoch + 1) for k, v in epoch_row.items() if k != "epoch"])
                state = {"format": EPOCH_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1,
                         "global_step": global_step, "rng": _rng_state(generator), "params": logged_params,
                         "train_params": train_params, "params_hash": phash, "git_commit": commit,
                         "backbone": backbone, "clip_identity": identity, "variant": variant}
                with atomic_path(ckdir / f"epoch_{epoch + 1:04d}.pt") as tmp:
                    torch.save(state, tmp)
                del state
            dist.barrier()

        sd = model.state_dict()
        sha = weights_sha256(sd)
        rank_shas = dist.gather(sha)
        meta = {"format": FORMAT, "variant": variant, "backbone": backbone, "clip_identity": identity,
                "clip_dim": clip_dim, "label_set": label_set, "epochs": epochs, "global_step": global_step,
                "params": logged_params, "params_hash": phash, "git_commit": commit, "weights_sha256": sha}
        metrics: dict = {"variant": variant, "backbone": pc["backbone"], "width": int(pc["width"]),
                         "epochs": epochs, "steps": global_step, "steps_per_epoch": steps_per_epoch,
                         "items": len(dataset), "items_skipped": dict(dataset.skipped), "world_size": dist.world,
                         "resumed_from": resumed_from, "weights_sha256": sha, "rank_weights_sha256": rank_shas,
                         "ranks_identical": len(set(rank_shas)) == 1, "params_hash": phash,
                         "per_epoch": epoch_states}
        if epoch_states:
            last_row = epoch_states[-1]
            metrics.update({f"final_{k}": v for k, v in last_row.items() if k not in ("epoch", "seconds")})
            metrics["seconds_train"] = round(t_train, 2)
            metrics["points_seen"] = int(points_seen * dist.world)
            metrics["points_per_second"] = round(points_seen * dist.world / t_train, 1) if t_train > 0 else 0.0
        if dist.main:
            with atomic_path(out_checkpoint) as tmp:
                torch.save({"model": sd, "meta": meta}, tmp)
            if zeroshot_eval and text is not None:
                metrics.update(_zeroshot(cfg, variant, model, clip_dim, text, data_root, corr_dir, ds, dev, features))
            elif zeroshot_eval:
                metrics["zeroshot_note"] = "no CLIP features given: zero-shot evaluation skipped"
            metrics["seconds"] = round(time.perf_counter() - t_start, 2)
            if track:
                import mlflow

                mlflow.log_dict(meta, "checkpoint_meta.json")
                mlflow.log_metrics({k: float(v) for k, v in metrics.items()
                                    if isinstance(v, (int, float)) and not isinstance(v, bool)})
        dist.barrier()
    return metrics


def _flush(buf, names, dist, epoch, variant, track) -> None:
    """Copy the buffered step losses to the host (one transfer), check them and log them per step."""
    vals = dist.mean(torch.stack([v for v, _, _ in buf])).cpu()
    bad = ~torch.isfinite(vals).all(1)
    if bool(bad.any()):
        j = int(torch.nonzero(bad)[0])
        step = buf[j][2]
        desc = ", ".join(f"{k}={float(v):.6g}" for k, v in zip(("loss",) + names, vals[j].tolist()))
        raise TrainingDiverged(f"pretrain {variant}: non-finite loss at step {step} (epoch {epoch + 1}): {desc}; "
                               f"stopped, the last good checkpoint is the previous epoch's")
    rows = []
    for (_, lr, step), row in zip(buf, vals.tolist()):
        rows += [(k, v, step) for k, v in zip(("loss",) + names, row)]
        rows.append(("lr", lr, step))
    if dist.main and track:
        _log_batch(rows)


def _zeroshot(cfg, variant, model, clip_dim, text, data_root, corr_dir, ds, dev, features=None) -> dict:
    from ..correspondences import load_manifest

    voxel = float(load_manifest(corr_dir)["params"]["voxel_size"])
    val = ds.split("val")
    classes = list(ds.label_set.classes)
    # the random network: same seed, same architecture; pointcontrast has no CLIP-space head, so its random
    # baseline is the image_contrast architecture, whose backbone is initialised first from the same seed
    random_variant = variant if variant in IMAGE_VARIANTS else "image_contrast"
    rand = build_model(cfg, random_variant, clip_dim, text if random_variant == "text4point" else None).to(dev)
    out = {}
    r = zeroshot.evaluate(rand, data_root, val, text, voxel, dev, classes)
    out.update({"zeroshot_miou_random": r["miou"], "zeroshot_accuracy_random": r["accuracy"],
                "zeroshot_iou_random": r["iou"], "zeroshot_miou_majority_constant": r["miou_majority_constant"],
                "zeroshot_accuracy_majority_constant": r["accuracy_majority_constant"]})
    del rand
    if variant in IMAGE_VARIANTS:
        t = zeroshot.evaluate(model, data_root, val, text, voxel, dev, classes)
        out.update({"zeroshot_miou": t["miou"], "zeroshot_accuracy": t["accuracy"], "zeroshot_iou": t["iou"],
                    "zeroshot_classes_evaluated": t["classes_evaluated"], "zeroshot_points": t["points"]})
    else:
        out["zeroshot_note"] = ("pointcontrast trains no CLIP-space head: only the random network's zero-shot "
                                "mIoU is reported")
    if features is not None:  # the 2D teacher's own zero-shot labelling of the points it sees: the ceiling
        c = zeroshot.teacher_ceiling(data_root, features, val, text, float(cfg["correspondences"]["depth_tolerance"]),
                                     classes)
        out.update({"zeroshot_miou_teacher": c["miou"], "zeroshot_accuracy_teacher": c["accuracy"],
                    "zeroshot_teacher_coverage": c["coverage"]})
    out["zeroshot_scenes"] = len(val)
    return out


__all__ = ["FORMAT", "TrainingDiverged", "build_model", "check_compatible", "clip_identity", "latest_checkpoint",
           "load_checkpoint", "load_weights",
           "run_stage", "weights_sha256"]
