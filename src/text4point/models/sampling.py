"""Farthest-point sampling on either device.

torch_cluster's ``fps`` is the CUDA path. Its CPU kernel runs one round of tensor ops per sampled point, which
dominated a PointNet++ forward pass on a room-sized cloud; on CPU the sampling is therefore fpsample's
bucket-based FPS (a k-d line over the cloud, the QuickFPS idea). Both are deterministic greedy max–min-distance
samplers with torch_cluster's sample count ``ceil(n · ratio)``; they pick different points (the bucket search
visits candidates in another order) with the same coverage (see ``tests/test_models.py``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch_cluster
from torch import Tensor

KDLINE_HEIGHT = 5  # fpsample's kd-line height (2**h <= n points); 5 suits clouds of thousands of points


def _cpu_fps(xyz: np.ndarray, k: int) -> np.ndarray:
    """``k < n`` farthest points of one cloud of ``n >= 2`` points, started at its first point: fpsample's kd-line
    bucket FPS (exact FPS like its kd-tree variant and faster; on a voxel grid's many equal distances it breaks ties
    differently, with the same coverage). The kd-line height is at most ``KDLINE_HEIGHT`` and ``2**h <= n``."""
    import fpsample

    h = min(KDLINE_HEIGHT, int(np.floor(np.log2(len(xyz)))))
    return fpsample.bucket_fps_kdline_sampling(xyz, k, h, start_idx=0)


def fps(pos: Tensor, batch: Tensor | None, ratio: float | Tensor) -> Tensor:
    """Indices into ``pos`` of ``ceil(n_c · ratio)`` farthest points of each cloud ``c``, grouped by cloud.

    ``ratio`` is one number or one per cloud (a tensor), as torch_cluster takes it.

    Deterministic (like ``random_start=False``); the indices of a cloud come in no particular order.
    """
    if pos.is_cuda:
        return torch_cluster.fps(pos, batch, ratio=ratio, random_start=False)
    if batch is None:
        batch = torch.zeros(len(pos), dtype=torch.long)
    counts = torch.bincount(batch).tolist() if len(batch) else []
    xyz = pos.detach().to(torch.float32).numpy()
    ratios = ratio.tolist() if isinstance(ratio, Tensor) and ratio.dim() else [float(ratio)] * len(counts)
    out, start = [], 0
    for n, r in zip(counts, ratios):
        if n:
            k = min(n, math.ceil(n * r))
            pick = _cpu_fps(xyz[start:start + n], k) if k < n else np.arange(n)
            out.append(np.asarray(pick, np.int64) + start)
        start += n
    idx = np.concatenate(out) if out else np.zeros(0, np.int64)
    return torch.from_numpy(idx).to(pos.device)


__all__ = ["fps"]
