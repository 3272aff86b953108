"""The files of the ``correspondences`` stage: one directory per scene of memory-mappable ``.npy`` arrays and
``scene_stats.json``, and ``manifest.json`` (written last). Written by :mod:`text4point.correspondences`, read
by pre-training; the layout is documented there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import InputError, bad
from .fsutil import atomic_dir, write_json
from .scene import Scene

FORMAT = "text4point-correspondences-v1"


# (file, dtype, trailing shape)
ARRAYS = {
    "frames": (np.int32, ()),
    "points": (np.float32, (3,)),
    "colors": (np.uint8, (3,)),
    "point_offsets": (np.int64, ()),
    "pairs": (np.int32, (2,)),
    "overlap": (np.float32, ()),
    "matches": (np.int32, (2,)),
    "match_offsets": (np.int64, ()),
}


def write_scene_correspondences(result: dict, scene_dir: str | os.PathLike) -> None:
    """Write one scene's arrays and ``scene_stats.json`` into ``scene_dir`` (atomically, as a directory)."""
    with atomic_dir(scene_dir) as tmp:
        for name, (dtype, _) in ARRAYS.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(result[name], dtype=dtype))
        write_json(tmp / "scene_stats.json", {"format": FORMAT, **result["stats"]})


def read_scene_stats(scene_dir: str | os.PathLike) -> dict:
    p = Path(scene_dir) / "scene_stats.json"
    try:
        stats = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"{p}: file not found (not a correspondences scene directory)") from None
    except json.JSONDecodeError as e:
        raise bad(p, "scene_stats.json", "valid JSON", str(e)) from None
    if stats.get("format") != FORMAT:
        raise bad(p, "format", FORMAT, stats.get("format"))
    for key in ("scene_id", "color_size", "params"):
        if key not in stats:
            raise bad(p, key, "a value")
    return stats


def load_scene_correspondences(scene_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Memory-map one scene's arrays, checking that every file exists with the dtype and length it must have."""
    d = Path(scene_dir)
    out = {}
    for name, (dtype, tail) in ARRAYS.items():
        p = d / f"{name}.npy"
        if not p.exists():
            raise InputError(f"{p}: file not found (a correspondences scene directory holds "
                             f"{', '.join(n + '.npy' for n in ARRAYS)})")
        try:
            a = np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise bad(p, "array", "a readable .npy file", str(e)) from None
        if a.dtype != dtype or a.shape[1:] != tail:
            raise bad(p, "array", f"{np.dtype(dtype).name} of shape [n{''.join(f', {t}' for t in tail)}]",
                      f"{a.dtype.name} {list(a.shape)}")
        out[name] = a
    F, P, Q, M = len(out["frames"]), len(out["points"]), len(out["pairs"]), len(out["matches"])

    def need(name: str, ok: bool, expected: str, got: object) -> None:
        if not ok:
            raise bad(d / f"{name}.npy", "length", expected, got)

    need("colors", len(out["colors"]) == P, f"{P} rows (one per point in points.npy)", len(out["colors"]))
    po, mo = out["point_offsets"], out["match_offsets"]
    need("point_offsets", len(po) == F + 1, f"{F + 1} entries (frames.npy + 1)", len(po))
    need("point_offsets", po[0] == 0 and po[-1] == P and bool((np.diff(po) >= 0).all()),
         f"non-decreasing offsets from 0 to {P} (points.npy)", f"{int(po[0])}..{int(po[-1])}")
    need("overlap", len(out["overlap"]) == Q, f"{Q} entries (one per pair in pairs.npy)", len(out["overlap"]))
    need("match_offsets", len(mo) == Q + 1, f"{Q + 1} entries (pairs.npy + 1)", len(mo))
    need("match_offsets", mo[0] == 0 and mo[-1] == M and bool((np.diff(mo) >= 0).all()),
         f"non-decreasing offsets from 0 to {M} (matches.npy)", f"{int(mo[0])}..{int(mo[-1])}")
    if Q:
        need("pairs", int(out["pairs"].min()) >= 0 and int(out["pairs"].max()) < F,
             f"frame indices in [0, {F})", f"[{int(out['pairs'].min())}, {int(out['pairs'].max())}]")
    return out


def check_matches_scene(corr_dir: str | os.PathLike, scene: Scene) -> None:
    """Raise a one-line ``InputError`` when a scene's correspondences were not made from this scan."""
    d = Path(corr_dir)
    stats = read_scene_stats(d)
    arrays = load_scene_correspondences(d)
    where = f"{d}: correspondences do not match scan {scene.path}"
    if stats["scene_id"] != scene.id:
        raise InputError(f"{where}: scene id {stats['scene_id']!r}, the scan is {scene.id!r}")
    if list(stats["color_size"]) != list(scene.meta.get("color_size", [])):
        raise InputError(f"{where}: colour size {stats['color_size']}, the scan's is {scene.meta.get('color_size')}")
    frames = np.asarray(arrays["frames"])
    skip = int(stats["params"].get("frame_skip", 1))
    bad_ids = sorted(set(frames.tolist()) - set(scene.sampled_frames(skip)))
    if bad_ids:
        raise InputError(f"{where}: frame ids {bad_ids[:5]} are not sampled frames of its "
                         f"{scene.num_frames} frames (frame_skip {skip})")
    W, H = stats["color_size"]
    if len(arrays["matches"]):
        col = arrays["matches"][:, 0]
        if int(col.min()) < 0 or int(col.max()) >= W * H:
            raise InputError(f"{where}: pixel indices up to {int(col.max())}, the colour image has {W * H} pixels")
        pts = arrays["matches"][:, 1]
        if int(pts.min()) < 0 or int(pts.max()) >= len(arrays["points"]):
            raise InputError(f"{where}: point indices up to {int(pts.max())}, points.npy has {len(arrays['points'])}")


def load_manifest(out_dir: str | os.PathLike) -> dict:
    p = Path(out_dir) / "manifest.json"
    try:
        m = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"{p}: file not found (run the correspondences stage first)") from None
    except json.JSONDecodeError as e:
        raise bad(p, "manifest.json", "valid JSON", str(e)) from None
    if m.get("format") != FORMAT or "scenes" not in m:
        raise bad(p, "format", FORMAT, m.get("format"))
    return m
