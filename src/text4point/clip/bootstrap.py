"""The ``clip_bootstrap`` stage: train the small offline open_clip model that stands for CLIP.

Real CLIP learned from web image-caption pairs. Offline, the ``clip`` split of the dataset plays that part:
its scenes are seen by nothing else. Every instance of a frame with a valid pose whose mask has at least
``clip.bootstrap.min_crop_pixels`` pixels and whose semantic class (the majority label inside the mask) is a
labelled class becomes a crop (at most ``max_crops_per_frame`` per frame): an object (the label set's thing
classes) is its bounding box with a small random margin (``crop_box``), a surface (wall, floor, ceiling),
whose bounding box is most of the frame, a window inside it (``surface_box``). Crops are resized to the
model's input. Each is paired, anew in every epoch, with a caption: a template (``clip.templates`` and a few
more) around the class name, sometimes with a colour word from the crop's mean colour ("a photo of a red
chair.") and sometimes a synonym ("couch", "fridge", "piece of furniture"). The class name itself is used
most of the time, because zero-shot classification (and Text4Point's text classifier) later uses exactly the
class names. Frames are decoded and cropped in ``clip.bootstrap.workers`` DataLoader workers; the crops
(a few MB) stay in memory for training, where random resized windows, flips and brightness/contrast jitter
augment them and classes are sampled in proportion to the square root of their frequency (walls and floors
would otherwise fill half of every batch).

Training: open_clip's own model (``clip.model``, randomly initialized) and its ``ClipLoss``, AdamW with linear
warm-up and a cosine schedule, seeded. Each step has two terms: the crop term (the batch's crops against
their captions) and the region term (``_region_loss``: ``clip.bootstrap.region_frames`` whole frames, each
instance's dense features pooled over its mask against its caption). On the default world the region term
raised the dense zero-shot pixel accuracy of the val frames from 0.09 to 0.41 (mean class pixel accuracy
0.12 -> 0.23, chance 0.05) and the crop top-1 from 0.49 to 0.53, for 28 % more training time. The metrics'
``loss_history`` is the sum of both terms per epoch, ``region_loss_history`` the region term alone. The checkpoint is ``{"state_dict": ..., ...}``, which
``open_clip.create_model_and_transforms(name, pretrained=<file>)`` loads as it is (``load.load_clip``).

Evaluation: zero-shot top-1 on crops of the ``val`` split (same crop rule, fixed margins and windows): each crop's image
embedding against the template-averaged text embeddings of *all* classes of the label set. Reported with
chance (1/K), the majority-class baseline and the mean per-class accuracy (the val crops are dominated by
walls and floors). Dense zero-shot pixel accuracy of the val frames (``features.dense_features`` at every
colour pixel's cell) tells how usable the dense features are.
"""

from __future__ import annotations

import colorsys
import math
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from tqdm import tqdm

from ..errors import InputError
from ..fsutil import atomic_path
from ..labels import IGNORE_LABEL, LabelSet
from ..runtime import seed_everything
from ..scene import SPLITS, Dataset, FrameDefect, Scene
from .features import (decode_color, dense_features, dense_forward, dense_input_size, grid_geometry,
                       pixel_to_cell, template_mean, text_embeddings)
from .load import ClipHandle, build_model, check_model_name, normalize_images, wrap_model

# Extra caption templates besides clip.templates (the "web captions" vary more than a prompt list).
EXTRA_TEMPLATES = ("a {}.", "a {} in a room.", "a close-up photo of a {}.", "a cropped photo of the {}.",
                   "this is a {}.", "an indoor photo of a {}.", "a 3d rendering of a {}.", "there is a {} here.")

