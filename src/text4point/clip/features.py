"""Dense CLIP image features and class-name text embeddings: the frozen targets of Text4Point pre-training.

Dense features (``dense_features``) live in CLIP's joint image-text space, one vector per input patch:

* ViT (open_clip ``VisionTransformer``): the image goes through the tower as usual (``conv1``, class token,
  positional embedding, ``ln_pre``, ``transformer``), and every *patch* token - not only the class token -
  is passed through the final norm ``ln_post`` and the projection ``proj``. This is the MaskCLIP-style dense
  read-out without retraining (Zhou et al., 2022, "Extract Free Dense Labels from CLIP"). For a model with
  average pooling (``pool_type: avg``, like the project's ``t4p-tiny``) it is exact: the mean of the dense
  features over the grid *is* the global image embedding, so each patch feature is that patch's share of it.
  Inputs of another size than the model's native one get bicubically interpolated positional embeddings.
* ModifiedResNet (RN50 ...): the attention pool's value (``v_proj``) and output (``c_proj``) projections are
  applied at every position of the last feature map (MaskCLIP's ResNet recipe), with the pool's positional
  embedding added (interpolated to the grid).

Features are not L2-normalized (their mean is the image embedding); consumers normalize as they need.

The ``clip_features`` stage (``run_stage``) caches, for every train and val scene and every frame in
``Scene.sampled_frames(correspondences.frame_skip)`` whose colour image decodes::

    <out>/<scene>/features.npy    float16 [F, gh, gw, d]   (written incrementally through a memmap)
    <out>/<scene>/frames.npy      int32 [F]                 frame index of each row
    <out>/<scene>/grid.json       geometry: colour pixel (u, v) -> grid cell, see ``pixel_to_cell``
    <out>/text_embeddings.pt      {label_set: {classes, templates, embeddings [K,T,d], ...}, "identity": ...}
    <out>/manifest.json           CLIP identity, scenes, frames, skipped counts (written last)

Everything is keyed by the CLIP identity (model, pretrained, weights sha256): ``load_features`` refuses a cache
made by other weights.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import faults
from ..errors import InputError
from ..fsutil import atomic_path, write_json
from ..labels import LABEL_SETS
from ..scene import Dataset, FrameDefect, Scene, read_image
from .load import ClipHandle, load_clip, preprocess_images, same_weights

FEATURE_DTYPE = np.float16
TEXT_FILE = "text_embeddings.pt"
MANIFEST = "manifest.json"
TEXT_LABEL_SETS = ("scannet20", "s3dis13", "sunrgbd10")
FEATURE_SPLITS = ("train", "val")


# ---------------------------------------------------------------- dense image features


def _grid_pos_embed(pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int], extra: int = 1) -> torch.Tensor:
    """Positional embedding ``[extra + gh*gw, C]`` resized (bicubic) from grid ``old`` to grid ``new``."""
    if tuple(old) == tuple(new):
        return pos
    head, grid = pos[:extra], pos[extra:]
    g = grid.reshape(1, old[0], old[1], -1).permute(0, 3, 1, 2).float()
    g = F.interpolate(g, size=tuple(new), mode="bicubic", align_corners=False)
    g = g.permute(0, 2, 3, 1).reshape(new[0] * new[1], -1).to(pos.dtype)
    return torch.cat([head, g], 0)


def _vit_dense(visual, images: torch.Tensor) -> torch.Tensor:
    if getattr(visual, "attn_pool", None) is not None:
        raise InputError("clip.model: dense features of a ViT with an attentional pooler (CoCa) are not supported")
    dtype = visual.conv1.weight.dtype
    x = visual.conv1(images.to(dtype))  # [B, width, gh, gw]
    b, c, gh, gw = x.shape
    x = x.reshape(b, c, gh * gw).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).reshape(1, 1, c).expand(b, 1, c)
    x = torch.cat([cls, x], dim=1)
    x = x + _grid_pos_embed(visual.positional_embedding, visual.grid_size, (gh, gw)).to(x.dtype)
    x = visual.ln_pre(x)
    x = visual.transformer(x)
    x = visual.ln_post(x[:, 1:])
    if visual.proj is not None:
        x = x @ visual.proj
    return x.reshape(b, gh, gw, -1)


def _resnet_dense(visual, images: torch.Tensor) -> torch.Tensor:
    x = images.to(visual.conv1.weight.dtype)
    x = visual.stem(x)
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))  # [B, C, gh, gw]
    b, c, gh, gw = x.shape
    pool = visual.attnpool
    s = int(round((pool.positional_embedding.shape[0] - 1) ** 0.5))
    pos = _grid_pos_embed(pool.positional_embedding, (s, s), (gh, gw))[1:]
    x = x.reshape(b, c, gh * gw).permute(0, 2, 1) + pos.to(x.dtype)
    x = pool.c_proj(pool.v_proj(x))
    return x.reshape(b, gh, gw, -1)


def dense_forward(model: torch.nn.Module, kind: str, images: torch.Tensor) -> torch.Tensor:
    """``[B, gh, gw, d]`` dense features of an open_clip ``model`` whose image tower is ``kind`` ("vit" |
    "resnet"), with autograd (the bootstrap trains through it); ``dense_features`` is the frozen read-out."""
    if kind == "vit":
        return _vit_dense(model.visual, images)
    if kind == "resnet":
        return _resnet_dense(model.visual, images)
    raise InputError(f"clip.model: dense features need an open_clip VisionTransformer or ModifiedResNet image "
                     f"tower, got {type(model.visual).__name__}")


@torch.no_grad()
def dense_features(handle: ClipHandle, images: torch.Tensor) -> torch.Tensor:
    """Preprocessed images ``[B, 3, H, W]`` (H, W multiples of ``handle.patch_size``) -> ``[B, gh, gw, d]`` float32.

    ``gh = H // patch``, ``gw = W // patch``; features are in CLIP's joint space (see the module docstring).
    """
    return dense_forward(handle.model, handle.kind, images.to(handle.device)).float()


# ---------------------------------------------------------------- text embeddings


@torch.no_grad()
def text_embeddings(handle: ClipHandle, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """``[K, T, d]`` float32 text embeddings of ``template.format(class)``, each L2-normalized."""
    texts = [t.format(c) for c in class_names for t in templates]
    emb = handle.encode_text(texts)
    return emb.reshape(len(class_names), len(templates), -1)


def template_mean(emb: torch.Tensor) -> torch.Tensor:
    """``[K, T, d]`` -> ``[K, d]``: the mean over templates, L2-normalized (CLIP's prompt ensembling)."""
    return F.normalize(emb.float().mean(dim=1), dim=-1)


def label_set_text(handle: ClipHandle, classes: Sequence[str], prompt: str, templates: Sequence[str]) -> dict:
    """One label set's entry of ``text_embeddings.pt``: templates[0] is the prompt, the rest clip.templates."""
    all_templates = [prompt] + [t for t in templates]
    emb = text_embeddings(handle, classes, all_templates).cpu()
    rest = emb[:, 1:] if len(templates) else emb
    return {"classes": list(classes), "templates": all_templates, "prompt": prompt,
            "embeddings": emb.contiguous(), "prompt_embeddings": emb[:, 0].contiguous(),
            "template_mean_embeddings": template_mean(rest).contiguous()}


# ---------------------------------------------------------------- geometry


DENSE_SCALE = 1.5  # the dense input's short side, in units of the model's native input side


def dense_input_size(handle: ClipHandle, color_size: Sequence[int]) -> tuple[int, int]:
    """Model input ``(h, w)`` for dense features of frames of ``color_size = (w, h)``.

    The frame keeps its aspect ratio; its short side becomes ``DENSE_SCALE`` times the model's native input
    side, both sides rounded to whole patches (positional embeddings are interpolated to that grid, as in
    MaskCLIP). For t4p-tiny (48 px, patch 8) and 324x242 frames: 96x72 input, a 9x12 grid (a 6x6 grid at the
    native size). On the default world's val frames this gave the best dense zero-shot class accuracy of the
    sizes tried (48x48 to 248x184), see the report of the clip_bootstrap stage (``dense_*`` metrics).
    """
    cw, ch = int(color_size[0]), int(color_size[1])
    p = handle.patch_size or 1
    short = max(p, int(round(min(handle.image_size) * DENSE_SCALE / p)) * p)
    long = max(p, int(round(short * max(cw, ch) / min(cw, ch) / p)) * p)
    return (short, long) if ch <= cw else (long, short)


def grid_geometry(handle: ClipHandle, color_size: Sequence[int], input_size: Sequence[int] | None = None) -> dict:
    """How a colour pixel maps to a dense-feature cell (stored as ``grid.json``)."""
    cw, ch = int(color_size[0]), int(color_size[1])
    ih, iw = input_size if input_size is not None else dense_input_size(handle, (cw, ch))
    p = handle.patch_size
    return {"color_size": [cw, ch], "input_size": [int(iw), int(ih)], "resize": "plain bilinear (antialiased)",
            "scale_x": iw / cw, "scale_y": ih / ch, "patch_size": p, "grid": [int(ih) // p, int(iw) // p],
            "feature_dim": handle.embed_dim, "dtype": np.dtype(FEATURE_DTYPE).name,
            "cell_of_pixel": "row = floor((v + 0.5) * scale_y / patch_size), col = floor((u + 0.5) * scale_x / "
                             "patch_size), clipped to the grid; (u, v) = (column, row) in colour pixels"}


def pixel_to_cell(u, v, grid: dict) -> tuple[np.ndarray, np.ndarray]:
    """Grid cell ``(row, col)`` (int64 arrays) of colour pixels at column ``u`` and row ``v`` (arrays or scalars).

    ``grid`` is a scene's ``grid.json``. Pixel centres are mapped through the resize, then to the patch that
    contains them: ``row = floor((v + 0.5) * scale_y / patch)``, clipped to ``[0, gh - 1]`` (same for columns).
    """
    p = float(grid["patch_size"])
    gh, gw = grid["grid"]
    row = np.floor((np.asarray(v, dtype=np.float64) + 0.5) * grid["scale_y"] / p).astype(np.int64)
    col = np.floor((np.asarray(u, dtype=np.float64) + 0.5) * grid["scale_x"] / p).astype(np.int64)
    return np.clip(row, 0, gh - 1), np.clip(col, 0, gw - 1)


def features_at_pixels(features: np.ndarray, u, v, grid: dict) -> np.ndarray:
    """Dense features ``[..., d]`` of one frame's ``features [gh, gw, d]`` at colour pixels ``(u, v)``."""
    row, col = pixel_to_cell(u, v, grid)
    return features[row, col]


# ---------------------------------------------------------------- frame loading (DataLoader)


def decode_color(scene: Scene, frame: int, min_size: Sequence[int] | None = None) -> np.ndarray:
    """A frame's colour image as uint8 ``[H', W', 3]``, like ``Scene.color`` (same checks, same ``FrameDefect``).

    ``min_size = (h, w)``: the image is only needed at that size, so a JPEG is decoded at a reduced scale
    (libjpeg's DCT scaling, 1/2 to 1/8, never below ``min_size``; an area average, so no aliasing) - several
    times faster than a full decode. Without ``min_size`` (or for PNG) the full image is decoded.
    """
    cw, ch = scene.meta["color_size"]
    draft = (int(min_size[1]), int(min_size[0])) if min_size is not None else None
    return read_image(scene.frame_path("color", frame), size=(cw, ch), mode="RGB", draft=draft)


def frame_tensor(scene: Scene, frame: int, input_size: Sequence[int], mean, std) -> torch.Tensor:
    """One frame's preprocessed model input ``[3, h, w]`` (the stage's own decoding: ``decode_color`` at the
    reduced scale, then ``preprocess_images``); raises ``FrameDefect`` when the colour does not decode."""
    return preprocess_images(decode_color(scene, frame, input_size), input_size, mean, std)[0]


class FrameImages(torch.utils.data.Dataset):
    """Decodes and preprocesses ``(scene index, frame)`` items (in DataLoader workers)."""

    def __init__(self, root: Path, scene_ids: list[str], items: list[tuple[int, int]], input_size, mean, std):
        self.root, self.scene_ids, self.items = Path(root), scene_ids, items
        self.input_size, self.mean, self.std = tuple(input_size), tuple(mean), tuple(std)
        self._scenes: dict[int, Scene] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        si, frame = self.items[k]
        scene = self._scenes.get(si)
        if scene is None:
            scene = self._scenes[si] = Scene(self.root / "scenes" / self.scene_ids[si])
        try:
            return si, frame, frame_tensor(scene, frame, self.input_size, self.mean, self.std), None
        except FrameDefect as e:
            return si, frame, None, e.reason


def _collate(batch):
    ok = [b for b in batch if b[2] is not None]
    images = torch.stack([b[2] for b in ok]) if ok else None
    return images, [(b[0], b[1]) for b in ok], [(b[0], b[1], b[3]) for b in batch if b[2] is None]


def _worker_init(_):
    torch.set_num_threads(1)


def frame_loader(root: Path, scene_ids: list[str], items: list[tuple[int, int]], input_size, mean, std,
                 batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    ds = FrameImages(root, scene_ids, items, input_size, mean, std)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       collate_fn=_collate, worker_init_fn=_worker_init if workers else None,
                                       persistent_workers=False, prefetch_factor=4 if workers else None)


# ---------------------------------------------------------------- the clip_features stage


class _SceneWriter:
    """Writes one scene's ``features.npy`` row by row through a memmap under a temporary name."""

    def __init__(self, scene_dir: Path, n_max: int, grid: dict):
        self.dir, self.n_max, self.grid = scene_dir, n_max, grid
        self.dir.mkdir(parents=True, exist_ok=True)
        gh, gw = grid["grid"]
        self.shape = (gh, gw, grid["feature_dim"])
        self._ctx = atomic_path(self.dir / "features.npy")
        self.tmp = self._ctx.__enter__()
        self._short = self.dir / f".{self.tmp.name}.short.tmp"  # a stale one is removed like any ".*.tmp"
        self.mm = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=FEATURE_DTYPE, shape=(n_max, *self.shape))
        self.frames: list[int] = []

    def write(self, rows: np.ndarray, frames: list[int]) -> None:
        n = len(self.frames)
        self.mm[n:n + len(frames)] = rows
        self.frames.extend(frames)

    def close(self) -> int:
        n = len(self.frames)
        if n < self.n_max:  # some frames did not decode: copy the written rows into a file of the right length
            short = np.lib.format.open_memmap(self._short, mode="w+", dtype=FEATURE_DTYPE, shape=(n, *self.shape))
            for i in range(0, n, 64):
                j = min(n, i + 64)
                short[i:j] = self.mm[i:j]
            short.flush()
            del short
            self.mm.flush()
            del self.mm
            os.replace(self._short, self.tmp)
        else:
            self.mm.flush()
            del self.mm
        self._ctx.__exit__(None, None, None)
        with atomic_path(self.dir / "frames.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(self.frames, dtype=np.int32))
        write_json(self.dir / "grid.json", self.grid)
        return n

    def abort(self) -> None:
        try:
            del self.mm
        except AttributeError:
            pass
        self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
        self._short.unlink(missing_ok=True)


def cache_features(handle: ClipHandle, data_root: Path, scene_ids: list[str], frames: dict[str, list[int]],
                   out_dir: Path, batch_size: int, workers: int, progress: bool = False) -> dict:
    """Compute and write dense features of ``frames[scene]`` for every scene; returns per-scene counts.

    One DataLoader runs over all scenes (decoding in ``workers`` processes while the model runs); each
    scene's rows go to its memmap as soon as they are computed, so memory holds at most a few batches.
    """
    data_root, out_dir = Path(data_root), Path(out_dir)
    scenes = [Scene(data_root / "scenes" / s) for s in scene_ids]
    if not scenes:
        return {"scenes": {}, "frames": 0, "skipped": {}}
    input_size = dense_input_size(handle, scenes[0].meta["color_size"])
    items = [(i, f) for i, s in enumerate(scene_ids) for f in frames[s]]
    remaining = {i: len(frames[s]) for i, s in enumerate(scene_ids)}
    writers: dict[int, _SceneWriter] = {}
    per_scene: dict[str, dict] = {}
    skipped: dict[str, int] = {}

    def writer(si: int) -> _SceneWriter:
        if si not in writers:
            grid = grid_geometry(handle, scenes[si].meta["color_size"], input_size)
            writers[si] = _SceneWriter(out_dir / scene_ids[si], len(frames[scene_ids[si]]), grid)
        return writers[si]

    def finish(si: int) -> None:
        n = writer(si).close()
        del writers[si]
        per_scene[scene_ids[si]] = {"frames": n, "skipped": len(frames[scene_ids[si]]) - n}

    # scenes without any sampled frame still get (empty) files
    for si in [i for i, n in remaining.items() if n == 0]:
        finish(si)
    loader = frame_loader(data_root, scene_ids, items, input_size, handle.mean, handle.std, batch_size, workers)
    try:
        for images, meta, bad in tqdm(loader, desc="clip features", unit="batch", disable=not progress):
            done: list[int] = []
            if images is not None:
                feats = dense_features(handle, images).to(torch.float16).cpu().numpy()
                k = 0
                while k < len(meta):  # consecutive rows of one scene are written at once
                    si = meta[k][0]
                    j = k
                    while j < len(meta) and meta[j][0] == si:
                        j += 1
                    writer(si).write(feats[k:j], [f for _, f in meta[k:j]])
                    faults.point("clip_features.write", scene=scene_ids[si])
                    remaining[si] -= j - k
                    done.append(si)
                    k = j
            for si, _, reason in bad:
                writer(si)
                skipped[reason] = skipped.get(reason, 0) + 1
                remaining[si] -= 1
                done.append(si)
            for si in sorted(set(done)):
                if remaining[si] == 0:
                    finish(si)
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    for si in list(writers):
        finish(si)
    return {"scenes": per_scene, "frames": sum(v["frames"] for v in per_scene.values()), "skipped": skipped,
            "input_size": list(input_size)}


def run_stage(cfg: dict, data_root: Path, out_dir: Path, device, progress: bool = True,
              checkpoint: Path | None = None) -> dict:
    """The ``clip_features`` stage: dense features of the train and val scenes' sampled frames, text embeddings
    of the label sets, and ``manifest.json`` (last). ``out_dir`` is written in place (the caller makes it atomic).
    """
    t0 = time.perf_counter()
    clip_cfg = cfg["clip"]
    handle = load_clip(clip_cfg, device, checkpoint)
    ds = Dataset(data_root)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # an interrupted rewrite is never taken as complete
    skip = int(cfg["correspondences"]["frame_skip"])
    scene_ids, split_of, frames = [], {}, {}
    for split in FEATURE_SPLITS:
        for sid in ds.split(split):
            scene = ds.scene(sid)
            scene_ids.append(sid)
            split_of[sid] = split
            frames[sid] = scene.sampled_frames(skip)
    feat_cfg = clip_cfg.get("features", {})
    result = cache_features(handle, data_root, scene_ids, frames, out_dir, int(feat_cfg.get("batch_size", 16)),
                            int(feat_cfg.get("workers", 2)), progress=progress)
    t_feat = time.perf_counter() - t0

    text = {"identity": handle.identity}
    for name in TEXT_LABEL_SETS:
        text[name] = label_set_text(handle, LABEL_SETS[name].classes, clip_cfg["prompt"], clip_cfg["templates"])
    with atomic_path(out_dir / TEXT_FILE) as tmp:
        torch.save(text, tmp)

    for sid, entry in result["scenes"].items():
        entry["split"] = split_of[sid]
    grid = grid_geometry(handle, ds.scene(scene_ids[0]).meta["color_size"]) if scene_ids else {}
    manifest = {
        "identity": handle.identity,
        "label_set": ds.label_set.name,
        "frame_skip": skip,
        "scenes": result["scenes"],
        "frames": result["frames"],
        "skipped": result["skipped"],
        "input_size": grid.get("input_size"),
        "grid": grid.get("grid"),
        "patch_size": handle.patch_size,
        "feature_dim": handle.embed_dim,
        "dtype": np.dtype(FEATURE_DTYPE).name,
        "text_embeddings": TEXT_FILE,
        "text_label_sets": list(TEXT_LABEL_SETS),
    }
    write_json(out_dir / MANIFEST, manifest)
    seconds = time.perf_counter() - t0
    return {"clip_model": handle.name, "clip_pretrained": clip_cfg["pretrained"],
            "clip_weights_sha256": handle.identity["weights_sha256"],
            "scenes": len(result["scenes"]), "frames": result["frames"],
            "frames_skipped": int(sum(result["skipped"].values())), "skipped": result["skipped"],
            "grid_h": manifest["grid"][0] if manifest["grid"] else 0,
            "grid_w": manifest["grid"][1] if manifest["grid"] else 0,
            "feature_dim": handle.embed_dim, "seconds_features": round(t_feat, 2), "seconds": round(seconds, 2),
            "frames_per_second": round(result["frames"] / t_feat, 2) if t_feat > 0 else 0.0}


# ---------------------------------------------------------------- reading the cache


@dataclass
class FeatureCache:
    """A validated ``clip_features`` output directory."""

    root: Path
    manifest: dict

    @property
    def identity(self) -> dict:
        return self.manifest["identity"]

    @property
    def scene_ids(self) -> list[str]:
        return list(self.manifest["scenes"])

    def grid(self, scene_id: str) -> dict:
        return json.loads((self.root / scene_id / "grid.json").read_text())

    def frames(self, scene_id: str) -> np.ndarray:
        return np.load(self.root / scene_id / "frames.npy")

    def features(self, scene_id: str) -> np.ndarray:
        """``[F, gh, gw, d]`` float16, memory-mapped (read-only)."""
        return np.load(self.root / scene_id / "features.npy", mmap_mode="r")

    def text(self) -> dict:
        return load_text_embeddings(self.root, self.identity)


def _describe(identity: dict) -> str:
    sha = str(identity.get("weights_sha256", "?"))[:12]
    return f"model {identity.get('model')!r} ({identity.get('pretrained')}, weights sha256 {sha}...)"


def load_features(out_dir: Path, expected_identity: dict) -> FeatureCache:
    """Open a features cache; a cache of another CLIP (model or weights) is a one-line ``InputError``."""
    path = Path(out_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: file not found (run the clip_features stage)") from None
    except json.JSONDecodeError:
        raise InputError(f"{path}: not valid JSON (rerun the clip_features stage)") from None
    got = manifest.get("identity") or {}
    if not same_weights(got, expected_identity):
        raise InputError(f"{path}: CLIP features were made with {_describe(got)}, expected "
                         f"{_describe(expected_identity)} (rerun the clip_features stage)")
    return FeatureCache(Path(out_dir), manifest)


def load_text_embeddings(out_dir: Path, expected_identity: dict | None = None) -> dict:
    path = Path(out_dir) / TEXT_FILE
    try:
        text = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found (run the clip_features stage)") from None
    if expected_identity is not None and not same_weights(text.get("identity") or {}, expected_identity):
        raise InputError(f"{path}: text embeddings were made with {_describe(text.get('identity') or {})}, expected "
                         f"{_describe(expected_identity)} (rerun the clip_features stage)")
    return text
