"""Farthest-point sampling on either device.

torch_cluster's ``fps`` is the CUDA path. Its CPU kernel runs one round of tensor ops per sampled point, which
dominated a PointNet++ forward pass on a room-sized cloud; on CPU the sampling is therefore fpsample's
bucket-based FPS (a k-d tree over the cloud, the QuickFPS idea). Both are deterministic greedy max–min-distance
samplers with torch_cluster's sample count ``ceil(n · ratio)``; they pick different points (the bucket search
visits candidates in another order) with the same coverage (see ``tests/test_models.py``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch_cluster
from torch import Tensor


def fps(pos: Tensor, batch: Tensor | None, ratio: float | Tensor) -> Tensor:
    """Indices into ``pos`` of ``ceil(n_c · ratio)`` farthest points of each cloud ``c``, grouped by cloud.

    ``ratio`` is one number or one per cloud (a tensor), as torch_cluster takes it.

    Deterministic (like ``random_start=False``); the indices of a cloud come in no particular order.
    """
    if pos.is_cuda:
        return torch_cluster.fps(pos, batch, ratio=ratio, random_start=False)
    import fpsample

    if batch is None:
        batch = torch.zeros(len(pos), dtype=torch.long)
    counts = torch.bincount(batch).tolist() if len(batch) else []
    xyz = pos.detach().to(torch.float32).numpy()
    ratios = ratio.tolist() if isinstance(ratio, Tensor) and ratio.dim() else [float(ratio)] * len(counts)
    out, start = [], 0
    for n, r in zip(counts, ratios):
        if n:
            k = min(n, math.ceil(n * r))
            pick = fpsample.bucket_fps_kdtree_sampling(xyz[start:start + n], k, start_idx=0) if k < n else np.arange(n)
            out.append(np.asarray(pick, np.int64) + start)
        start += n
    idx = np.concatenate(out) if out else np.zeros(0, np.int64)
    return torch.from_numpy(idx).to(pos.device)


__all__ = ["fps"]
