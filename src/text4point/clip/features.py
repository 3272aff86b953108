"""The ``clip_features`` stage: cache the frozen CLIP's dense image features and the label sets' text embeddings.

For every train and val scene and every frame in ``Scene.sampled_frames(correspondences.frame_skip)``
whose colour image decodes, the dense features (:func:`text4point.clip.dense.dense_features`) are written
incrementally through a memmap, with the grid geometry, the text embeddings and, last, the manifest (the layout
is :mod:`text4point.clip.cache`'s). Frames are decoded at the size the model needs (JPEG draft mode) in threads
that run ahead of the model (:func:`frame_batches`) and resized as a batch on the model's device.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import faults
from ..checkpoints import save
from ..fsutil import atomic_path, write_json
from ..labels import LABEL_SETS
from ..scene import Dataset, FrameDefect, Scene
from .cache import MANIFEST, TEXT_FILE
from .dense import (DENSE_SCALE, FEATURE_DTYPE, decode_color, dense_features, dense_input_size, grid_geometry,
                    label_set_text)
from .load import ClipHandle, load_clip, preprocess_images

TEXT_LABEL_SETS = ("scannet20", "s3dis13", "sunrgbd10")
FEATURE_SPLITS = ("train", "val")


# ---------------------------------------------------------------- frame loading (decoding threads)


class FrameImages:
    """Decodes ``(scene index, frame)`` items: ``self[k]`` is ``(scene index, frame, uint8 [H', W', 3] colour at
    the reduced scale the model needs (``decode_color``) or None, defect reason or None)``."""

    def __init__(self, root: Path, scene_ids: list[str], items: list[tuple[int, int]], input_size):
        self.root, self.scene_ids, self.items = Path(root), scene_ids, items
        self.input_size = tuple(input_size)
        self._scenes: dict[int, Scene] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        si, frame = self.items[k]
        scene = self._scenes.get(si)
        if scene is None:
            scene = self._scenes[si] = Scene(self.root / "scenes" / self.scene_ids[si])
        try:
            return si, frame, decode_color(scene, frame, self.input_size), None
        except FrameDefect as e:
            return si, frame, None, e.reason


def frame_batches(root: Path, scene_ids: list[str], items: list[tuple[int, int]], input_size, batch_size: int,
                  workers: int) -> Iterator[tuple]:
    """``([uint8 colour], [(scene index, frame)], [(scene index, frame, defect reason)])`` per ``batch_size``
    items, in order. ``workers`` threads decode the next batches (at most ``2 · workers`` ahead) while the caller
    runs the model; 0 decodes in the caller's thread. Threads, not processes: PIL's decoders release the GIL, and
    a thread costs no process start and no inter-process copy, which on 2 cores cost more than decoding a world
    frame (0.5 ms). They only decode: the resize runs batched in the caller (:func:`_model_input`), as torch
    operations in decoding threads would compete with the model's intra-op threads for the cores."""
    frames = FrameImages(root, scene_ids, items, input_size)

    def load(start: int):
        batch = [frames[k] for k in range(start, min(start + batch_size, len(frames)))]
        return ([b[2] for b in batch if b[2] is not None], [(b[0], b[1]) for b in batch if b[2] is not None],
                [(b[0], b[1], b[3]) for b in batch if b[2] is None])

    starts = iter(range(0, len(frames), batch_size))
    if workers <= 0:
        yield from map(load, starts)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="clip-frames")
    try:
        ahead = deque(pool.submit(load, s) for s in islice(starts, 2 * workers))
        while ahead:
            batch = ahead.popleft().result()
            nxt = next(starts, None)
            if nxt is not None:
                ahead.append(pool.submit(load, nxt))
            yield batch
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _model_input(handle: ClipHandle, colours: list[np.ndarray], input_size) -> torch.Tensor:
    """Decoded frames -> the model's normalized input ``[B, 3, h, w]`` on its device, resized as a batch (the same
    values as :func:`~text4point.clip.dense.frame_tensor` frame by frame); a batch whose frames have different
    decoded sizes (scenes of different colour sizes in one batch) is resized frame by frame, in order."""
    x = torch.from_numpy(np.stack(colours)) if len({c.shape for c in colours}) == 1 else None
    if x is not None:
        x = preprocess_images(x.to(handle.device), input_size, handle.mean, handle.std)
    else:
        x = torch.cat([preprocess_images(torch.from_numpy(c).to(handle.device), input_size, handle.mean, handle.std)
                       for c in colours])
    # the resize keeps the decoded frames' channels-last layout; the model gets the contiguous [B, 3, h, w] that
    # frame-by-frame preprocessing gives (another layout takes other convolution kernels: other roundings)
    return x.contiguous()


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
        # No msync (memmap.flush): it waits for the disk, and no other output of the project is synced either;
        # the rows are in the page cache, which every reader of the renamed file sees.
        n = len(self.frames)
        if n < self.n_max:  # some frames did not decode: copy the written rows into a file of the right length
            short = np.lib.format.open_memmap(self._short, mode="w+", dtype=FEATURE_DTYPE, shape=(n, *self.shape))
            for i in range(0, n, 64):
                j = min(n, i + 64)
                short[i:j] = self.mm[i:j]
            del short
            del self.mm
            os.replace(self._short, self.tmp)
        else:
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
                   out_dir: Path, batch_size: int, workers: int, progress: bool = False,
                   dense_scale: float = DENSE_SCALE) -> dict:
    """Compute and write dense features of ``frames[scene]`` for every scene; returns per-scene counts.

    One pass over all scenes (``workers`` threads decoding the next batches while the model runs, see
    :func:`frame_batches`); each scene's rows go to its memmap as soon as they are computed, so memory holds at
    most a few batches.
    """
    data_root, out_dir = Path(data_root), Path(out_dir)
    scenes = [Scene(data_root / "scenes" / s) for s in scene_ids]
    if not scenes:
        return {"scenes": {}, "frames": 0, "skipped": {}}
    input_size = dense_input_size(handle, scenes[0].meta["color_size"], dense_scale)
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
    loader = frame_batches(data_root, scene_ids, items, input_size, batch_size, workers)
    try:
        for colours, meta, bad in tqdm(loader, desc="clip features", unit="batch", disable=not progress):
            done: list[int] = []
            if colours:
                feats = dense_features(handle, _model_input(handle, colours, input_size))
                feats = feats.to(torch.float16).cpu().numpy()
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
    feat_cfg = clip_cfg["features"]
    result = cache_features(handle, data_root, scene_ids, frames, out_dir, int(feat_cfg["batch_size"]),
                            int(feat_cfg["workers"]), progress=progress, dense_scale=clip_cfg["dense_scale"])
    t_feat = time.perf_counter() - t0

    text = {"identity": handle.identity}
    for name in TEXT_LABEL_SETS:
        text[name] = label_set_text(handle, LABEL_SETS[name].classes, clip_cfg["prompt"], clip_cfg["templates"])
    save(text, out_dir / TEXT_FILE)

    for sid, entry in result["scenes"].items():
        entry["split"] = split_of[sid]
    if scene_ids:
        color_size = ds.scene(scene_ids[0]).meta["color_size"]
        grid = grid_geometry(handle, color_size, dense_input_size(handle, color_size, clip_cfg["dense_scale"]))
    else:
        grid = {}
    manifest = {
        "identity": handle.identity,
        "label_set": ds.label_set.name,
        "frame_skip": skip,
        "scenes": result["scenes"],
        "frames": result["frames"],
        "skipped": result["skipped"],
        "input_size": grid.get("input_size"),
        "grid": grid.get("grid"),
        "patch_size": handle.cell_size,  # input pixels per feature cell, as in grid.json
        "dense_head": handle.dense_head.config if handle.dense_head is not None else None,
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


