"""Geometry shared by the stages: cameras (back-projection, projection), the world-aligned voxel grid, the
nearest-point transfer of per-point values, and axis-aligned 3D boxes (IoU, NMS).

Conventions: camera poses are 4x4 camera-to-world matrices with OpenCV axes (x right, y down, z forward);
intrinsics are 3x3 (or the upper-left 3x3 of a 4x4); depth is z in metres along the optical axis; integer pixel
coordinates are pixel centres, so a point at ``uv`` falls in pixel ``floor(uv + 0.5)``. Boxes are
``(cx, cy, cz, dx, dy, dz)``.

torch_cluster is imported where it is used (voxelization, nearest-point transfer), so that importing this
module (and :mod:`text4point.metrics`, which uses the box functions) does not load it.
"""

from __future__ import annotations

import numpy as np
import torch

from .arrays import boxes_array, int_vector, score_vector
from .runtime import resolve_device

# The voxel grid spans +-GRID_HALF voxels around the world origin in each axis: (2 * 2**19 + 1)**3 < 2**63,
# so every key is a distinct int64 (+-26 km at 5 cm voxels). Points outside are dropped.
GRID_HALF = 2 ** 19


def as_matrix(m, dtype, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(m, dtype=np.float64), device=device).to(dtype)


def affine(M: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``points @ M[:3, :3].T + M[:3, 3]`` for points [N, 3] (a [N, 3] view of a [3, N] product: a 3x3 by
    3xN product is several times faster on CPU than an Nx3 by 3x3 one)."""
    return torch.addmm(M[:3, 3:4], M[:3, :3], points.T).T


def backproject(depth: torch.Tensor, K: torch.Tensor, cam_to_world: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World points [M, 3] of the valid (finite, > 0) pixels of ``depth`` [H, W] and their pixel index v * W + u.

    ``depth`` holds z (metres along the optical axis); ``K`` is the camera's 3x3 intrinsic matrix and
    ``cam_to_world`` its 4x4 pose (OpenCV axes: x right, y down, z forward).
    """
    H, W = depth.shape
    dtype, dev = depth.dtype, depth.device
    flat = depth.reshape(-1)
    pix = torch.nonzero((flat > 0) & torch.isfinite(flat)).squeeze(1)
    z = flat.index_select(0, pix)
    uv1 = torch.stack([(pix % W).to(dtype), torch.div(pix, W, rounding_mode="floor").to(dtype),
                       torch.ones_like(z)])  # [3, M]
    Kinv = torch.linalg.inv(torch.as_tensor(K, device=dev).to(torch.float64)[:3, :3]).to(dtype)
    cam = (Kinv @ uv1).T * z.unsqueeze(1)  # z * K^-1 [u, v, 1]
    return affine(torch.as_tensor(cam_to_world, device=dev).to(dtype), cam), pix


def projection_matrix(K, cam_to_world, dtype=torch.float32, device=None) -> torch.Tensor:
    """4x4 matrix P with P [x y z 1]^T = (u w, v w, w, z_camera) for world points (computed in float64)."""
    K3 = np.asarray(K.cpu() if torch.is_tensor(K) else K, np.float64)[:3, :3]
    T = np.asarray(cam_to_world.cpu() if torch.is_tensor(cam_to_world) else cam_to_world, np.float64)
    w2c = np.linalg.inv(T)
    return torch.as_tensor(np.concatenate([K3 @ w2c[:3], w2c[2:3]]), device=resolve_device(device)).to(dtype)


def project_with(points_world: torch.Tensor, P: torch.Tensor, width: int, height: int):
    """Project world points [N, 3] with a :func:`projection_matrix` ``P``: (uv [N, 2], z [N], inside [N],
    the rounded pixel ``floor(uv + 0.5)`` [N, 2] as floats)."""
    return pixels(torch.addmm(P[:, 3:4], P[:, :3], points_world.T), width, height)


def pixels(img: torch.Tensor, width: int, height: int):
    """What :func:`project_with` returns, from the product ``img`` = P [x y z 1]^T [4, N]."""
    z, w = img[3], img[2]
    front = (z > 1e-6) & (w > 1e-12)
    uv = (img[:2] / torch.where(front, w, torch.ones_like(w))).T
    ui = torch.floor(uv + 0.5)
    inside = front & (ui[:, 0] >= 0) & (ui[:, 0] < width) & (ui[:, 1] >= 0) & (ui[:, 1] < height)
    return uv, z, inside, ui


def project(points_world: torch.Tensor, K: torch.Tensor, cam_to_world: torch.Tensor, width: int,
            height: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project world points [N, 3]: pixel coordinates uv [N, 2] (float), depth z [N] and ``inside`` [N].

    ``inside``: z > 0 and the rounded pixel ``floor(uv + 0.5)`` lies in the width x height image.
    """
    P = projection_matrix(K, cam_to_world, points_world.dtype, points_world.device)
    uv, z, inside, _ = project_with(points_world, P, width, height)
    return uv, z, inside


def voxelize(points: torch.Tensor, voxel_size: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cluster points [N, 3] on the world-aligned grid of ``voxel_size`` (``torch_cluster.grid_cluster``).

    Returns (voxel_points [V, 3]: the mean of each occupied voxel's points, voxel_keys int64 [V] (sorted,
    the same key for the same voxel in every frame), cluster [N]: each point's voxel row). The grid's
    origin is fixed at -GRID_HALF * voxel_size in every axis; points must lie within +-GRID_HALF voxels.
    """
    import torch_cluster

    dev = points.device
    if len(points) == 0:
        return (points.new_zeros((0, 3)), torch.zeros(0, dtype=torch.int64, device=dev),
                torch.zeros(0, dtype=torch.int64, device=dev))
    half = GRID_HALF * float(voxel_size)
    size = torch.full((3,), float(voxel_size), dtype=torch.float64, device=dev)
    start = torch.full((3,), -half, dtype=torch.float64, device=dev)
    end = torch.full((3,), half, dtype=torch.float64, device=dev)
    # float64: keys then follow floor(p / voxel_size) exactly, not float32's rounding at |p + half| ~ 1e4
    raw = torch_cluster.grid_cluster(points.to(torch.float64), size, start, end)
    keys, cluster = torch.unique(raw, return_inverse=True)
    counts = torch.bincount(cluster, minlength=len(keys)).to(points.dtype)
    sums = torch.zeros((len(keys), 3), dtype=points.dtype, device=dev).index_add_(0, cluster, points)
    return sums / counts.unsqueeze(1), keys, cluster


def in_grid(points: torch.Tensor, voxel_size: float) -> torch.Tensor:
    """Points that ``voxelize`` can key (finite, inside the fixed grid)."""
    lim = (GRID_HALF - 1) * float(voxel_size)
    return torch.isfinite(points).all(1) & (points.abs() < lim).all(1)




def box_iou_3d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[N, M]`` IoU of axis-aligned boxes ``(cx, cy, cz, dx, dy, dz)``; 0 where both boxes are empty."""
    a, b = boxes_array(a, "a"), boxes_array(b, "b")
    lo = np.maximum(a[:, None, :3] - a[:, None, 3:] / 2, b[None, :, :3] - b[None, :, 3:] / 2)
    hi = np.minimum(a[:, None, :3] + a[:, None, 3:] / 2, b[None, :, :3] + b[None, :, 3:] / 2)
    inter = np.clip(hi - lo, 0.0, None).prod(-1)
    union = a[:, 3:].prod(1)[:, None] + b[:, 3:].prod(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms_3d(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, *, class_aware: bool = False,
           classes: np.ndarray | None = None) -> np.ndarray:
    """Greedy non-maximum suppression of axis-aligned boxes; the kept indices, highest score first.

    The highest-scoring remaining box is kept and every box with ``IoU > iou_threshold`` with it is removed
    (VoteNet's ``nms_3d_faster``); equal scores keep the given order. ``class_aware=True`` (VoteNet's
    ``_samecls`` variant) needs ``classes``: boxes of different classes never suppress each other.
    """
    b = boxes_array(boxes, "boxes")
    s = score_vector(scores, len(b), "scores")
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold: expected a value in [0, 1], got {iou_threshold!r}")
    iou = box_iou_3d(b, b)
    if class_aware:
        if classes is None:
            raise ValueError("classes: expected one class id per box when class_aware=True, got None")
        c = int_vector(classes, len(b), "classes")
        iou[c[:, None] != c[None, :]] = 0.0
    elif classes is not None:
        raise ValueError("classes: expected None unless class_aware=True (per-class suppression), got an array")
    order = np.argsort(-s, kind="stable")
    removed = np.zeros(len(b), bool)
    keep = []
    for i in order:
        if removed[i]:
            continue
        keep.append(i)
        removed |= iou[i] > iou_threshold
    return np.asarray(keep, dtype=np.int64)
