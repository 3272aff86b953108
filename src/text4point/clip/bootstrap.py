"""The ``clip_bootstrap`` stage: train the small offline open_clip model that stands for CLIP.

Real CLIP learned from web image-caption pairs. Offline, the ``clip`` split of the dataset plays that part:
its scenes are seen by nothing else. The training pairs are its object and surface crops with captions
(:mod:`.crops`); random resized windows, flips and brightness/contrast jitter augment the crops, and classes
are sampled in proportion to the square root of their frequency (walls and floors would otherwise fill half of
every batch).

Training: open_clip's own model (``clip.model``, randomly initialized) and its ``ClipLoss``, AdamW with linear
warm-up and a cosine schedule, seeded, through the project's training loop (:mod:`text4point.training`). Each
step has up to three terms: the crop term (the batch's crops against their captions), the dense term
(``_dense_loss``, LSeg's objective: ``clip.bootstrap.dense_frames`` colour-jittered whole frames, every dense
cell against the text embeddings of all classes) and the region term (``_region_loss``, off by default:
``region_frames`` frames, each instance's dense features pooled over its mask against its caption). With
``dense_head_width`` > 0 the dense features come through a dense head (:mod:`.head`: one cell per 4x4 input
pixels) trained with them. The metrics' ``loss_history`` is the sum of the terms per epoch,
``dense_loss_history`` / ``region_loss_history`` the terms alone. The checkpoint is ``{"state_dict": ...,
"dense_head": ..., ...}``, which ``open_clip.create_model_and_transforms(name, pretrained=<file>)`` loads as it
is (the head is read by ``load.load_clip``).

Evaluation: zero-shot top-1 on crops of the ``val`` split (same crop rule, fixed margins and windows): each
crop's image embedding against the template-averaged text embeddings of *all* classes of the label set.
Reported with chance (1/K), the majority-class baseline and the mean per-class accuracy (the val crops are
dominated by walls and floors). Dense zero-shot pixel accuracy of the val frames (``dense_features`` at every
colour pixel's cell) tells how usable the dense features are.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from open_clip.loss import ClipLoss

from ..checkpoints import save as save_checkpoint
from ..errors import InputError
from ..labels import LabelSet
from ..runtime import seed_everything
from ..scene import Dataset, FrameDefect
from ..training import Hook, Trainer, TrainJob, make_optimizer, warmup_cosine
from .crops import EXTRA_TEMPLATES, caption, collect_crops, color_name
from .dense import (DENSE_SCALE, decode_color, dense_features, dense_forward, dense_input_size, grid_geometry,
                    pixel_to_cell, template_mean, text_embeddings)
from .head import HEAD_KEY, DenseHead
from .load import ClipHandle, build_model, check_model_name, normalize_images, wrap_model

STORE_SCALE = 4 / 3  # train crops are stored this much larger than the model input (random windows per step)
AUG_SCALE = (0.55, 1.0)  # area fraction of a stored crop in a training window
AUG_JITTER = 0.15  # brightness and contrast factors within 1 +- this


DENSE_HUE = 0.5  # dense term: hue shifted by up to +- this (of a full turn), saturation scaled by 1 +- DENSE_SATURATION
DENSE_SATURATION = 0.5
DENSE_GRAY = 0.2  # and this fraction of the frames made grey (the dense captions name no colour)
DENSE_EVAL_EVERY = 3  # dense evaluation on every k-th val frame
BALANCE_POWER = 0.5  # class-balanced sampling: a crop of a class with n crops is drawn with weight n^-power


# ---------------------------------------------------------------- training


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's split: no weight decay on gains, biases, norms and the logit scale."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _augment(batch: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """uint8 ``[B, S, S, 3]`` stored crops -> float ``[B, 3, size, size]`` in [0, 1]: a random resized window
    (``AUG_SCALE`` of the area, aspect 3/4..4/3, bilinear ``grid_sample``), random horizontal flips and a
    little brightness and contrast jitter (no hue change: captions name colours)."""
    b = batch.shape[0]
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    u = torch.rand(b, 7, generator=gen)
    area = AUG_SCALE[0] + (AUG_SCALE[1] - AUG_SCALE[0]) * u[:, 0]  # fraction of the stored crop
    ratio = torch.exp(math.log(3 / 4) + math.log(16 / 9) * u[:, 1])
    sx = torch.sqrt(area * ratio).clamp(max=1.0)  # window half-extents in normalized [-1, 1] coordinates
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    cx, cy = (1 - sx) * (2 * u[:, 2] - 1), (1 - sy) * (2 * u[:, 3] - 1)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = sy, cy
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    bright = (1 + AUG_JITTER * (2 * u[:, 5] - 1)).view(b, 1, 1, 1)
    contrast = (1 + AUG_JITTER * (2 * u[:, 6] - 1)).view(b, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean * bright).clamp_(0, 1)


def _region_loss(model, handle_like, frame_images, regions, region_frame, regions_of, picked, label_set, classes,
                 names, templates, rng, tokens, loss_fn, device) -> torch.Tensor:
    """The region term: the CLIP loss between captions of the instances of the ``picked`` whole frames and
    their dense features averaged over each instance's cells (weighted by the mask's coverage of a cell).

    A global image-caption loss alone trains the mean of the patch features, not each patch: the frozen
    dense read-out (``features.dense_features``, what pre-training distils) stayed near chance per pixel.
    Pooling the dense map over a region and captioning it (RegionCLIP's idea: a region of a photo is paired
    with its own text) makes each cell carry its own content. Frames are flipped horizontally at random.
    """
    idx = np.concatenate([regions_of[f] for f in picked])
    rows = {int(f): i for i, f in enumerate(picked)}
    owner = torch.as_tensor([rows[int(f)] for f in region_frame[idx]])  # row in x of each region's frame
    x = frame_images[torch.as_tensor(picked)].permute(0, 3, 1, 2).float().div_(255.0)
    flip = torch.from_numpy(rng.random(len(picked)) < 0.5)
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    w = regions[torch.as_tensor(idx)]
    w = torch.where(flip[owner].view(-1, 1, 1), w.flip(-1), w).to(device)
    x = normalize_images(x.to(device), handle_like["mean"], handle_like["std"])
    dense = dense_forward(model, handle_like["kind"], x, handle_like.get("head"))  # [F, gh, gw, d]
    pooled = torch.einsum("rhw,rhwd->rd", w, dense[owner.to(device)]) / w.sum(dim=(1, 2)).clamp_min(1e-6)[:, None]
    texts = [caption(rng, label_set.classes[classes[i]], names[i], templates) for i in idx]
    txt_f = model.encode_text(tokens(texts).to(device), normalize=True)
    return loss_fn(F.normalize(pooled, dim=-1), txt_f, model.logit_scale.exp())


def _colour_jitter(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """The dense term's colour augmentation of frames ``[F, 3, h, w]`` in [0, 1]: a random hue shift and
    saturation scale per frame (``DENSE_HUE``, ``DENSE_SATURATION``; torchvision's), brightness and contrast
    jitter as for crops (``AUG_JITTER``) and ``DENSE_GRAY`` of the frames made grey. A room's palette is drawn
    per scene, so colour says little about a class on unseen scenes: on the default world this raised the
    dense val mIoU from 0.23 to 0.25 at 500 steps (results/experiments/dense_teacher.md)."""
    n = x.shape[0]
    u = torch.from_numpy(rng.random((n, 5))).float()
    out = []
    for i in range(n):
        y = TF.adjust_hue(x[i], float(DENSE_HUE * (2 * u[i, 0] - 1)))
        out.append(TF.adjust_saturation(y, float(1 + DENSE_SATURATION * (2 * u[i, 1] - 1))))
    x = torch.stack(out)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * (1 + AUG_JITTER * (2 * u[:, 2] - 1)).view(n, 1, 1, 1)
         + mean * (1 + AUG_JITTER * (2 * u[:, 3] - 1)).view(n, 1, 1, 1)).clamp_(0, 1)
    gray = (u[:, 4] < DENSE_GRAY).view(n, 1, 1, 1)
    return torch.where(gray, x.mean(dim=1, keepdim=True).expand_as(x), x)


def _dense_loss(model, handle_like, frame_images, cells, picked, class_weights, label_set, templates, rng, tokens,
                device) -> torch.Tensor:
    """The dense term (LSeg's objective, Li et al. 2022): every dense cell of the ``picked`` whole frames is
    classified against the text embeddings of captions of *all* the label set's classes (one random caption
    per class and step: templates and synonyms, no colour words), cross-entropy against the cell's class
    make-up (``cells``: the fraction of its pixels of each class), with CLIP's learnt temperature. Classes are
    weighted by ``class_weights`` (inverse square root of their pixel frequency, mean 1). Frames are flipped
    horizontally at random. Each cell's feature becomes its own pixels' class in the joint space, which is
    what the frozen read-out gives pre-training."""
    sel = torch.as_tensor(picked)
    x = _colour_jitter(frame_images[sel].permute(0, 3, 1, 2).float().div_(255.0), rng)
    target = cells[sel].float()  # [F, gh, gw, K]
    flip = torch.from_numpy(rng.random(len(picked)) < 0.5)
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    target = torch.where(flip.view(-1, 1, 1, 1), target.flip(2), target).to(device)
    x = normalize_images(x.to(device), handle_like["mean"], handle_like["std"])
    dense = F.normalize(dense_forward(model, handle_like["kind"], x, handle_like.get("head")), dim=-1)
    texts = [caption(rng, c, None, templates) for c in label_set.classes]
    txt = model.encode_text(tokens(texts).to(device), normalize=True)  # [K, d]
    logp = F.log_softmax(model.logit_scale.exp() * dense @ txt.T, dim=-1)
    target = target * class_weights.to(device)
    return -(target * logp).sum() / target.sum().clamp_min(1e-6)


class _ClampLogitScale(Hook):
    """CLIP's clamp of the learnt temperature after every step: ``log τ⁻¹ ∈ [0, log 100]``."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def after_step(self, trainer: Trainer) -> None:
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))


