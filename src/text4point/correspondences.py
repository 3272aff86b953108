"""RGB-D pixel <-> point correspondences (the ``correspondences`` stage).

For every scene of the ``train`` and ``val`` splits, every ``frame_skip``-th frame is read; frames that
real data is known to contain broken are skipped and counted by reason (``scene.FrameDefect.reason``:
``missing_pose``, ``invalid_pose``, ``missing_image``, ``corrupt_image``, ``bad_image_size``; plus
``too_little_depth`` when the fraction of valid depth pixels is below ``min_valid_depth``). When the
scene's ``color/`` and ``depth/`` directories hold different numbers of frames, ``color_depth_mismatch``
is counted once for the scene and only frames present in both are used (sampled frames present in only
one of them count as ``missing_image``).

Each kept frame's depth is back-projected through the depth camera into world coordinates and voxelized
(``torch_cluster.grid_cluster`` on one fixed world-aligned grid, so voxel keys are comparable between the
frames of a scene); a frame's points are the means of its voxels, each coloured by the colour pixel it
projects to in the same frame.

Pairs. Two kept frames i != j are paired when their *overlap*

    overlap(i, j) = |keys(i) ∩ keys(j)| / min(|keys(i)|, |keys(j)|)

(voxel keys occupied by each frame) is >= ``overlap_threshold`` (PointContrast pairs ScanNet frames at
30% overlap). Every pair is stored in both directions, (i, j) and (j, i), and every kept frame is paired
with itself, (i, i) with overlap 1.

Correspondences of a pair (a, b): b's voxel points are projected into a's colour camera; a point matches
the colour pixel it lands on (``floor(uv + 0.5)``: integer pixel coordinates are pixel centres) iff its
depth z in a's colour camera agrees with a's *observed* depth at that pixel within ``depth_tolerance``
metres (the occlusion test). a's observed depth at colour resolution is a z-buffer built from a's depth
image: its valid pixels are back-projected, projected into a's colour camera and every colour pixel keeps
the minimum z of the samples that cover it. A depth sample covers the colour pixels whose centres lie in
its pixel's footprint in the colour image, ``[u - r_u, u + r_u) x [v - r_v, v + r_v)`` with
``r_u = fx_c / fx_d * z_d / z_c / 2`` (likewise for v), so the samples tile the colour image as the depth
pixels tile the depth image: at ScanNet's 2:1 colour:depth ratio each sample covers a 2x2 block, instead of
leaving three colour pixels of four without a sample (``splat=False`` gives the plain one-pixel z-buffer).
When the two sensors share their pose (equal extrinsics, no skew: the offline world, ScanNet's exports) the
footprints are independent of depth and this z-buffer is exactly a gather of the depth pixel that covers
each colour pixel (``coincident_color_to_depth``), which ``process_scene`` uses instead of the scatter.
Colour pixels that no depth sample covers (missing depth) cannot be verified and give no match. At depth
edges the minimum makes the foreground win, so background points next to a silhouette are rejected rather
than matched to a foreground pixel. Several points landing on one pixel are all kept when each passes the
depth test (voxel means of one surface that fall on one pixel all see it; a consumer that wants one point
per pixel can reduce them).

Storage, one directory per scene in the stage's output directory (``.npy``, memory-mappable)::

    frames.npy         int32 [F]        kept frame ids (scene frame indices)
    points.npy         float32 [P, 3]   all kept frames' voxel points (world), frame after frame
    colors.npy         uint8 [P, 3]     their colours
    point_offsets.npy  int64 [F + 1]    frame f's points are points[point_offsets[f]:point_offsets[f + 1]]
    pairs.npy          int32 [Q, 2]     (a, b) indices into frames.npy, sorted; self pairs (i, i) included
    overlap.npy        float32 [Q]
    matches.npy        int32 [M, 2]     (colour pixel index v * W + u of frame a, point index of frame b)
    match_offsets.npy  int64 [Q + 1]    pair q's matches are matches[match_offsets[q]:match_offsets[q + 1]]
    scene_stats.json   scene id, colour/depth sizes, params, counts

and ``manifest.json`` (written last) with the scene ids, the params used and totals; :mod:`text4point.corrfiles`
reads and checks the files. Per-scene statistics: ``pairs`` counts unordered frame pairs without the self pairs;
``matches_per_pair`` summarises the ordered non-self pair entries.
"""

from __future__ import annotations

