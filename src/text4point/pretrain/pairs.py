"""Pre-training data of the ``pointcontrast`` variant: pairs of overlapping frames with their point <-> point
correspondences (see :mod:`.data` for the shared conventions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from .data import _Base, _Batch, _clouds, _seeded_rng, _split_key


def _voxel_keys(pos: np.ndarray, voxel_size: float) -> np.ndarray:
    cell = np.floor(pos.astype(np.float64) / voxel_size).astype(np.int64) + (1 << 20)
    return (cell[:, 0] << 42) | (cell[:, 1] << 21) | cell[:, 2]


def _rotate_z(pos: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(angle), np.sin(angle)
    R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], np.float32)
    return pos @ R.T, R


class PairDataset(_Base):
    """Unordered non-self frame pairs of a scene with point <-> point matches (see the module doc).

    ``rotate``: rotate each frame by an independent random angle about z (PointContrast's augmentation).
    """

    def __init__(self, corr_dir: Path, data_root: Path, scene_ids: list[str], max_points: int,
                 num_matches: int, seed: int, rotate: bool = True):
        super().__init__(corr_dir, data_root, scene_ids, max_points, num_matches, seed)
        self.rotate = bool(rotate)
        self.items = []
        for si in range(len(self.scene_ids)):
            s = self.small[si]
            po = s["point_offsets"]
            for a, b in s["pairs"].tolist():
                if a < b:
                    if po[a + 1] == po[a] or po[b + 1] == po[b]:
                        self._skip("no_points")
                    else:
                        self.items.append((si, a, b))
        if not self.items:
            raise InputError(f"{self.corr_dir}: no overlapping frame pairs in scenes {self.scene_ids[:5]} "
                             f"(pointcontrast needs pairs; lower correspondences.overlap_threshold?)")

    def __len__(self) -> int:
        return len(self.items)

    def name(self, index: int) -> str:
        si, a, b = self.items[index]
        fr = self.small[si]["frames"]
        return f"{self.scene_ids[si]}/frames {int(fr[a])}+{int(fr[b])}"

    def __getitem__(self, key) -> dict:
        epoch, index = _split_key(key)
        si, a, b = self.items[index]
        rng = _seeded_rng(self.seed, epoch, index)
        pos_a, x_a, _, geo_a = self._frame_cloud(si, a, rng)
        pos_b, x_b, _, geo_b = self._frame_cloud(si, b, rng)
        _, ia, ib = np.intersect1d(_voxel_keys(pos_a, self.voxel_size), _voxel_keys(pos_b, self.voxel_size),
                                   assume_unique=False, return_indices=True)
        if len(ia) > self.num_matches:
            pick = np.sort(rng.choice(len(ia), self.num_matches, replace=False))
            ia, ib = ia[pick], ib[pick]
        rot_a = rot_b = None
        if self.rotate:
            pos_a, rot_a = _rotate_z(pos_a, rng.uniform(0, 2 * np.pi))
            pos_b, rot_b = _rotate_z(pos_b, rng.uniform(0, 2 * np.pi))
        x_a, x_b = self._x(x_a, geo_a, rot_a), self._x(x_b, geo_b, rot_b)
        return {"pos_a": pos_a, "x_a": x_a, "pos_b": pos_b, "x_b": x_b, "m_a": ia.astype(np.int64),
                "m_b": ib.astype(np.int64), "name": self.name(index)}


@dataclass
class PairBatch(_Batch):
    """A batch of frame pairs: cloud ``2k`` is frame a of pair k, cloud ``2k + 1`` its frame b;
    ``m_a[i]`` and ``m_b[i]`` index corresponding points (offset into the batch), grouped by pair
    (``m_counts[k]`` of pair ``k``)."""

    x: Tensor
    pos: Tensor
    batch: Tensor
    m_a: Tensor
    m_b: Tensor
    m_counts: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    num_clouds: int = 0



def collate_pairs(samples: list[dict]) -> PairBatch:
    names = [s["name"] for s in samples]
    if sum(len(s["m_a"]) for s in samples) == 0:
        raise InputError(f"pre-training batch of {', '.join(names)}: no corresponding points left after "
                         f"subsampling the points (max_points) - every pair of it is empty")
    clouds = []
    for s in samples:
        clouds.append({"pos": s["pos_a"], "x": s["x_a"]})
        clouds.append({"pos": s["pos_b"], "x": s["x_b"]})
    x, pos, batch, offsets = _clouds(clouds)
    m_a = torch.from_numpy(np.concatenate([s["m_a"] + offsets[2 * k] for k, s in enumerate(samples)]))
    m_b = torch.from_numpy(np.concatenate([s["m_b"] + offsets[2 * k + 1] for k, s in enumerate(samples)]))
    return PairBatch(x=x, pos=pos, batch=batch, m_a=m_a, m_b=m_b, m_counts=[len(s["m_a"]) for s in samples],
                     names=names, num_clouds=len(clouds))


__all__ = ["PairBatch", "PairDataset", "collate_pairs"]
