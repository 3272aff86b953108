"""Geometry of the ``correspondences`` stage (:mod:`text4point.correspondences` documents the method): the
colour-resolution z-buffer of one frame, frame overlaps, and voxelization, colour sampling and the depth test
batched over the frames of a scan, which ``process_scene`` uses.

The batched steps give exactly what one frame at a time gives (``geometry.project_with``, ``geometry.voxelize``):
every per-frame matrix product is still one ``addmm`` of that frame's points (the same float32 rounding), what
follows is elementwise, and each voxel's points are summed in their pixel order. Voxels are de-duplicated
without sorting where a frame's box of occupied voxels is small enough (a dense occupancy table over frame-local
cell keys whose order is the grid key's order), within ``DENSE_CELLS`` cells per table; ``torch.unique``
otherwise.
"""

from __future__ import annotations

import numpy as np
import torch

from .geometry import GRID_HALF, backproject, pixels, project

MAX_SPLAT_RADIUS = 4.0  # colour pixels; bounds the footprint of a depth sample seen from very close
DENSE_CELLS = 1 << 24  # cells one dense de-duplication table may span (one bool and one int64 each)


def color_zbuffer(depth: torch.Tensor, K_depth: torch.Tensor, depth_to_world: torch.Tensor, K_color: torch.Tensor,
                  color_to_world: torch.Tensor, width: int, height: int, splat: bool = True) -> torch.Tensor:
    """Observed depth at colour resolution: flat [height * width], z in the colour camera, inf = no sample.

    The valid depth pixels are back-projected and projected into the colour camera; each colour pixel keeps
    the minimum z (``scatter_reduce`` "amin") of the samples that cover it. With ``splat`` a sample covers
    the colour pixels whose centres lie in its depth pixel's footprint (see the module docstring); without,
    only the pixel it lands on.
    """
    pts, pix = backproject(depth, K_depth, depth_to_world)
    return _zbuffer(pts, depth.reshape(-1)[pix], K_depth, K_color, color_to_world, width, height, splat)


def _zbuffer(pts: torch.Tensor, z_depth: torch.Tensor, K_depth: torch.Tensor, K_color: torch.Tensor,
             color_to_world: torch.Tensor, width: int, height: int, splat: bool) -> torch.Tensor:
    """``color_zbuffer`` from the back-projected depth samples (world points and their depth-camera z)."""
    dtype, dev = pts.dtype, pts.device
    hw = height * width
    zbuf = torch.full((hw + 1,), float("inf"), dtype=dtype, device=dev)  # the last slot takes what falls outside
    if len(pts) == 0:
        return zbuf[:hw]
    uv, z, _ = project(pts, K_color, color_to_world, width, height)
    front = z > 1e-6
    if not splat:
        ui = torch.floor(uv + 0.5).long()
        ok = front & (ui[:, 0] >= 0) & (ui[:, 0] < width) & (ui[:, 1] >= 0) & (ui[:, 1] < height)
        target = torch.where(ok, ui[:, 1] * width + ui[:, 0], hw)
        return zbuf.scatter_reduce_(0, target, z, "amin")[:hw]
    Kc = torch.as_tensor(K_color, device=dev).to(dtype)
    Kd = torch.as_tensor(K_depth, device=dev).to(dtype)
    scale = torch.stack([Kc[0, 0] / Kd[0, 0], Kc[1, 1] / Kd[1, 1]]) * 0.5
    ratio = z_depth / torch.where(front, z, torch.ones_like(z))
    r = (ratio.unsqueeze(1) * scale).clamp_(max=MAX_SPLAT_RADIUS)
    lo = torch.ceil(uv - r)
    hi = torch.ceil(uv + r)  # covered pixel centres per axis: lo .. hi - 1
    k = int((hi - lo).max().item())
    if k <= 0:
        return zbuf[:hw]
    lo, hi = lo.long(), hi.long()
    hi[:, 0].clamp_(max=width)
    hi[:, 1].clamp_(max=height)
    hi = torch.where(front.unsqueeze(1), hi, lo)  # behind the colour camera: covers nothing
    off = torch.arange(k, device=dev)
    tu = lo[:, 0:1] + off  # [N, k]
    tv = lo[:, 1:2] + off
    ok_u = (tu < hi[:, 0:1]) & (tu >= 0)
    ok_v = (tv < hi[:, 1:2]) & (tv >= 0)
    target = torch.where(ok_v.unsqueeze(2) & ok_u.unsqueeze(1), tv.unsqueeze(2) * width + tu.unsqueeze(1), hw)
    zz = z.view(-1, 1, 1).expand(-1, k, k)
    return zbuf.scatter_reduce_(0, target.reshape(-1), zz.reshape(-1), "amin")[:hw]