import os
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .corrfiles import FORMAT, write_scene_correspondences
from .errors import bad
from .fsutil import write_json
from .corrgeom import color_zbuffer, frame_overlaps, match_pairs, nonzero_1d, sample_colors_frames, voxelize_frames
from .geometry import GRID_HALF, as_matrix, in_grid, projection_matrix
from .runtime import cpu_threads, resolve_device
from .scene import Dataset, FrameDefect, Scene

STAGE_SPLITS = ("train", "val")
FRAME_REASONS = ("missing_pose", "invalid_pose", "missing_image", "corrupt_image", "bad_image_size",
                 "too_little_depth")
SCENE_REASONS = ("color_depth_mismatch",)
PARAM_KEYS = ("frame_skip", "voxel_size", "overlap_threshold", "depth_tolerance", "min_valid_depth")
CHUNK_PIXELS = 1 << 19  # depth pixels of the frames voxelized together (bounds the batch's memory)
MATCH_CANDIDATES = 1 << 21  # candidate points (partners' points) of the frames matched together


# ---------------------------------------------------------------- one scene

_FRAME_FILE = re.compile(r"^(\d+)\.(\w+)$")


def _frame_ids(directory: Path, ext: str) -> set[int]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return set()
    out = set()
    for name in names:
        m = _FRAME_FILE.match(name)
        if m and m.group(2).lower() == ext:
            out.add(int(m.group(1)))
    return out


def _check_cfg(cfg: dict) -> dict:
    missing = [k for k in PARAM_KEYS if k not in cfg]
    if missing:
        raise bad(None, f"correspondences.{missing[0]}", "a value (see workflow/schemas/params.schema.yaml)")
    return {k: cfg[k] for k in PARAM_KEYS}


def _summary(values: list[int]) -> dict:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": float(statistics.median(values)), "min": int(min(values)), "max": int(max(values))}


def coincident_color_to_depth(K_depth, K_color, ext_depth, ext_color, depth_size, color_size,
                              device=None) -> torch.Tensor | None:
    """Depth pixel index covering each colour pixel [Hc * Wc] (Hd * Wd where none), or None.

    When the colour and the depth sensor share their pose (equal extrinsics, as in the offline world and in
    ScanNet's exports) and have no skew, the colour pixel centres that a depth pixel's footprint covers are
    those that project back into that depth pixel: ``color_zbuffer`` with ``splat`` reduces to this gather,
    one sample per colour pixel, z unchanged. Otherwise None (use the scatter in ``color_zbuffer``).
    """
    Kd, Kc = np.asarray(K_depth, np.float64)[:3, :3], np.asarray(K_color, np.float64)[:3, :3]
    if not (np.allclose(ext_depth, ext_color, rtol=0, atol=1e-9) and Kd[0, 1] == 0 and Kc[0, 1] == 0
            and np.allclose(Kd[2], [0, 0, 1]) and np.allclose(Kc[2], [0, 0, 1])):
        return None
    dev = resolve_device(device)
    (Wd, Hd), (Wc, Hc) = depth_size, color_size
    uc = torch.arange(Wc, device=dev, dtype=torch.float64)
    vc = torch.arange(Hc, device=dev, dtype=torch.float64)
    ud = torch.floor((uc - Kc[0, 2]) * (Kd[0, 0] / Kc[0, 0]) + Kd[0, 2] + 0.5).long()
    vd = torch.floor((vc - Kc[1, 2]) * (Kd[1, 1] / Kc[1, 1]) + Kd[1, 2] + 0.5).long()
    ok = ((vd >= 0) & (vd < Hd)).unsqueeze(1) & ((ud >= 0) & (ud < Wd)).unsqueeze(0)
    return torch.where(ok, vd.unsqueeze(1) * Wd + ud.unsqueeze(0), Hd * Wd).reshape(-1)


def _read_frame(scene: Scene, i: int, min_valid_depth: float):
    """(pose, depth, colour) of frame i, or the reason it is skipped."""
    try:
        pose = scene.pose(i)
        depth = scene.depth(i)
        if float(np.count_nonzero(depth > 0)) < min_valid_depth * depth.size:
            return "too_little_depth"
        color = scene.color(i)
    except FrameDefect as e:
        return e.reason
    return pose, depth, color