SYNONYMS = {
    "wall": ("room wall",), "floor": ("ground", "flooring"), "cabinet": ("cupboard",), "bed": ("double bed",),
    "chair": ("seat",), "sofa": ("couch",), "table": ("dining table",), "door": ("doorway",),
    "window": ("glass window",), "bookshelf": ("bookcase", "shelf"), "picture": ("painting", "framed picture"),
    "counter": ("countertop", "kitchen counter"), "desk": ("writing desk",), "curtain": ("drapes",),
    "refrigerator": ("fridge",), "shower curtain": ("bath curtain",), "toilet": ("lavatory",),
    "sink": ("washbasin",), "bathtub": ("bath tub", "tub"), "otherfurniture": ("piece of furniture", "furniture"),
    # S3DIS classes (when the dataset uses that label set)
    "ceiling": ("room ceiling",), "beam": ("ceiling beam",), "column": ("pillar",), "bookcase": ("bookshelf",),
    "board": ("whiteboard",), "clutter": ("stuff",),
}

COLOR_P = 0.5     # share of captions with a colour word
SYNONYM_P = 0.2   # share of captions with a synonym instead of the class name
EVAL_MARGIN = 0.1
MARGIN_RANGE = (0.1, 0.3)
STORE_SCALE = 4 / 3  # train crops are stored this much larger than the model input (random windows per step)
AUG_SCALE = (0.55, 1.0)  # area fraction of a stored crop in a training window
AUG_JITTER = 0.15  # brightness and contrast factors within 1 +- this
SURFACE_WINDOW = (0.3, 0.6)  # side of a window inside a wall/floor, fraction of the frame's short side
MAX_ASPECT = 2.0  # crop windows are at most this elongated (see crop_box)
DENSE_EVAL_EVERY = 3  # dense evaluation on every k-th val frame
BALANCE_POWER = 0.5  # class-balanced sampling: a crop of a class with n crops is drawn with weight n^-power


# ---------------------------------------------------------------- captions


def color_name(rgb) -> str:
    """A basic colour word for a mean RGB colour (0-255)."""
    r, g, b = (float(c) / 255.0 for c in rgb)
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    if v < 0.2:
        return "black"
    if s < 0.15 or (s < 0.25 and v < 0.45):
        return "white" if v > 0.8 else "light grey" if v > 0.6 else "grey" if v > 0.35 else "dark grey"
    deg = h * 360
    if deg < 15 or deg >= 340:
        return "red" if v > 0.45 else "dark red"
    if deg < 45:
        return "orange" if v > 0.7 and s > 0.5 else "brown"
    if deg < 70:
        return "yellow" if v > 0.6 else "olive"
    if deg < 160:
        return "green"
    if deg < 200:
        return "teal"
    if deg < 255:
        return "blue"
    if deg < 290:
        return "purple"
    return "pink"


def caption(rng: np.random.Generator, class_name: str, colour: str, templates: tuple[str, ...]) -> str:
    name = class_name
    syn = SYNONYMS.get(class_name, ())
    if syn and rng.random() < SYNONYM_P:
        name = syn[int(rng.integers(len(syn)))]
    if rng.random() < COLOR_P:
        name = f"{colour} {name}"
    return templates[int(rng.integers(len(templates)))].format(name)


# ---------------------------------------------------------------- crops


def crop_box(ys: np.ndarray, xs: np.ndarray, height: int, width: int, margin: float) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)``: a mask's bounding box grown by ``margin`` (a fraction of its size) on
    every side, its short side grown further to at least ``1 / MAX_ASPECT`` of the long side (a sliver of an
    object at the frame border keeps some context and is not stretched more than that when resized to the
    square input), shifted to lie inside the image and cut to it."""
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    h, w = (y1 - y0) * (1 + 2 * margin), (x1 - x0) * (1 + 2 * margin)
    h, w = max(h, w / MAX_ASPECT, 4.0), max(w, h / MAX_ASPECT, 4.0)
    hh, ww = min(h, height), min(w, width)
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    top = int(round(min(max(cy - hh / 2, 0), height - hh)))
    left = int(round(min(max(cx - ww / 2, 0), width - ww)))
    return top, min(height, top + int(round(hh))), left, min(width, left + int(round(ww)))


def surface_box(mask: np.ndarray, rng: np.random.Generator | None) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)``: a square window inside a surface (wall, floor, ceiling).

    The bounding box of a surface is most of the frame and shows everything in the room, so a "photo of a
    floor" is a window of the floor instead: side ``SURFACE_WINDOW`` of the frame's short side (eval: its
    middle), at most 1.25 times the surface's inscribed diameter; centred on the surface's most interior
    pixel (eval) or on a random pixel at least ~0.8 half-sides inside it (training).
    """
    from scipy.ndimage import distance_transform_edt

    H, W = mask.shape
    dist = distance_transform_edt(mask)  # distance to the nearest pixel outside the surface (not the border)
    dmax = float(dist.max())
    frac = sum(SURFACE_WINDOW) / 2 if rng is None else float(rng.uniform(*SURFACE_WINDOW))
    side = min(frac * min(H, W), 2.5 * dmax)
    side = max(min(side, min(H, W)), min(16.0, min(H, W)))
    if rng is None:
        cy, cx = np.unravel_index(int(np.argmax(dist)), dist.shape)
    else:
        ys, xs = np.nonzero(dist >= min(0.4 * side, dmax))
        k = int(rng.integers(len(ys)))
        cy, cx = ys[k], xs[k]
    top = int(round(min(max(cy + 0.5 - side / 2, 0), H - side)))
    left = int(round(min(max(cx + 0.5 - side / 2, 0), W - side)))
    return top, min(H, top + int(round(side))), left, min(W, left + int(round(side)))


