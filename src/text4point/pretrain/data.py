"""Pre-training data: frames (pixel <-> point) and frame pairs (point <-> point), read lazily from memmaps.

Two datasets over the outputs of the ``correspondences`` and ``clip_features`` stages:

:class:`FrameDataset` (``text4point``, ``image_contrast``): one item per (scene, kept frame) that has
points, a self pair with matches and a cached CLIP feature map. An item holds

- the frame's voxel points (``pos``, world metres) and colours (``x = rgb / 255``), at most ``max_points``
  of them (a seeded random subset) in a seeded random order (farthest-point sampling starts at the first
  point of a cloud, so the order is the only source of variety there);
- ``num_matches`` pixel <-> point correspondences drawn (seeded, without replacement) from the frame's self
  pair (its colour image with its own points) and, when ``cross_frame`` is true, from the pairs ``(a, f)``,
  ``a != f``: the colour image of an overlapping frame ``a`` with the points of this frame ``f`` - the
  paper's "image and point cloud from different, overlapping frames". A match is (local point index,
  image, colour pixel); its CLIP feature ``h2D`` is looked up in the image's dense feature map through the
  grid geometry (:func:`~text4point.clip.features.features_at_pixels`), so only the sampled pixels' features
  are read.

:class:`PairDataset` (``pointcontrast``): one item per unordered non-self pair ``(a, b)`` of a scene, with
both frames' points (subset and shuffled as above, each rotated by an independent seeded random angle about
the gravity axis z, as PointContrast augments its pairs) and ``num_matches`` point <-> point
correspondences. Two points correspond when they are the voxel points of one voxel: every frame is
voxelized on the same world-aligned grid (``correspondences.voxel_size``), a voxel point is the mean of its
voxel's samples and therefore lies in that voxel, so ``floor(p / voxel_size)`` of the (pre-rotation) world
position is the voxel's key in either frame. This is the definition of the pairs' ``overlap`` as well, and
it needs no depth test (both frames observed the voxel).

Randomness of an item depends only on ``(seed, epoch, index)``: the sampler hands ``(epoch, index)`` keys to
the workers (:class:`EpochSampler`), so persistent workers, resumed runs and any number of workers give the
same batches. The large arrays (points, colours, matches, features) are memory maps opened on first use in
each worker; an item reads only its frame's slices. The small per-scene index arrays (frames, offsets,
pairs) are read once when the dataset is built.

Batches follow PyTorch Geometric (``x``, ``pos``, ``batch``), with match indices offset into the batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..clip.cache import FeatureCache
from ..clip.dense import features_at_pixels, pixel_to_cell
from ..corrfiles import check_matches_scene, load_manifest
from ..errors import InputError
from ..fsutil import read_array
from ..names import IMAGE_VARIANTS, PAIR_VARIANTS, VARIANTS
from ..point_features import channels_of, check_channels, floor_height, geometry_arrays
from ..scene import Dataset

IMAGE_KEY_STRIDE = 1 << 20  # image key = scene index * stride + frame row (frames per scene < 2**20)


def _load_small(scene_dir: Path) -> dict[str, np.ndarray]:
    """The per-scene index arrays (read fully: a few KB)."""
    return {name: read_array(scene_dir / f"{name}.npy") for name in ("frames", "point_offsets", "pairs",
                                                                      "match_offsets")}


def _open_big(scene_dir: Path) -> dict[str, np.ndarray]:
    return {name: read_array(scene_dir / f"{name}.npy", mmap=True) for name in ("points", "colors", "matches")}


class _Lazy:
    """Memory maps opened on first use in each process (never pickled to workers)."""

    def __init__(self):
        self._big: dict[int, dict] = {}
        self._feat: dict[int, np.ndarray] = {}

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()


def _seeded_rng(seed: int, epoch: int, index: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index), int(salt)])


def _subset(n: int, max_points: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random order of at most ``max_points`` of ``n`` points, and the inverse map (-1: dropped)."""
    keep = rng.permutation(n)[:max_points]
    inv = np.full(n, -1, np.int64)
    inv[keep] = np.arange(len(keep))
    return keep, inv


def _split_key(key) -> tuple[int, int]:
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return 0, int(key)