def frame_overlaps(keys: list[torch.Tensor], chunk_elems: int = 1 << 24) -> torch.Tensor:
    """[F, F] overlap |keys_i ∩ keys_j| / min(|keys_i|, |keys_j|) of per-frame sorted unique voxel keys."""
    F = len(keys)
    dev = keys[0].device if F else torch.device("cpu")
    if F == 0:
        return torch.zeros((0, 0), device=dev)
    sizes = torch.tensor([len(k) for k in keys], device=dev)
    allk = torch.cat(keys)
    frame = torch.repeat_interleave(torch.arange(F, device=dev), sizes)
    uniq, inv = torch.unique(allk, return_inverse=True)
    U = len(uniq)
    inter = torch.zeros((F, F), dtype=torch.float32, device=dev)
    step = max(1, chunk_elems // max(F, 1))
    order = torch.argsort(inv)
    inv_s, frame_s = inv[order], frame[order]
    bounds = torch.searchsorted(inv_s, torch.arange(0, U + step, step, device=dev).clamp(max=U))
    for c in range(len(bounds) - 1):
        s, e = int(bounds[c]), int(bounds[c + 1])
        if s == e:
            continue
        c0 = c * step
        A = torch.zeros((F, min(step, U - c0)), dtype=torch.float32, device=dev)
        A[frame_s[s:e], inv_s[s:e] - c0] = 1.0
        inter += A @ A.T
    denom = torch.minimum(sizes.unsqueeze(0), sizes.unsqueeze(1)).clamp(min=1).to(torch.float32)
    return inter / denom


# ---------------------------------------------------------------- batched over the frames of a scan


def project_segments(points: torch.Tensor, P: list[torch.Tensor], sizes: list[int], width: int, height: int):
    """``project_with`` of consecutive segments of ``points`` (``sizes[s]`` rows each) with their own matrix
    ``P[s]``, in one pass after the products: (z [N], inside [N], the rounded pixel [N, 2] as floats)."""
    parts, s = [], 0
    for Ps, n in zip(P, sizes):
        if n:
            parts.append(torch.addmm(Ps[:, 3:4], Ps[:, :3], points[s:s + n].T))
        s += n
    if not parts:
        z = points.new_zeros(0)
        return z, torch.zeros(0, dtype=torch.bool, device=points.device), points.new_zeros((0, 2))
    _, z, inside, ui = pixels(torch.cat(parts, 1) if len(parts) > 1 else parts[0], width, height)
    return z, inside, ui


def nonzero_1d(mask: torch.Tensor) -> torch.Tensor:
    """``torch.nonzero(mask).squeeze(1)`` of a 1-D bool tensor (numpy's, several times faster, on CPU)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return torch.nonzero(mask).squeeze(1)


def voxelize_frames(points: torch.Tensor, counts: list[int], voxel_size: float,
                    max_cells: int = DENSE_CELLS) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``geometry.voxelize`` of several frames' points at once: ``points`` [3, N] (coordinate-major), frame after
    frame, ``counts[f]`` points of frame f. Returns (voxel points [V, 3], voxel keys [V], voxels per frame), frame
    after frame and in ascending key order within a frame, exactly what ``voxelize`` gives frame by frame.

    Keys follow ``torch_cluster.grid_cluster``'s arithmetic on the fixed grid. De-duplication: frames are grouped
    so that (frames in the group) x (the largest box of cells any of them occupies) <= ``max_cells``; a group's
    cell key (frame slot, z, y, x within that box) orders like the grid key, and an occupancy table over it gives
    the sorted unique keys and each point's voxel without a sort. A frame alone above ``max_cells`` uses
    ``torch.unique``.
    """
    dev, B = points.device, len(counts)
    if points.shape[1] == 0:
        return points.new_zeros((0, 3)), torch.zeros(0, dtype=torch.int64, device=dev), [0] * B
    size = torch.full((3,), float(voxel_size), dtype=torch.float64, device=dev)
    start = torch.full((3,), -GRID_HALF * float(voxel_size), dtype=torch.float64, device=dev)
    n = int((-start - start).true_divide(size).long()[0]) + 1  # voxels per axis, as grid_cluster counts them
    c = points.to(torch.float64).sub_(start[0].item()).div_(float(voxel_size)).long()  # [3, N] cell coordinates
    offsets = np.cumsum([0] + counts)
    lo_h, ext = [None] * B, [None] * B
    for f in range(B):
        if counts[f]:
            lo, hi = torch.aminmax(c[:, offsets[f]:offsets[f + 1]], dim=1)
            lo_h[f], ext[f] = lo.tolist(), (hi - lo + 1).tolist()
    groups, cur, dims = [], [], [0, 0, 0]  # groups of non-empty frames: (frames, box dims)
    for f in range(B):
        if not counts[f]:
            continue
        d = [max(a, b) for a, b in zip(dims, ext[f])]
        if cur and (len(cur) + 1) * d[0] * d[1] * d[2] > max_cells:
            groups.append((cur, dims))
            cur, d = [], ext[f]
        cur, dims = cur + [f], d
    groups.append((cur, dims))
    gkeys, invs, vsizes, u0 = [], [], [0] * B, 0
    for frames, (nx, ny, nz) in groups:
        vf = nx * ny * nz
        base = [slot * vf - (lo_h[f][2] * ny + lo_h[f][1]) * nx - lo_h[f][0] for slot, f in enumerate(frames)]
        ps, pe = int(offsets[frames[0]]), int(offsets[frames[-1] + 1])
        key = (c[2, ps:pe] * (nx * ny)).add_(c[1, ps:pe], alpha=nx).add_(c[0, ps:pe])
        if len(frames) == 1:
            key += base[0]
        else:
            lens = torch.tensor([counts[f] for f in frames], device=dev)
            key += torch.repeat_interleave(torch.tensor(base, device=dev), lens, output_size=pe - ps)
        cells = len(frames) * vf
        if cells <= max_cells:
            occ = torch.zeros(cells, dtype=torch.bool, device=dev).index_fill_(0, key, True)
            uniq = nonzero_1d(occ).to(dev)
            table = torch.empty(cells, dtype=torch.int64, device=dev)
            table.index_copy_(0, uniq, torch.arange(len(uniq), device=dev))
            inv = table.index_select(0, key)
        else:
            uniq, inv = torch.unique(key, return_inverse=True)
        slot = torch.div(uniq, vf, rounding_mode="floor")
        r = uniq - slot * vf
        z = torch.div(r, nx * ny, rounding_mode="floor")
        r = r - z * (nx * ny)
        y = torch.div(r, nx, rounding_mode="floor")
        g = torch.tensor([lo_h[f] for f in frames], dtype=torch.int64, device=dev).index_select(0, slot)
        gkeys.append((r - y * nx + g[:, 0]) + (y + g[:, 1]) * n + (z + g[:, 2]) * (n * n))
        for f, m in zip(frames, torch.bincount(slot, minlength=len(frames)).tolist()):
            vsizes[f] = m
        invs.append(inv + u0 if u0 else inv)
        u0 += len(uniq)
    inv = torch.cat(invs) if len(invs) > 1 else invs[0]
    sums = torch.zeros((3, u0), dtype=points.dtype, device=dev).index_add_(1, inv, points)
    vcount = torch.bincount(inv, minlength=u0).to(points.dtype)
    return (sums / vcount).T.contiguous(), torch.cat(gkeys), vsizes


def sample_colors_frames(points: torch.Tensor, colors: torch.Tensor, P: list[torch.Tensor],
                         sizes: list[int]) -> tuple[torch.Tensor, int]:
    """uint8 rgb [N, 3] of the colour pixel each point projects to (clamped to the image), for consecutive
    segments of ``points`` (``sizes[f]`` rows) in the images ``colors`` [B, H, W, 3] with the projection matrices
    ``P[f]``; and how many points fell outside their image."""
    B, H, W = colors.shape[:3]
    _, inside, ui = project_segments(points, P, sizes, W, H)
    u = ui[:, 0].nan_to_num(0).clamp(0, W - 1).long()
    v = ui[:, 1].nan_to_num(0).clamp(0, H - 1).long()
    frame = torch.repeat_interleave(torch.arange(B, device=points.device), torch.tensor(sizes, device=points.device),
                                    output_size=len(points))
    return (colors.reshape(-1, 3).index_select(0, (frame * H + v) * W + u),
            int((~inside).sum().item()))


def match_pairs(points: torch.Tensor, offsets: np.ndarray, pairs: np.ndarray, P: list[torch.Tensor], width: int,
                height: int, depth_tolerance: float, observed) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The depth test of the pairs (a, b) ``pairs`` [Q, 2] (sorted, host) at once: b's points, rows
    ``offsets[b]:offsets[b + 1]`` of ``points``, in a's colour camera ``P[a]``. ``observed(a_ids, a_lens, pix)``:
    a's observed depth at the pixels ``pix`` of its candidates (``a_lens[k]`` for ``a_ids[k]``, in order; inf =
    no sample). Returns (colour pixel indices, point rows, matches per pair [Q]), pair after pair.
    """
    dev = points.device
    lens = offsets[pairs[:, 1] + 1] - offsets[pairs[:, 1]]
    a_ids, first = np.unique(pairs[:, 0], return_index=True)
    a_lens = np.add.reduceat(lens, first).tolist() if len(first) else []
    R = int(lens.sum())
    lens_t = torch.as_tensor(lens, device=dev)
    starts = torch.as_tensor(offsets[pairs[:, 1]] - (np.cumsum(lens) - lens), device=dev)
    rows = torch.repeat_interleave(starts, lens_t, output_size=R) + torch.arange(R, device=dev)
    z, inside, ui = project_segments(points.index_select(0, rows), [P[a] for a in a_ids], a_lens, width, height)
    ui = ui.long()
    pix = torch.where(inside, ui[:, 1] * width + ui[:, 0], torch.zeros_like(ui[:, 0]))
    ok = inside & ((observed(a_ids.tolist(), a_lens, pix) - z).abs() <= depth_tolerance)  # inf never passes
    sel = torch.nonzero(ok).squeeze(1)
    q = torch.repeat_interleave(torch.arange(len(pairs), device=dev), lens_t, output_size=R)
    return pix.index_select(0, sel), rows.index_select(0, sel), torch.bincount(q.index_select(0, sel),
                                                                              minlength=len(pairs))