def frame_crops(scene: Scene, frame: int, label_set: LabelSet, size: int, min_pixels: int, max_crops: int,
                rng: np.random.Generator | None, dense: dict | None = None) -> dict:
    """Crops ``[n, size, size, 3]`` uint8, their classes and mean colours for one frame.

    Objects (the label set's thing classes) are cut out by ``crop_box``, surfaces (its other classes: wall,
    floor, ceiling) by ``surface_box``. ``rng`` None: evaluation (fixed margin and windows, the largest
    instances first); otherwise random margins/windows and a random subset when the frame has more than
    ``max_crops`` instances. Raises ``FrameDefect``.

    ``dense = {"size": (h, w), "grid": (gh, gw)}``: also the whole frame resized to the dense input size
    (``frame``, uint8 ``[h, w, 3]``) and, for every crop, its instance mask's coverage of each dense-feature
    cell (``regions``, float16 ``[n, gh, gw]``, the fraction of the cell's pixels inside the mask).
    """
    scene.pose(frame)  # a frame with lost tracking is skipped (and counted) like everywhere else
    color = np.array(scene.color(frame))  # writable copy (torch.from_numpy)
    inst = scene.instance(frame)
    sem = scene.label(frame)
    if inst.shape != color.shape[:2] or sem.shape != color.shape[:2]:
        raise FrameDefect("bad_image_size", f"{scene.path}: frame {frame}: instance/label size differs from colour")
    ids, counts = np.unique(inst[inst > 0], return_counts=True)
    cand = []
    for k, n in zip(ids, counts):
        if n < min_pixels:
            continue
        mask = inst == k
        cls = int(np.bincount(sem[mask].astype(np.int64), minlength=256).argmax())
        if cls == IGNORE_LABEL or cls >= len(label_set.classes):
            continue
        cand.append((int(k), int(n), cls, mask))
    if len(cand) > max_crops:
        if rng is None:
            cand = sorted(cand, key=lambda c: -c[1])[:max_crops]
        else:
            cand = [cand[i] for i in sorted(rng.choice(len(cand), size=max_crops, replace=False))]
    H, W = inst.shape
    stuff = set(range(len(label_set.classes))) - set(label_set.thing_ids)
    crops, classes, colours = [], [], []
    for _, _, cls, mask in cand:
        if cls in stuff:
            t, b, l, r = surface_box(mask, rng)
        else:
            ys, xs = np.nonzero(mask)
            margin = EVAL_MARGIN if rng is None else float(rng.uniform(*MARGIN_RANGE))
            t, b, l, r = crop_box(ys, xs, H, W, margin)
        patch = torch.from_numpy(np.ascontiguousarray(color[t:b, l:r])).permute(2, 0, 1)[None].float()
        patch = F.interpolate(patch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        crops.append(patch[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy())
        classes.append(cls)
        inside = mask[t:b, l:r]
        colours.append(color[t:b, l:r][inside].mean(0) if inside.any() else color[mask].mean(0))
    out = {"crops": np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8),
           "classes": np.asarray(classes, np.int64), "colours": np.asarray(colours, np.float32).reshape(-1, 3)}
    if dense is not None:
        (h, w), (gh, gw) = dense["size"], dense["grid"]
        img = torch.from_numpy(color).permute(2, 0, 1)[None].float()
        img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        out["frame"] = img[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
        masks = torch.from_numpy(np.stack([c[3] for c in cand])).float()[:, None] if cand else torch.zeros(0, 1, H, W)
        out["regions"] = F.adaptive_avg_pool2d(masks, (gh, gw))[:, 0].to(torch.float16).numpy()
    return out


class _CropFrames(torch.utils.data.Dataset):
    def __init__(self, root, items, label_set, size, min_pixels, max_crops, seed, train, dense=None):
        self.root, self.items, self.label_set = Path(root), items, label_set
        self.size, self.min_pixels, self.max_crops, self.seed, self.train = size, min_pixels, max_crops, seed, train
        self.dense = dense

    def __len__(self):
        return len(self.items)

    def __getitem__(self, k):
        split, sid, frame = self.items[k]
        rng = (np.random.default_rng([self.seed, SPLITS.index(split), zlib.crc32(sid.encode()), frame])
               if self.train else None)
        try:
            return sid, frame, frame_crops(Scene(self.root / "scenes" / sid), frame, self.label_set, self.size,
                                           self.min_pixels, self.max_crops, rng, self.dense), None
        except FrameDefect as e:
            return sid, frame, None, e.reason


def _worker_init(_):
    torch.set_num_threads(1)


def collect_crops(data_root: Path, split: str, label_set: LabelSet, size: int, bcfg: dict, seed: int,
                  train: bool, progress: bool = False, dense: dict | None = None) -> dict:
    """All crops of one split (frames decoded in ``bcfg['workers']`` DataLoader workers).

    With ``dense`` (see ``frame_crops``) also ``frames`` ``[F, h, w, 3]``, ``regions`` ``[n, gh, gw]`` and
    ``region_frame`` ``[n]`` (the row in ``frames`` of each crop's frame): the region term's data."""
    ds = Dataset(data_root)
    items = [(split, sid, f) for sid in ds.split(split) for f in ds.scene(sid).frame_ids]
    loader = torch.utils.data.DataLoader(
        _CropFrames(data_root, items, label_set, size, bcfg["min_crop_pixels"], bcfg["max_crops_per_frame"], seed,
                    train, dense), batch_size=4, shuffle=False, num_workers=int(bcfg.get("workers", 0)),
        collate_fn=lambda b: b, worker_init_fn=_worker_init if bcfg.get("workers") else None)
    crops, classes, colours, skipped, frames = [], [], [], {}, 0
    images, regions, region_frame = [], [], []
    for batch in tqdm(loader, desc=f"crops ({split})", unit="frames", disable=not progress):
        for _, _, out, reason in batch:
            if out is None:
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            frames += 1
            crops.append(out["crops"])
            classes.append(out["classes"])
            colours.append(out["colours"])
            if dense is not None:
                region_frame.append(np.full(len(out["classes"]), len(images), np.int64))
                images.append(out["frame"])
                regions.append(out["regions"])
    result = {"crops": np.concatenate(crops) if crops else np.zeros((0, size, size, 3), np.uint8),
              "classes": np.concatenate(classes) if classes else np.zeros(0, np.int64),
              "colours": np.concatenate(colours) if colours else np.zeros((0, 3), np.float32),
              "frames": frames, "skipped": skipped, "scenes": len(ds.split(split))}
    if dense is not None:
        (h, w), (gh, gw) = dense["size"], dense["grid"]
        result["frame_images"] = np.stack(images) if images else np.zeros((0, h, w, 3), np.uint8)
        result["regions"] = np.concatenate(regions) if regions else np.zeros((0, gh, gw), np.float16)
        result["region_frame"] = np.concatenate(region_frame) if region_frame else np.zeros(0, np.int64)
    return result


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


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1 + math.cos(math.pi * t))


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
    dense = dense_forward(model, handle_like["kind"], x)  # [F, gh, gw, d]
    pooled = torch.einsum("rhw,rhwd->rd", w, dense[owner.to(device)]) / w.sum(dim=(1, 2)).clamp_min(1e-6)[:, None]
    texts = [caption(rng, label_set.classes[classes[i]], names[i], templates) for i in idx]
    txt_f = model.encode_text(tokens(texts).to(device), normalize=True)
    return loss_fn(F.normalize(pooled, dim=-1), txt_f, model.logit_scale.exp())


def train(model: torch.nn.Module, handle_like: dict, data: dict, label_set: LabelSet, templates: tuple[str, ...],
          bcfg: dict, seed: int, device, progress: bool = False) -> dict:
    """Contrastive training of ``model`` on crop-caption pairs; returns the loss history."""
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
    opt = torch.optim.AdamW(_param_groups(model, float(bcfg["weight_decay"])), lr=float(bcfg["lr"]),
                            betas=(0.9, 0.98), eps=1e-6)
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

    region_frames = int(bcfg.get("region_frames", 0))
    frame_images = data.get("frame_images")
    use_regions = region_frames > 0 and frame_images is not None and len(frame_images) > 0
    if use_regions:
        frame_images = torch.from_numpy(frame_images)
        regions = torch.from_numpy(data["regions"].astype(np.float32))
        region_frame = data["region_frame"]
        regions_of = [np.nonzero(region_frame == f)[0] for f in range(len(frame_images))]
        with_regions = np.array([f for f, r in enumerate(regions_of) if len(r)], np.int64)
        use_regions = len(with_regions) > 0

    counts = np.bincount(classes, minlength=len(label_set.classes)).astype(np.float64)
    weights = counts[classes] ** -BALANCE_POWER
    weights /= weights.sum()
    model.train()
    history, region_history, step = [], [], 0
    bar = tqdm(total=total, desc="clip bootstrap", unit="step", disable=not progress)
    for epoch in range(epochs):
        order = rng.choice(n, size=n, replace=True, p=weights) if BALANCE_POWER else rng.permutation(n)
        losses, region_losses = [], []
        for k in range(steps_per_epoch):
            idx = order[k * bs:(k + 1) * bs]
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, warmup, float(bcfg["lr"]))
            x = normalize_images(_augment(crops[idx], size, gen).to(device), mean, std)
            texts = [caption(rng, label_set.classes[classes[i]], names[i], templates) for i in idx]
            t = tokens(texts).to(device)
            img_f = model.encode_image(x, normalize=True)
            txt_f = model.encode_text(t, normalize=True)
            loss = loss_fn(img_f, txt_f, model.logit_scale.exp())
            if use_regions:
                fr = rng.choice(with_regions, size=min(region_frames, len(with_regions)), replace=False)
                loss_r = _region_loss(model, handle_like, frame_images, regions, region_frame, regions_of, fr,
                                      label_set, classes, names, templates, rng, tokens, loss_fn, device)
                region_losses.append(loss_r.item())
                loss = loss + loss_r
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())  # crop term + region term
            step += 1
            bar.update(1)
        history.append(float(np.mean(losses)))
        if region_losses:
            region_history.append(float(np.mean(region_losses)))
        bar.set_postfix(epoch=epoch + 1, loss=f"{history[-1]:.3f}")
    bar.close()
    model.eval()
    return {"loss_history": [round(v, 4) for v in history], "steps": total, "batch_size": bs,
            "region_loss_history": [round(v, 4) for v in region_history],
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
                    every: int = DENSE_EVAL_EVERY, input_size: tuple[int, int] | None = None) -> dict:
    """Pixel accuracy of dense zero-shot labels (each colour pixel gets its cell's class) on ``split`` frames."""
    ds = Dataset(data_root)
    classifier = template_mean(text_embeddings(handle, label_set.classes, templates))
    k = len(label_set.classes)
    correct = np.zeros(k)
    total = np.zeros(k)
    for sid in ds.split(split):
        scene = ds.scene(sid)
        size = input_size or dense_input_size(handle, scene.meta["color_size"])
        grid = grid_geometry(handle, scene.meta["color_size"], size)
        for f in scene.frame_ids[::every]:
            try:
                color, sem = decode_color(scene, f, size), scene.label(f)  # decoded as the features stage does
            except FrameDefect:
                continue
            feats = dense_features(handle, handle.preprocess(color, size))[0]
            cell_pred = (F.normalize(feats, dim=-1) @ classifier.T).argmax(-1).cpu().numpy()
            v, u = np.mgrid[0:sem.shape[0], 0:sem.shape[1]]
            pred = cell_pred[pixel_to_cell(u, v, grid)]
            valid = sem != IGNORE_LABEL
            gt, pr = sem[valid].astype(np.int64), pred[valid]
            total += np.bincount(gt, minlength=k)[:k]
            correct += np.bincount(gt[gt == pr], minlength=k)[:k]
    present = total > 0
    return {"pixel_accuracy": round(float(correct.sum() / max(total.sum(), 1)), 4),
            "majority_pixel_baseline": round(float(total.max() / max(total.sum(), 1)), 4),
            "mean_class_pixel_accuracy": round(float((correct[present] / total[present]).mean()), 4)
            if present.any() else 0.0}


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
    if int(bcfg.get("region_frames", 0)) > 0 and base.kind in ("vit", "resnet"):
        color_size = ds.scene(ds.split("clip")[0]).meta["color_size"] if ds.split("clip") else None
        if color_size is not None:
            dsize = dense_input_size(base, color_size)
            dense = {"size": dsize, "grid": (dsize[0] // base.patch_size, dsize[1] // base.patch_size)}
    t_crop = time.perf_counter()
    train_data = collect_crops(data_root, "clip", label_set, store, bcfg, seed, train=True, progress=progress,
                               dense=dense)
    val_data = collect_crops(data_root, "val", label_set, size, bcfg, seed, train=False, progress=progress)
    t_crop = time.perf_counter() - t_crop
    templates = tuple(dict.fromkeys(list(clip_cfg["templates"]) + list(EXTRA_TEMPLATES)))

    t_train = time.perf_counter()
    stats = train(model, {"size": size, "mean": base.mean, "std": base.std, "tokenizer": base.tokenizer,
                          "kind": base.kind},
                  train_data, label_set, templates, bcfg, seed, device, progress=progress)
    t_train = time.perf_counter() - t_train

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out_path) as tmp:
        torch.save({"state_dict": state, "model": name, "trained_by": "text4point clip_bootstrap",
                    "label_set": label_set.name}, tmp)

    handle = wrap_model(model, name, base.identity, device)
    t_eval = time.perf_counter()
    zs = zero_shot(handle, val_data, label_set, list(clip_cfg["templates"]))
    dense = dense_zero_shot(handle, data_root, "val", label_set, list(clip_cfg["templates"]))
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
        "region_frames_per_step": int(bcfg.get("region_frames", 0)) if dense else 0,
        "final_region_loss": stats["region_loss_history"][-1] if stats["region_loss_history"] else None,
        "region_loss_history": stats["region_loss_history"],
        "logit_scale": stats["logit_scale"],
        "zero_shot_top1": zs["top1"], "zero_shot_mean_class_accuracy": zs["mean_class_accuracy"],
        "zero_shot_chance": zs["chance"], "zero_shot_majority_baseline": zs["majority_baseline"],
        "zero_shot_majority_class": zs["majority_class"], "zero_shot_per_class": zs["per_class"],
        "val_crops_per_class": zs["crops_per_class"],
        "dense_pixel_accuracy": dense["pixel_accuracy"],
        "dense_mean_class_pixel_accuracy": dense["mean_class_pixel_accuracy"],
        "dense_majority_pixel_baseline": dense["majority_pixel_baseline"],
        "seconds_crops": round(t_crop, 2), "seconds_train": round(t_train, 2), "seconds_eval": round(t_eval, 2),
        "seconds": round(time.perf_counter() - t0, 2),
    }