class _Base(torch.utils.data.Dataset):
    def __init__(self, corr_dir: Path, data_root: Path, scene_ids: list[str], max_points: int,
                 num_matches: int, seed: int):
        self.corr_dir = Path(corr_dir)
        self.scene_ids = list(scene_ids)
        self.max_points, self.num_matches, self.seed = int(max_points), int(num_matches), int(seed)
        if not self.scene_ids:
            raise InputError(f"{self.corr_dir}: no scenes to pre-train on")
        manifest = load_manifest(self.corr_dir)
        self.voxel_size = float(manifest["params"]["voxel_size"])
        ds = Dataset(data_root)
        self.small = []
        for sid in self.scene_ids:
            d = self.corr_dir / sid
            if not (d / "frames.npy").exists():
                raise InputError(f"{d}: scene {sid} has no correspondences (rerun the correspondences stage)")
            check_matches_scene(d, ds.scene(sid))
            self.small.append(_load_small(d))
        self._lazy = _Lazy()
        self.skipped: dict[str, int] = {}
        self.channels: tuple[str, ...] = ("rgb",)  # input channels (point_features); set by build_dataset
        self._floor: dict[int, float] = {}

    def floor(self, si: int) -> float:
        """The scan's floor estimate: point_features.floor_height of the voxels of all of its kept frames."""
        if si not in self._floor:
            self._floor[si] = floor_height(np.asarray(self._big(si)["points"][:, 2]))
        return self._floor[si]

    def _x(self, x: np.ndarray, geo: dict | None, rotation: np.ndarray | None = None) -> np.ndarray:
        """The network input of a frame view: the colour alone, or the channels (normals rotated with the view)."""
        return x if geo is None else channels_of(self.channels, x, geo, rotation)

    def _big(self, si: int) -> dict[str, np.ndarray]:
        got = self._lazy._big.get(si)
        if got is None:
            got = self._lazy._big[si] = _open_big(self.corr_dir / self.scene_ids[si])
        return got

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def _frame_cloud(self, si: int, f: int, rng: np.random.Generator):
        """(pos [n,3] float32, x [n,3] float32 in [0, 1], inverse map: frame point -> row or -1, geometry): the
        geometry (point_features.geometry_arrays: height above the scan's floor, normals and shape features by PCA
        within the frame, on all of its voxels before the subset) is None for rgb-only networks."""
        po = self.small[si]["point_offsets"]
        big = self._big(si)
        lo, hi = int(po[f]), int(po[f + 1])
        keep, inv = _subset(hi - lo, self.max_points, rng)
        keep_sorted = np.sort(keep)  # contiguous-ish reads from the memmap, then reordered
        pts = np.asarray(big["points"][lo:hi][keep_sorted], np.float32)
        cols = np.asarray(big["colors"][lo:hi][keep_sorted])
        order = np.searchsorted(keep_sorted, keep)
        pos = pts[order]
        x = cols[order].astype(np.float32) / 255.0
        if self.channels == ("rgb",):
            return pos, x, inv, None
        geo = geometry_arrays(np.asarray(big["points"][lo:hi], np.float32), self.channels, self.floor(si))
        return pos, x, inv, {k: v[keep] for k, v in geo.items()}


# ---------------------------------------------------------------- frames (pixel <-> point)


