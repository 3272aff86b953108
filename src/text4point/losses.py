"""Contrastive losses of Text4Point and its baselines.

One InfoNCE, :func:`info_nce`, serves every contrast in the project:

- ``L_e`` (Text4Point's encoder loss): pixel ↔ point, between ``h2D`` (CLIP's dense features at
  the sampled pixels) and ``ĥ3D`` at the corresponding points;
- ``L_d`` (decoder loss): the same between ``z2D = g2D(h2D)`` and ``z3D``;
- the image-contrast baseline: pixel ↔ point on the backbone's own features;
- the PointContrast baseline (Xie et al., 2020): point ↔ point, between the voxel features of two
  overlapping frames at matched voxels. It is the same formula, so there is no separate function:
  call :func:`info_nce` with the two frames' features.

Row ``i`` of the two inputs is a corresponding pair (a positive); every other sampled row of the
other side is a negative. The pairs are drawn by the pre-training datasets (``pretrain.num_matches`` per frame,
seeded by ``(seed, epoch, index)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce(a: Tensor, b: Tensor, temperature: float, *, symmetric: bool = True,
             ids_a: Tensor | None = None, ids_b: Tensor | None = None) -> Tensor:
    """InfoNCE between corresponding rows of ``a`` and ``b`` (``[M, d]`` each).

    Both sides are L2-normalised; the logits are the cosine similarities divided by
    ``temperature``, ``ℓ_ij = â_i · b̂_j / τ``. Row ``i`` of ``a`` is contrasted against every row
    of ``b``, with ``b_i`` the positive and the other ``M - 1`` sampled rows the negatives:
    ``-1/M Σ_i log softmax_j(ℓ_ij)[i]``.

    Symmetric by default: the ``a → b`` and ``b → a`` terms are averaged, as in CLIP. The paper
    does not say which direction(s) it uses; both sides of every contrast here are features of the
    same pairs, so neither side is privileged and the symmetric form uses every logit twice.
    ``symmetric=False`` gives the one-directional ``a → b`` form of PointContrast's PointInfoNCE.

    Several sampled pairs may share a feature (pixels of one CLIP patch, points of one bottleneck
    point): such rows are false negatives of one another. ``ids_a``/``ids_b`` (``[M]``, e.g. the
    patch index and the point index of each pair) remove from the denominators the off-diagonal
    logits whose rows share an id on either side.

    Used for ``L_e`` (``h2D`` ↔ ``ĥ3D``), ``L_d`` (``z2D`` ↔ ``z3D``), the image-contrast baseline
    and the PointContrast baseline (the two frames' voxel features at matched voxels).

    Returns a scalar (0 for ``M = 1``: one pair has no negatives). Computed in float32 at least.
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"a and b: expected equal shapes [M, d], got {list(a.shape)} and {list(b.shape)}")
    if a.size(0) == 0:
        raise ValueError("a and b: expected at least one pair, got M = 0")
    if not temperature > 0:
        raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
    dtype = torch.promote_types(a.dtype, torch.float32)
    a = F.normalize(a.to(dtype), dim=1)
    b = F.normalize(b.to(dtype), dim=1)
    logits = a @ b.t() / temperature
    m = a.size(0)
    target = torch.arange(m, device=a.device)

    mask = None
    for ids in (ids_a, ids_b):
        if ids is not None:
            if ids.shape != (m,):
                raise ValueError(f"ids_a/ids_b: expected shape [{m}], got {list(ids.shape)}")
            ids = ids.to(a.device)
            same = ids[:, None] == ids[None, :]
            mask = same if mask is None else mask | same
    if mask is not None:
        mask.fill_diagonal_(False)
        logits = logits.masked_fill(mask, float("-inf"))

    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.t(), target))
    return loss