def train(model: torch.nn.Module, handle_like: dict, data: dict, label_set: LabelSet, templates: tuple[str, ...],
          bcfg: dict, seed: int, device, progress: bool = False) -> dict:
    """Contrastive training of ``model`` on crop-caption pairs (and the region term) with the project's
    training loop; returns the loss history."""
    size = handle_like["size"]
    mean, std = handle_like["mean"], handle_like["std"]
    tokenizer = handle_like["tokenizer"]
    crops = torch.from_numpy(data["crops"])
    classes, colours = data["classes"], data["colours"]
    names = [color_name(c) for c in colours]
    n = len(crops)
    bs = min(int(bcfg["batch_size"]), n)
    if n < 2:
        raise InputError(f"clip.bootstrap: the clip split gave {n} crop(s); at least 2 are needed to train "
                         f"(lower min_crop_pixels or add clip scenes)")
    steps_per_epoch = max(1, n // bs)
    epochs = int(bcfg["epochs"])
    total = steps_per_epoch * epochs
    warmup = max(1, min(steps_per_epoch, total // 10))
    head = handle_like.get("head")
    trained = model if head is None else torch.nn.ModuleDict({"clip": model, "head": head})
    opt = make_optimizer(_param_groups(trained, float(bcfg["weight_decay"])), "adamw", bcfg["lr"],
                         bcfg["weight_decay"], betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    rng = np.random.default_rng([seed, 7])
    gen = torch.Generator().manual_seed(seed)
    token_cache: dict[str, torch.Tensor] = {}

    def tokens(texts: list[str]) -> torch.Tensor:
        todo = [t for t in dict.fromkeys(texts) if t not in token_cache]
        if todo:
            for t, row in zip(todo, tokenizer(todo)):
                token_cache[t] = row
        return torch.stack([token_cache[t] for t in texts])

    region_frames, dense_frames = int(bcfg["region_frames"]), int(bcfg["dense_frames"])
    frame_images = data.get("frame_images")
    have_frames = frame_images is not None and len(frame_images) > 0
    use_regions = region_frames > 0 and have_frames
    use_dense = dense_frames > 0 and have_frames
    if have_frames:
        frame_images = torch.from_numpy(frame_images)
    if use_dense:
        cells = torch.from_numpy(data["cells"])
        pixels = cells.float().sum(dim=(0, 1, 2))
        class_weights = torch.where(pixels > 0, pixels.clamp_min(1e-6) ** -BALANCE_POWER, torch.zeros(()))
        class_weights = class_weights / (class_weights * pixels).sum() * pixels.sum()  # pixel-weighted mean 1
        dense_rows = np.nonzero(cells.float().sum(dim=(1, 2, 3)).numpy() > 0)[0]
        use_dense = len(dense_rows) > 0
    if use_regions:
        regions = torch.from_numpy(data["regions"].astype(np.float32))
        region_frame = data["region_frame"]
        regions_of = [np.nonzero(region_frame == f)[0] for f in range(len(frame_images))]
        with_regions = np.array([f for f, r in enumerate(regions_of) if len(r)], np.int64)
        use_regions = len(with_regions) > 0

    counts = np.bincount(classes, minlength=len(label_set.classes)).astype(np.float64)
    weights = counts[classes] ** -BALANCE_POWER
    weights /= weights.sum()

    def batches(epoch: int):
        order = rng.choice(n, size=n, replace=True, p=weights) if BALANCE_POWER else rng.permutation(n)
        for k in range(steps_per_epoch):
            yield order[k * bs:(k + 1) * bs]

    def forward(idx) -> dict:
        x = normalize_images(_augment(crops[idx], size, gen).to(device), mean, std)
        texts = [caption(rng, label_set.classes[classes[i]], names[i], templates) for i in idx]
        t = tokens(texts).to(device)
        img_f = model.encode_image(x, normalize=True)
        txt_f = model.encode_text(t, normalize=True)
        loss = loss_fn(img_f, txt_f, model.logit_scale.exp())
        out = {"loss": loss, "crop": loss}
        if use_regions:
            fr = rng.choice(with_regions, size=min(region_frames, len(with_regions)), replace=False)
            out["region"] = _region_loss(model, handle_like, frame_images, regions, region_frame, regions_of, fr,
                                         label_set, classes, names, templates, rng, tokens, loss_fn, device)
            out["loss"] = out["loss"] + out["region"]
        if use_dense:
            fr = rng.choice(dense_rows, size=min(dense_frames, len(dense_rows)), replace=False)
            out["dense"] = _dense_loss(model, handle_like, frame_images, cells, fr, class_weights, label_set,
                                       templates, rng, tokens, device)
            out["loss"] = out["loss"] + float(bcfg["dense_weight"]) * out["dense"]
        return out

    job = TrainJob(name="clip bootstrap", stage="clip_bootstrap", steps=total, steps_per_epoch=steps_per_epoch,
                   schedule=warmup_cosine(bcfg["lr"], total, warmup), log_every=steps_per_epoch, progress=progress)
    trained.train()
    trainer = Trainer(job, trained, opt, forward, batches, device, hooks=[_ClampLogitScale(model)]).fit()
    trained.eval()
    history = [row["loss"] for row in trainer.epochs]
    region_history = [row["region"] for row in trainer.epochs if "region" in row]
    dense_history = [row["dense"] for row in trainer.epochs if "dense" in row]
    return {"loss_history": [round(v, 4) for v in history], "steps": total, "batch_size": bs,
            "region_loss_history": [round(v, 4) for v in region_history],
            "dense_loss_history": [round(v, 4) for v in dense_history],
            "train_templates": len(templates), "logit_scale": round(model.logit_scale.detach().exp().item(), 3)}


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def zero_shot(handle: ClipHandle, data: dict, label_set: LabelSet, templates, batch_size: int = 256) -> dict:
    """Zero-shot top-1 of crops against the template-averaged text embeddings of all classes."""
    k = len(label_set.classes)
    classifier = template_mean(text_embeddings(handle, label_set.classes, templates))  # [K, d]
    crops, classes = data["crops"], data["classes"]
    preds = []
    for i in range(0, len(crops), batch_size):
        x = handle.preprocess(crops[i:i + batch_size])
        preds.append((handle.encode_image(x) @ classifier.T).argmax(1).cpu().numpy())
    pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    n = len(classes)
    counts = np.bincount(classes, minlength=k)
    per_class = {label_set.classes[c]: round(float((pred[classes == c] == c).mean()), 4)
                 for c in range(k) if counts[c] > 0}
    return {"top1": round(float((pred == classes).mean()), 4) if n else 0.0,
            "mean_class_accuracy": round(float(np.mean(list(per_class.values()))), 4) if per_class else 0.0,
            "chance": round(1.0 / k, 4),
            "majority_baseline": round(float(counts.max() / n), 4) if n else 0.0,
            "majority_class": label_set.classes[int(counts.argmax())] if n else None,
            "per_class": per_class, "crops_per_class": {label_set.classes[c]: int(counts[c]) for c in range(k)
                                                       if counts[c] > 0}}


@torch.no_grad()
def dense_zero_shot(handle: ClipHandle, data_root: Path, split: str, label_set: LabelSet, templates,
                    every: int = DENSE_EVAL_EVERY, input_size: tuple[int, int] | None = None,
                    dense_scale: float = DENSE_SCALE) -> dict:
    """Dense zero-shot labels of ``split`` frames scored per labelled colour pixel (each pixel gets its cell's
    class, the cell's feature against the template-averaged class text embeddings): pixel accuracy, mean
    class accuracy and mIoU (over the classes present in the ground truth or predicted), with the
    constant-majority-class baselines; frames at the dense input size of ``dense_scale`` unless ``input_size``."""
    ds = Dataset(data_root)
    classifier = template_mean(text_embeddings(handle, label_set.classes, templates))
    k = len(label_set.classes)
    conf = np.zeros((k, k), np.int64)
    grid_shape = None
    for sid in ds.split(split):
        scene = ds.scene(sid)
        size = input_size or dense_input_size(handle, scene.meta["color_size"], dense_scale)
        grid = grid_geometry(handle, scene.meta["color_size"], size)
        grid_shape = grid["grid"]
        for f in scene.frame_ids[::every]:
            try:
                color, sem = decode_color(scene, f, size), scene.label(f)  # decoded as the features stage does
            except FrameDefect:
                continue
            feats = dense_features(handle, handle.preprocess(color, size))[0]
            cell_pred = (F.normalize(feats, dim=-1) @ classifier.T).argmax(-1).cpu().numpy()
            v, u = np.mgrid[0:sem.shape[0], 0:sem.shape[1]]
            pred = cell_pred[pixel_to_cell(u, v, grid)]
            valid = sem < k
            conf += np.bincount(sem[valid].astype(np.int64) * k + pred[valid], minlength=k * k).reshape(k, k)
    total, correct = conf.sum(1), np.diag(conf)
    union = total + conf.sum(0) - correct
    seen = union > 0
    present = total > 0
    n = max(int(total.sum()), 1)
    majority = int(total.argmax())
    maj_iou = total[majority] / n  # IoU of the constant "majority" labelling, other present classes 0
    return {"pixel_accuracy": round(float(correct.sum() / n), 4),
            "majority_pixel_baseline": round(float(total.max() / n), 4),
            "mean_class_pixel_accuracy": round(float((correct[present] / total[present]).mean()), 4)
            if present.any() else 0.0,
            "miou": round(float((correct[seen] / union[seen]).mean()), 4) if seen.any() else 0.0,
            "majority_miou_baseline": round(float(maj_iou / max(int(present.sum()), 1)), 4),
            "per_class_iou": {label_set.classes[c]: round(float(correct[c] / union[c]), 4) for c in range(k)
                              if seen[c]},
            "grid": list(grid_shape) if grid_shape else None, "pixels": int(total.sum())}


# ---------------------------------------------------------------- the stage


def run_stage(cfg: dict, data_root: Path, out_path: Path, device, progress: bool = True) -> dict:
    """Train the bootstrap CLIP on the clip split, write its checkpoint to ``out_path``, evaluate on val."""
    t0 = time.perf_counter()
    clip_cfg, bcfg, seed = cfg["clip"], cfg["clip"]["bootstrap"], int(cfg["seed"])
    name = check_model_name(clip_cfg["model"])
    data_root, out_path = Path(data_root), Path(out_path)
    ds = Dataset(data_root)
    label_set = ds.label_set
    seed_everything(seed)
    model = build_model(name, device="cpu")
    model.to(device)
    base = wrap_model(model, name, {"model": name, "pretrained": "bootstrap", "weights_sha256": None}, device,
                      freeze=False)
    size = base.image_size[0]
    if base.image_size[0] != base.image_size[1]:
        raise InputError(f"clip.model: the bootstrap trains square-input models, {name} has input {base.image_size}")
    store = int(round(size * STORE_SCALE))
    dense = None
    dense_scale = float(clip_cfg["dense_scale"])
    head = None
    if int(bcfg["region_frames"]) + int(bcfg["dense_frames"]) > 0 and base.kind in ("vit", "resnet"):
        color_size = ds.scene(ds.split("clip")[0]).meta["color_size"] if ds.split("clip") else None
        if color_size is not None:
            if int(bcfg["dense_head_width"]) > 0:
                head = DenseHead(base.embed_dim, base.embed_dim, int(bcfg["dense_head_width"])).to(device)
                base.dense_head = head
            dsize = dense_input_size(base, color_size, dense_scale)
            cell = base.cell_size
            dense = {"size": dsize, "grid": (dsize[0] // cell, dsize[1] // cell)}
    t_crop = time.perf_counter()
    train_data = collect_crops(data_root, "clip", label_set, store, bcfg, seed, train=True, progress=progress,
                               dense=dense)
    val_data = collect_crops(data_root, "val", label_set, size, bcfg, seed, train=False, progress=progress)
    t_crop = time.perf_counter() - t_crop
    templates = tuple(dict.fromkeys(list(clip_cfg["templates"]) + list(EXTRA_TEMPLATES)))

    t_train = time.perf_counter()
    stats = train(model, {"size": size, "mean": base.mean, "std": base.std, "tokenizer": base.tokenizer,
                          "kind": base.kind, "head": head},
                  train_data, label_set, templates, bcfg, seed, device, progress=progress)
    t_train = time.perf_counter() - t_train

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    ckpt = {"state_dict": state, "model": name, "trained_by": "text4point clip_bootstrap", "label_set": label_set.name}
    if head is not None:
        ckpt[HEAD_KEY] = head.to_checkpoint()
    save_checkpoint(ckpt, out_path)

    handle = wrap_model(model, name, base.identity, device, dense_head=head)
    t_eval = time.perf_counter()
    zs = zero_shot(handle, val_data, label_set, list(clip_cfg["templates"]))
    dense_eval = dense_zero_shot(handle, data_root, "val", label_set, list(clip_cfg["templates"]),
                                 dense_scale=dense_scale)
    t_eval = time.perf_counter() - t_eval
    cls_counts = np.bincount(train_data["classes"], minlength=len(label_set.classes))
    return {
        "clip_model": name,
        "crops_train": int(len(train_data["classes"])), "crops_val": int(len(val_data["classes"])),
        "frames_train": train_data["frames"], "frames_val": val_data["frames"],
        "frames_skipped_train": int(sum(train_data["skipped"].values())),
        "frames_skipped_val": int(sum(val_data["skipped"].values())),
        "skipped_train": train_data["skipped"], "skipped_val": val_data["skipped"],
        "train_crops_per_class": {label_set.classes[c]: int(n) for c, n in enumerate(cls_counts) if n},
        "epochs": int(bcfg["epochs"]), "steps": stats["steps"], "batch_size": stats["batch_size"],
        "final_loss": stats["loss_history"][-1], "loss_history": stats["loss_history"],
        "region_frames_per_step": int(bcfg["region_frames"]) if dense else 0,
        "final_region_loss": stats["region_loss_history"][-1] if stats["region_loss_history"] else None,
        "region_loss_history": stats["region_loss_history"],
        "dense_frames_per_step": int(bcfg["dense_frames"]) if dense else 0, "dense_weight": float(bcfg["dense_weight"]),
        "dense_head": head.config if head is not None else None,
        "dense_input_size": list(dense["size"]) if dense else None,
        "final_dense_loss": stats["dense_loss_history"][-1] if stats["dense_loss_history"] else None,
        "dense_loss_history": stats["dense_loss_history"],
        "logit_scale": stats["logit_scale"],
        "zero_shot_top1": zs["top1"], "zero_shot_mean_class_accuracy": zs["mean_class_accuracy"],
        "zero_shot_chance": zs["chance"], "zero_shot_majority_baseline": zs["majority_baseline"],
        "zero_shot_majority_class": zs["majority_class"], "zero_shot_per_class": zs["per_class"],
        "val_crops_per_class": zs["crops_per_class"],
        "dense_grid": dense_eval["grid"], "dense_val_pixels": dense_eval["pixels"],
        "dense_miou": dense_eval["miou"], "dense_majority_miou_baseline": dense_eval["majority_miou_baseline"],
        "dense_pixel_accuracy": dense_eval["pixel_accuracy"],
        "dense_mean_class_pixel_accuracy": dense_eval["mean_class_pixel_accuracy"],
        "dense_majority_pixel_baseline": dense_eval["majority_pixel_baseline"],
        "dense_per_class_iou": dense_eval["per_class_iou"],
        "seconds_crops": round(t_crop, 2), "seconds_train": round(t_train, 2), "seconds_eval": round(t_eval, 2),
        "seconds": round(time.perf_counter() - t0, 2),
    }