class FrameDataset(_Base):
    """(scene, kept frame) items with pixel <-> point matches and their CLIP features (see the module doc).

    Args:
        corr_dir: the ``correspondences`` stage's output directory.
        data_root: the dataset root (to check that the correspondences were made from its scans).
        features: the ``clip_features`` cache (:func:`~text4point.clip.features.load_features`).
        scene_ids: scenes to use (e.g. the ``train`` split).
        max_points: points per frame at most.
        num_matches: matches drawn per frame.
        seed: the data seed.
        cross_frame: also draw matches of overlapping pairs ``(a, f)``, ``a != f``.
    """

    def __init__(self, corr_dir: Path, data_root: Path, features: FeatureCache, scene_ids: list[str],
                 max_points: int, num_matches: int, seed: int, cross_frame: bool = False):
        super().__init__(corr_dir, data_root, scene_ids, max_points, num_matches, seed)
        self.features_root = features.root
        self.cross_frame = bool(cross_frame)
        self.grids, self.feature_rows, self.items = [], [], []
        self.sources: list[dict[int, list[int]]] = []  # per scene: frame -> pair rows whose points are that frame
        cached = set(features.scene_ids)
        for si, sid in enumerate(self.scene_ids):
            if sid not in cached:
                raise InputError(f"{features.root}: scene {sid} has no CLIP features (rerun the clip_features stage "
                                 f"with the same dataset)")
            s = self.small[si]
            grid = features.grid(sid)
            self.grids.append(grid)
            feature_frames = features.frames(sid)
            fmap = features.features(sid)  # opened here, in the main process: a damaged file is one line
            if fmap.ndim != 4 or len(fmap) != len(feature_frames):
                raise InputError(f"{features.root / sid / 'features.npy'}: expected {len(feature_frames)} frames of "
                                 f"features [frames, gh, gw, d] (frames.npy), got shape {list(fmap.shape)}")
            rows = {int(fid): r for r, fid in enumerate(feature_frames.tolist())}
            frame_rows = np.array([rows.get(int(fid), -1) for fid in s["frames"]], np.int64)
            self.feature_rows.append(frame_rows)
            pairs, mo, po = s["pairs"], s["match_offsets"], s["point_offsets"]
            counts = np.diff(mo)
            src: dict[int, list[int]] = {}
            for q, (a, b) in enumerate(pairs.tolist()):
                if counts[q] == 0 or frame_rows[a] < 0:
                    continue
                if a == b or self.cross_frame:
                    src.setdefault(b, []).append(q)
            self.sources.append(src)
            for f in range(len(s["frames"])):
                if po[f + 1] == po[f]:
                    self._skip("no_points")
                elif frame_rows[f] < 0:
                    self._skip("no_features")
                elif not any(pairs[q, 0] == f for q in src.get(f, [])):
                    self._skip("no_self_matches")
                else:
                    self.items.append((si, f))
        if not self.items:
            raise InputError(f"{self.corr_dir}: no usable frames in scenes {self.scene_ids[:5]} (skipped: "
                             f"{self.skipped}); check the correspondences and clip_features outputs")

    def _features(self, si: int) -> np.ndarray:
        got = self._lazy._feat.get(si)
        if got is None:
            got = self._lazy._feat[si] = read_array(self.features_root / self.scene_ids[si] / "features.npy",
                                                    mmap=True)
        return got

    def __len__(self) -> int:
        return len(self.items)

    def name(self, index: int) -> str:
        si, f = self.items[index]
        return f"{self.scene_ids[si]}/frame {int(self.small[si]['frames'][f])}"

    def __getitem__(self, key) -> dict:
        epoch, index = _split_key(key)
        si, f = self.items[index]
        rng = _seeded_rng(self.seed, epoch, index)
        pos, x, inv, geo = self._frame_cloud(si, f, rng)
        x = self._x(x, geo)
        s, big = self.small[si], self._big(si)
        po0 = int(s["point_offsets"][f])
        pix, pts, img = [], [], []
        for q in self.sources[si].get(f, []):
            lo, hi = int(s["match_offsets"][q]), int(s["match_offsets"][q + 1])
            m = np.asarray(big["matches"][lo:hi])
            local = inv[m[:, 1].astype(np.int64) - po0]
            ok = local >= 0
            pix.append(m[ok, 0].astype(np.int64))
            pts.append(local[ok])
            img.append(np.full(int(ok.sum()), int(s["pairs"][q, 0]), np.int64))
        pix = np.concatenate(pix) if pix else np.zeros(0, np.int64)
        pts = np.concatenate(pts) if pts else np.zeros(0, np.int64)
        img = np.concatenate(img) if img else np.zeros(0, np.int64)
        if len(pix) > self.num_matches:
            pick = np.sort(rng.choice(len(pix), self.num_matches, replace=False))
            pix, pts, img = pix[pick], pts[pick], img[pick]
        grid = self.grids[si]
        W = int(grid["color_size"][0])
        u, v = pix % W, pix // W
        row, col = pixel_to_cell(u, v, grid)
        cell = row * int(grid["grid"][1]) + col
        feats = self._features(si)
        d = int(feats.shape[-1])
        h2d = np.empty((len(pix), d), np.float16)
        for a in np.unique(img):
            sel = img == a
            fmap = np.asarray(feats[int(self.feature_rows[si][a])])
            h2d[sel] = features_at_pixels(fmap, u[sel], v[sel], grid)
        image_key = si * IMAGE_KEY_STRIDE + img
        return {"pos": pos, "x": x, "m_point": pts, "m_cell": cell, "m_image": image_key, "h2d": h2d,
                "name": self.name(index), "cells": int(grid["grid"][0]) * int(grid["grid"][1])}


