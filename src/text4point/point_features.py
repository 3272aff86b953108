"""Per-point input channels of the 3D networks, computed the same way for a whole scene and for one depth frame.

The networks see, per voxel, the channels named in ``channels`` (in this order):

- ``rgb``: the colour in ``[0, 1]`` (3 channels);
- ``height``: ``z - floor_z`` in metres (1 channel), ``z`` the gravity axis and ``floor_z`` the scene's floor
  estimate :func:`floor_height`: a low quantile of the z of *all* of the scene's points (for a fine-tuning
  scene: its voxels; for a pre-training frame: the voxels of every frame of its scan, so a frame that does not
  see the floor still gets the scene's floor);
- ``normal`` / ``normal64``: the absolute value of each component of the unit surface normal (3 channels), the
  eigenvector of the smallest eigenvalue of the covariance of the point's 16 / 64 nearest neighbours in the same
  cloud (:func:`local_geometry`). The sign of a PCA normal is arbitrary, so its absolute value is fed; a view's
  rotation about z is applied to the signed normal before the absolute value is taken (:func:`channels_of`);
- ``shape`` / ``shape64``: the eigenvalue features of the same covariance (``λ1 ≥ λ2 ≥ λ3``): linearity
  ``(λ1 - λ2) / λ1``, planarity ``(λ2 - λ3) / λ1`` and scattering ``λ3 / λ1`` (3 channels, in [0, 1],
  invariant to rotation and scale).

With 5 cm voxels, 16 neighbours span about 10 cm and 64 about 20-25 cm of a surface: the ``64`` channels say
whether a point lies on a large flat surface (wall, floor, table top) or on a small or curved object.
Height is relative to the floor, so every channel is translation-invariant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.spatial import cKDTree

from .errors import InputError

CHANNEL_SIZES = {"rgb": 3, "height": 1, "normal": 3, "shape": 3, "normal64": 3, "shape64": 3}
CHANNEL_K = {"normal": 16, "shape": 16, "normal64": 64, "shape64": 64}
ROTATED = ("normal", "normal64")
FLOOR_QUANTILE = 0.01
NORMAL_K = 16


def check_channels(channels: Sequence[str], where: str = "channels") -> tuple[str, ...]:
    """``channels`` as a tuple of known, distinct names, or a one-line error naming ``where``."""
    got = tuple(str(c) for c in channels)
    bad = [c for c in got if c not in CHANNEL_SIZES]
    if not got or bad or len(set(got)) != len(got):
        raise InputError(f"{where}: expected distinct names among {list(CHANNEL_SIZES)}, got {list(got)}")
    return got


def num_channels(channels: Sequence[str]) -> int:
    """The backbone's ``in_channels`` for ``channels``."""
    return sum(CHANNEL_SIZES[c] for c in check_channels(channels))


def floor_height(z: np.ndarray, quantile: float = FLOOR_QUANTILE) -> float:
    """The floor estimate of a scene: the ``quantile`` of its points' z (robust to a few points below the
    floor, unlike the minimum)."""
    z = np.asarray(z, np.float64).reshape(-1)
    if z.size == 0:
        raise InputError("floor_height: expected at least one point, got none")
    return float(np.quantile(z, quantile))


def local_geometry(pos: np.ndarray, k: int = NORMAL_K) -> tuple[np.ndarray, np.ndarray]:
    """(signed unit normals ``[N, 3]``, eigenvalue features ``[N, 3]``: linearity, planarity, scattering), float32,
    by PCA of each point's ``k`` nearest neighbours (the point included; a k-d tree query). A cloud of fewer than 3
    points gets normals ``(0, 0, 1)`` and features 0."""
    p = np.asarray(pos, np.float64).reshape(-1, 3)
    n = len(p)
    if n < 3:
        return np.tile(np.array([[0.0, 0.0, 1.0]], np.float32), (n, 1)), np.zeros((n, 3), np.float32)
    kk = min(int(k), n)
    _, nb = cKDTree(p).query(p, kk)
    q = p[nb.reshape(n, kk)]  # [N, k, 3]
    d = q - q.mean(1, keepdims=True)
    vals, vecs = np.linalg.eigh(d.transpose(0, 2, 1) @ d / kk)  # ascending eigenvalues
    l3, l2, l1 = (np.maximum(vals[:, i], 0.0) for i in range(3))
    l1 = np.maximum(l1, 1e-12)
    shape = np.stack([(l1 - l2) / l1, (l2 - l3) / l1, l3 / l1], 1)
    return vecs[:, :, 0].astype(np.float32), np.clip(shape, 0.0, 1.0).astype(np.float32)


def estimate_normals(pos: np.ndarray, k: int = NORMAL_K) -> np.ndarray:
    """Signed unit normals ``[N, 3]`` (float32) by PCA of ``k`` nearest neighbours (see :func:`local_geometry`)."""
    return local_geometry(pos, k)[0]


def geometry_arrays(pos: np.ndarray, channels: Sequence[str], floor_z: float | None = None) -> dict[str, np.ndarray]:
    """The per-point arrays that ``channels`` need besides the colour (``height``, signed ``normal*``,
    ``shape*``), from positions in metres (z up); ``floor_z`` defaults to :func:`floor_height` of ``pos``."""
    pos = np.asarray(pos, np.float32).reshape(-1, 3)
    out: dict[str, np.ndarray] = {}
    channels = check_channels(channels)
    if "height" in channels:
        fz = floor_height(pos[:, 2]) if floor_z is None else float(floor_z)
        out["height"] = (pos[:, 2] - fz).astype(np.float32)
    for k in sorted({CHANNEL_K[c] for c in channels if c in CHANNEL_K}):
        normal, shape = local_geometry(pos, k)
        suffix = "" if k == 16 else str(k)
        out["normal" + suffix], out["shape" + suffix] = normal, shape
    return out


def channels_of(channels: Sequence[str], rgb: np.ndarray, arrays: Mapping[str, np.ndarray],
                rotation: np.ndarray | None = None) -> np.ndarray:
    """The input features ``[N, C]`` (float32) of ``channels`` from the colour ``[N, 3]`` in ``[0, 1]`` and the
    :func:`geometry_arrays` (signed normals rotated by ``rotation`` ``3 × 3``, the view's rotation, before the
    absolute value)."""
    cols = []
    for c in check_channels(channels):
        if c == "rgb":
            cols.append(np.asarray(rgb, np.float32).reshape(-1, 3))
        elif c in ROTATED:
            nrm = np.asarray(arrays[c], np.float32).reshape(-1, 3)
            if rotation is not None:
                nrm = nrm @ np.asarray(rotation, np.float32).T
            cols.append(np.abs(nrm))
        else:
            cols.append(np.asarray(arrays[c], np.float32).reshape(len(rgb), -1))
    return np.concatenate(cols, 1).astype(np.float32)


__all__ = ["CHANNEL_K", "CHANNEL_SIZES", "FLOOR_QUANTILE", "NORMAL_K", "channels_of", "check_channels",
           "estimate_normals", "floor_height", "geometry_arrays", "local_geometry", "num_channels"]