def process_scene(scene: Scene, cfg: dict, device=None, splat: bool = True) -> dict:
    """Correspondences of one scene: the arrays of the storage layout (numpy) and ``stats``.

    ``cfg`` is the ``correspondences`` params section. Only this scene's data is held in memory: per kept
    frame its voxel points, colours, keys and depth image (float32 at depth resolution), plus one batch of frames
    being voxelized (``CHUNK_PIXELS`` depth pixels and their colour images) and one group of frames being matched
    (``MATCH_CANDIDATES`` candidate points). Frames are batched through back-projection, voxelization, colour
    sampling and the depth test (:mod:`text4point.corrgeom`); the outputs equal those of one frame at a time.
    """
    with torch.inference_mode():
        return _process_scene(scene, cfg, resolve_device(device), splat)


def _process_scene(scene: Scene, cfg: dict, dev: torch.device, splat: bool) -> dict:
    t0 = time.perf_counter()
    c = _check_cfg(cfg)
    dtype = torch.float32
    ccam, dcam = scene.cameras()
    Kc, Kd = as_matrix(ccam.K, dtype, dev), as_matrix(dcam.K, dtype, dev)
    Kc_np = np.asarray(ccam.K, np.float64)
    ext_c, ext_d = np.asarray(ccam.extrinsic, np.float64), np.asarray(dcam.extrinsic, np.float64)
    Wc, Hc, Wd, Hd = int(ccam.width), int(ccam.height), int(dcam.width), int(dcam.height)
    # K^-1 [u, v, 1] of every depth pixel, once per scene
    ud, vd = np.meshgrid(np.arange(Wd, dtype=np.float64), np.arange(Hd, dtype=np.float64))
    rays_np = np.stack([ud.ravel(), vd.ravel(), np.ones(Wd * Hd)], 1) @ np.linalg.inv(np.asarray(dcam.K, np.float64)).T
    rays = torch.as_tensor(rays_np, device=dev).to(dtype)
    c2d = coincident_color_to_depth(dcam.K, ccam.K, ext_d, ext_c, (Wd, Hd), (Wc, Hc), dev) if splat else None

    sampled = scene.sampled_frames(int(c["frame_skip"]))
    skipped = {r: 0 for r in FRAME_REASONS + SCENE_REASONS}
    color_ids, depth_ids = _frame_ids(scene.path / "color", "jpg"), _frame_ids(scene.path / "depth", "png")
    candidates = sampled
    if len(color_ids) != len(depth_ids):
        skipped["color_depth_mismatch"] = 1
        both = color_ids & depth_ids
        candidates = [i for i in sampled if i in both]
        skipped["missing_image"] += len(sampled) - len(candidates)

    voxel, tol = float(c["voxel_size"]), float(c["depth_tolerance"])
    lim = (GRID_HALF - 1) * voxel
    HWd = Hd * Wd
    # kept frames' depth, one row each; the last column (0: no sample) is where colour pixels without depth look
    depths = torch.zeros((len(candidates), HWd + 1), dtype=dtype, device=dev)
    frames, pts, cols, keys, sizes, c2w_color, c2w_depth, P_color = [], [], [], [], [], [], [], []
    ray_norm = float(np.linalg.norm(rays_np, axis=1).max())
    outside_color, chunk = 0, []

    def voxelize_chunk():  # the frames read since the last chunk, batched; appends to pts, cols, keys, sizes
        k0, B = len(frames) - len(chunk), len(chunk)
        idx = nonzero_1d((depths[k0:len(frames), :HWd] > 0).reshape(-1)).to(dev)  # frame after frame
        fr = torch.div(idx, HWd, rounding_mode="floor") if B > 1 else None
        pix = idx - fr * HWd if B > 1 else idx
        z = depths.view(-1).index_select(0, (idx + fr if B > 1 else idx) + k0 * (HWd + 1))  # rows of HWd + 1
        cam = rays.index_select(0, pix).mul_(z.unsqueeze(1))
        counts = torch.searchsorted(idx, torch.arange(1, B, device=dev) * HWd).tolist() if B > 1 else []
        counts = np.diff([0] + counts + [len(idx)]).tolist()
        world, s = [], 0
        for b, (_, color_np, far) in enumerate(chunk):
            M = as_matrix(c2w_depth[k0 + b], dtype, dev)
            w = torch.addmm(M[:3, 3:4], M[:3, :3], cam[s:s + counts[b]].T)  # geometry.affine, [3, n]
            s += counts[b]
            if far:  # bound |world| on the host first (frames far from the origin only)
                w = w[:, in_grid(w.T, voxel)]
                counts[b] = w.shape[1]
            world.append(w)
        vpts, vkeys, vsizes = voxelize_frames(torch.cat(world, 1) if B > 1 else world[0], counts, voxel)
        colors = torch.from_numpy(np.stack([color_np for _, color_np, _ in chunk])).to(dev)
        rgb, out = sample_colors_frames(vpts, colors, P_color[k0:], vsizes)
        pts.append(vpts)
        cols.append(rgb)
        keys.extend(torch.split(vkeys, vsizes))
        sizes.extend(vsizes)
        chunk.clear()
        return out

    for i in candidates:
        got = _read_frame(scene, i, float(c["min_valid_depth"]))
        if isinstance(got, str):
            skipped[got] = skipped.get(got, 0) + 1
            continue
        pose, depth_np, color_np = got
        depths[len(frames), :HWd] = torch.from_numpy(depth_np).reshape(-1)
        Tc, Td = pose @ ext_c, pose @ ext_d
        frames.append(i)
        c2w_color.append(Tc)
        c2w_depth.append(Td)
        P_color.append(projection_matrix(Kc_np, Tc, dtype, dev))
        chunk.append((i, color_np, np.abs(Td[:3, 3]).max() + float(depth_np.max()) * ray_norm >= lim))
        if len(chunk) * HWd >= CHUNK_PIXELS:
            outside_color += voxelize_chunk()
    if chunk:
        outside_color += voxelize_chunk()

    F = len(frames)
    point_offsets = np.zeros(F + 1, np.int64)
    point_offsets[1:] = np.cumsum(sizes)
    all_pts = torch.cat(pts) if F else torch.zeros((0, 3), dtype=dtype, device=dev)
    ov = frame_overlaps(keys)
    paired = ov >= float(c["overlap_threshold"])
    paired |= torch.eye(F, dtype=torch.bool, device=dev)
    pairs = torch.nonzero(paired).cpu().numpy()  # (a, b), sorted
    inf = torch.tensor(float("inf"), dtype=dtype, device=dev)

    def observed(a_ids, a_lens, pix):  # a's z-buffer at the candidates' pixels
        if c2d is not None:
            a = torch.repeat_interleave(torch.tensor(a_ids, device=dev), torch.tensor(a_lens, device=dev),
                                        output_size=len(pix))
            g = depths.view(-1).index_select(0, a * (HWd + 1) + c2d.index_select(0, pix))
            return torch.where(g > 0, g, inf)
        out, s = [], 0
        for a, n in zip(a_ids, a_lens):
            zbuf = color_zbuffer(depths[a, :HWd].view(Hd, Wd), Kd, as_matrix(c2w_depth[a], dtype, dev), Kc,
                                 as_matrix(c2w_color[a], dtype, dev), Wc, Hc, splat=splat)
            out.append(zbuf.index_select(0, pix[s:s + n]))
            s += n
        return torch.cat(out) if out else pix.new_zeros(0, dtype=dtype)

    # the pairs' matches, for groups of consecutive frames a with at most MATCH_CANDIDATES candidates (or one a)
    pix_list, pt_list, counts = [], [], []
    cand = np.cumsum(point_offsets[pairs[:, 1] + 1] - point_offsets[pairs[:, 1]])
    q0 = 0
    while q0 < len(pairs):
        q1 = max(int(np.searchsorted(cand, (cand[q0 - 1] if q0 else 0) + MATCH_CANDIDATES, "right")), q0 + 1)
        q1 = int(np.searchsorted(pairs[:, 0], pairs[q1 - 1, 0], "right"))  # whole frames a
        pix, idx, per_pair = match_pairs(all_pts, point_offsets, pairs[q0:q1], P_color, Wc, Hc, tol, observed)
        pix_list.append(pix)
        pt_list.append(idx)
        counts.append(per_pair)
        q0 = q1
    depths = None  # free before the outputs are assembled

    if F:
        overlap = ov[torch.as_tensor(pairs[:, 0], device=dev), torch.as_tensor(pairs[:, 1], device=dev)]
        pairs, overlap = pairs.astype(np.int32), overlap.cpu().numpy().astype(np.float32)
        matches = torch.stack([torch.cat(pix_list), torch.cat(pt_list)], 1).cpu().numpy().astype(np.int32)
        per_pair = torch.cat(counts).cpu().numpy().astype(np.int64)
        points = all_pts.cpu().numpy().astype(np.float32)
        colors = torch.cat(cols).cpu().numpy().astype(np.uint8)
    else:
        pairs, overlap = np.zeros((0, 2), np.int32), np.zeros(0, np.float32)
        matches, per_pair = np.zeros((0, 2), np.int32), np.zeros(0, np.int64)
        points, colors = np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
    match_offsets = np.zeros(len(pairs) + 1, np.int64)
    match_offsets[1:] = np.cumsum(per_pair)

    is_self = pairs[:, 0] == pairs[:, 1]
    cross = per_pair[~is_self].tolist()
    self_m = per_pair[is_self].tolist()
    self_frac = [m / max(s, 1) for m, s in zip(self_m, sizes)]
    stats = {
        "scene_id": scene.id,
        "color_size": [Wc, Hc],
        "depth_size": [int(dcam.width), int(dcam.height)],
        "num_frames": scene.num_frames,
        "params": c,
        "frames_total": len(sampled),
        "frames_kept": F,
        "skipped": skipped,
        "pairs": int((~is_self).sum()) // 2,
        "pair_entries": int(len(pairs)),
        "points": int(len(points)),
        "points_outside_color": int(outside_color),
        "matches": int(len(matches)),
        "matches_per_pair": _summary(cross),
        "self_matches_per_frame": _summary(self_m),
        "self_match_fraction_median": round(float(np.median(self_frac)), 4) if self_frac else None,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return {"frames": np.asarray(frames, np.int32), "points": points, "colors": colors,
            "point_offsets": point_offsets, "pairs": pairs, "overlap": overlap, "matches": matches,
            "match_offsets": match_offsets, "stats": stats}


# ---------------------------------------------------------------- storage


# ---------------------------------------------------------------- the stage


def run_stage(cfg: dict, data_root: Path, out_dir: Path, device=None, progress: bool = True) -> dict:
    """Correspondences of every ``train`` and ``val`` scene into ``out_dir`` (an existing directory).

    ``cfg`` is the full resolved params dict. Writes ``out_dir/<scene_id>/`` per scene and, last,
    ``out_dir/manifest.json``; returns the stage's metrics (totals, medians and per-scene statistics).
    """
    t0 = time.perf_counter()
    c = _check_cfg(cfg["correspondences"])
    dev = resolve_device(device)
    ds = Dataset(data_root)
    out_dir = Path(out_dir)
    jobs = [(split, sid) for split in STAGE_SPLITS for sid in ds.split(split)]
    per_scene = []
    with cpu_threads(dev):
        for split, sid in tqdm(jobs, desc="correspondences", unit="scene", disable=not progress):
            result = process_scene(ds.scene(sid), c, dev)
            write_scene_correspondences(result, out_dir / sid)
            per_scene.append({"split": split, **{k: v for k, v in result["stats"].items() if k != "params"}})
            del result

    def tot(key):
        return int(sum(s[key] for s in per_scene))

    skipped = {r: int(sum(s["skipped"].get(r, 0) for s in per_scene)) for r in FRAME_REASONS + SCENE_REASONS}
    med_mpp = [s["matches_per_pair"]["median"] for s in per_scene if s["matches_per_pair"]["median"] is not None]
    totals = {
        "scenes": len(per_scene),
        "frames_total": tot("frames_total"),
        "frames_kept": tot("frames_kept"),
        "frames_skipped": tot("frames_total") - tot("frames_kept"),
        "pairs": tot("pairs"),
        "points": tot("points"),
        "matches": tot("matches"),
        "median_pairs_per_scene": float(statistics.median([s["pairs"] for s in per_scene])) if per_scene else 0.0,
        "median_points_per_scene": float(statistics.median([s["points"] for s in per_scene])) if per_scene else 0.0,
        "median_matches_per_pair": float(statistics.median(med_mpp)) if med_mpp else 0.0,
        "scenes_without_pairs": sum(1 for s in per_scene if s["pairs"] == 0),
        **{f"skipped_{r}": n for r, n in skipped.items()},
    }
    manifest = {"format": FORMAT, "scenes": [sid for _, sid in jobs],
                "splits": {sp: [sid for s2, sid in jobs if s2 == sp] for sp in STAGE_SPLITS},
                "params": c, "dataset_source": ds.meta.get("source"), "totals": totals}
    write_json(out_dir / "manifest.json", manifest)
    return {**totals, "seconds": round(time.perf_counter() - t0, 2), "per_scene": per_scene}