class _Batch:
    """``to`` / ``pin_memory`` / ``num_points`` of the batch dataclasses: every tensor field moves, the host
    fields (counts, names) stay."""

    def _map(self, fn):
        return dataclasses.replace(self, **{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), Tensor)})

    def to(self, device, non_blocking: bool = False):
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self):
        return self._map(lambda t: t.pin_memory())

    @property
    def num_points(self) -> int:
        return int(self.pos.size(0))


@dataclass
class FrameBatch(_Batch):
    """A batch of frames: PyG-style clouds and the sampled pixel <-> point matches.

    ``m_point`` indexes ``pos``/``x`` (offset into the batch); ``h2d`` (``M × d``, float16 as cached) is
    CLIP's dense feature at each match's pixel; ``pixel_id`` numbers the distinct (image, feature cell)
    pairs of the batch (matches of one cell share their ``h2D``: the InfoNCE's ``ids_a``). The matches are
    grouped by frame, ``m_counts[k]`` of frame ``k`` (a host list: the per-frame InfoNCE splits on it
    without a device synchronisation).
    """

    x: Tensor
    pos: Tensor
    batch: Tensor
    m_point: Tensor
    pixel_id: Tensor
    h2d: Tensor
    m_counts: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    num_clouds: int = 0



def _clouds(samples: list[dict], pos_key: str = "pos", x_key: str = "x") -> tuple[Tensor, Tensor, Tensor, np.ndarray]:
    sizes = np.array([len(s[pos_key]) for s in samples], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pos = torch.from_numpy(np.concatenate([s[pos_key] for s in samples]))
    x = torch.from_numpy(np.concatenate([s[x_key] for s in samples]))
    batch = torch.repeat_interleave(torch.arange(len(samples)), torch.from_numpy(sizes))
    return x, pos, batch, offsets


def collate_frames(samples: list[dict]) -> FrameBatch:
    """Frames -> :class:`FrameBatch`; a batch without any match is a one-line ``InputError`` naming its frames."""
    names = [s["name"] for s in samples]
    total = sum(len(s["m_point"]) for s in samples)
    if total == 0:
        raise InputError(f"pre-training batch of {', '.join(names)}: no pixel-point matches left after "
                         f"subsampling the points (max_points) - every frame of it is empty")
    x, pos, batch, offsets = _clouds(samples)
    m_point = torch.from_numpy(np.concatenate([s["m_point"] + o for s, o in zip(samples, offsets)]))
    cells = max(s["cells"] for s in samples)
    key = np.concatenate([s["m_image"] * cells + s["m_cell"] for s in samples])
    _, pixel_id = np.unique(key, return_inverse=True)
    h2d = torch.from_numpy(np.concatenate([s["h2d"] for s in samples]))
    return FrameBatch(x=x, pos=pos, batch=batch, m_point=m_point, pixel_id=torch.from_numpy(pixel_id.reshape(-1)),
                      h2d=h2d, m_counts=[len(s["m_point"]) for s in samples], names=names,
                      num_clouds=len(samples))


def build_dataset(variant: str, corr_dir: Path, data_root: Path, features: FeatureCache | None,
                  scene_ids: list[str], pcfg: dict, seed: int) -> _Base:
    """The dataset of ``variant`` from the ``pretrain`` params section ``pcfg`` (``cross_frame``: image-variant
    matches also from overlapping frames' images)."""
    if variant in PAIR_VARIANTS:
        from .pairs import PairDataset

        data = PairDataset(corr_dir, data_root, scene_ids, pcfg["max_points"], pcfg["num_matches"], seed)
    elif variant not in IMAGE_VARIANTS:
        raise InputError(f"pretrain.variants: expected one of {list(VARIANTS)}, got {variant!r}")
    elif features is None:
        raise InputError(f"pretrain variant {variant}: needs the clip_features output (none was given)")
    else:
        data = FrameDataset(corr_dir, data_root, features, scene_ids, pcfg["max_points"], pcfg["num_matches"], seed,
                            cross_frame=bool(pcfg["cross_frame"]))
    data.channels = check_channels(pcfg["channels"], "pretrain.channels")
    return data


def collate_for(variant: str):
    """The collate function of ``variant``'s dataset."""
    if variant in PAIR_VARIANTS:
        from .pairs import collate_pairs

        return collate_pairs
    return collate_frames


__all__ = ["FrameBatch", "FrameDataset", "build_dataset", "collate_for", "collate_frames"]
