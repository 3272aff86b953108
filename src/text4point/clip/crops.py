"""The bootstrap CLIP's training data: object and surface crops of the ``clip`` split's frames with captions.

Every instance of a frame with a valid pose whose mask has at least ``clip.bootstrap.min_crop_pixels`` pixels
and whose semantic class (the majority label inside the mask) is a labelled class becomes a crop (at most
``max_crops_per_frame`` per frame): an object (the label set's thing classes) is its bounding box with a small
random margin (:func:`crop_box`), a surface (wall, floor, ceiling), whose bounding box is most of the frame, a
window inside it (:func:`surface_box`). Crops are resized to the model's input. Each is paired, anew in every
step, with a caption (:func:`caption`): a template (``clip.templates`` and :data:`EXTRA_TEMPLATES`) around the
class name, sometimes with a colour word from the crop's mean colour ("a photo of a red chair.") and sometimes
a synonym ("couch", "fridge", "piece of furniture"). Frames are decoded and cropped in
``clip.bootstrap.workers`` DataLoader workers; the crops (a few MB) stay in memory.
"""

from __future__ import annotations

import colorsys
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import InputError
from ..labels import IGNORE_LABEL, LabelSet
from ..scene import SPLITS, Dataset, FrameDefect, Scene

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


SURFACE_WINDOW = (0.3, 0.6)  # side of a window inside a wall/floor, fraction of the frame's short side


MAX_ASPECT = 2.0  # crop windows are at most this elongated (see crop_box)


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


def caption(rng: np.random.Generator, class_name: str, colour: str | None, templates: tuple[str, ...]) -> str:
    """A random caption of ``class_name``: a template, sometimes a synonym, sometimes (``COLOR_P``) the colour
    word ``colour`` (never when it is None: the dense term captions a class, not one instance)."""
    name = class_name
    syn = SYNONYMS.get(class_name, ())
    if syn and rng.random() < SYNONYM_P:
        name = syn[int(rng.integers(len(syn)))]
    if colour is not None and rng.random() < COLOR_P:
        name = f"{colour} {name}"
    return templates[int(rng.integers(len(templates)))].format(name)


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
    (``frame``, uint8 ``[h, w, 3]``), for every crop its instance mask's coverage of each dense-feature cell
    (``regions``, float16 ``[n, gh, gw]``, the fraction of the cell's pixels inside the mask), and the class
    make-up of every cell (``cells``, float16 ``[gh, gw, K]``: the fraction of the cell's pixels labelled k;
    unlabelled pixels count for no class). Pixels go to cells as the features stage maps them
    (``dense.pixel_to_cell``).
    """
    scene.pose(frame)  # a frame with lost tracking is skipped (and counted) like everywhere else
    color = np.array(scene.color(frame))  # writable copy (torch.from_numpy)
    inst = scene.instance(frame)
    sem = scene.label(frame)
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
        out["cells"] = cell_classes(sem, len(label_set.classes), (h, w), (gh, gw))
    return out


def cell_classes(sem: np.ndarray, k: int, input_size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """``[gh, gw, k]`` float16: the fraction of each dense cell's pixels with each label (``sem [H, W]``, pixels
    mapped to cells through the resize to ``input_size = (h, w)`` as ``dense.pixel_to_cell`` does; labels
    outside ``[0, k)`` - unlabelled - count for no class)."""
    H, W = sem.shape
    (h, w), (gh, gw) = input_size, grid
    p_y, p_x = h / gh, w / gw  # the patch size in input pixels
    row = np.minimum(np.floor((np.arange(H) + 0.5) * (h / H) / p_y).astype(np.int64), gh - 1)
    col = np.minimum(np.floor((np.arange(W) + 0.5) * (w / W) / p_x).astype(np.int64), gw - 1)
    cell = (row[:, None] * gw + col[None, :]).ravel()
    lab = sem.astype(np.int64).ravel()
    valid = (lab >= 0) & (lab < k)
    counts = np.bincount(cell[valid] * k + lab[valid], minlength=gh * gw * k).reshape(gh * gw, k)
    pixels = np.bincount(cell, minlength=gh * gw).clip(min=1)[:, None]
    return (counts / pixels).reshape(gh, gw, k).astype(np.float16)


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
        except InputError as e:  # a defect of the dataset (e.g. a label image of another size): raised in the
            return sid, frame, None, e  # main process as the same one line, not as a worker's traceback


def _worker_init(_):
    torch.set_num_threads(1)


def collect_crops(data_root: Path, split: str, label_set: LabelSet, size: int, bcfg: dict, seed: int,
                  train: bool, progress: bool = False, dense: dict | None = None) -> dict:
    """All crops of one split (frames decoded in ``bcfg['workers']`` DataLoader workers).

    With ``dense`` (see ``frame_crops``) also ``frame_images`` ``[F, h, w, 3]``, ``regions`` ``[n, gh, gw]``,
    ``region_frame`` ``[n]`` (the row in ``frame_images`` of each crop's frame) and ``cells`` ``[F, gh, gw, K]``:
    the region and dense terms' data."""
    ds = Dataset(data_root)
    items = [(split, sid, f) for sid in ds.split(split) for f in ds.scene(sid).frame_ids]
    loader = torch.utils.data.DataLoader(
        _CropFrames(data_root, items, label_set, size, bcfg["min_crop_pixels"], bcfg["max_crops_per_frame"], seed,
                    train, dense), batch_size=4, shuffle=False, num_workers=int(bcfg["workers"]),
        collate_fn=lambda b: b, worker_init_fn=_worker_init if bcfg["workers"] else None)
    crops, classes, colours, skipped, frames = [], [], [], {}, 0
    images, regions, region_frame, cells = [], [], [], []
    for batch in tqdm(loader, desc=f"crops ({split})", unit="frames", disable=not progress):
        for _, _, out, reason in batch:
            if isinstance(reason, InputError):
                raise reason
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
                cells.append(out["cells"])
    result = {"crops": np.concatenate(crops) if crops else np.zeros((0, size, size, 3), np.uint8),
              "classes": np.concatenate(classes) if classes else np.zeros(0, np.int64),
              "colours": np.concatenate(colours) if colours else np.zeros((0, 3), np.float32),
              "frames": frames, "skipped": skipped, "scenes": len(ds.split(split))}
    if dense is not None:
        (h, w), (gh, gw) = dense["size"], dense["grid"]
        result["frame_images"] = np.stack(images) if images else np.zeros((0, h, w, 3), np.uint8)
        result["regions"] = np.concatenate(regions) if regions else np.zeros((0, gh, gw), np.float16)
        result["region_frame"] = np.concatenate(region_frame) if region_frame else np.zeros(0, np.int64)
        result["cells"] = np.stack(cells) if cells else np.zeros((0, gh, gw, len(label_set.classes)), np.float16)
    return result
