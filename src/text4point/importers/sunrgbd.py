"""Import SUN RGB-D into the canonical dataset layout: one single-frame scene per image, VoteNet's benchmark.

Input (``data.sunrgbd.path``: the directory holding the release and its toolbox, or an archive of it)::

    SUNRGBD/<sensor>/.../<frame>/image/<name>.jpg          colour
                                 depth/<name>.png          depth, uint16 stored with a 3-bit circular shift
                                 (depth_bfx/<name>.png)    (the refined depth, where the metadata names it)
    SUNRGBDtoolbox/Metadata/SUNRGBDMeta.mat                per image: sequenceName, rgbpath, depthpath, K
                                                           (intrinsics), Rtilt (the extrinsics' gravity
                                                           rotation), groundtruth3DBB (3D boxes: classname,
                                                           centroid, coeffs, orientation)
      or SUNRGBDMeta3DBB_v2.mat                            (the v2 boxes, used when the v1 file is absent)
    SUNRGBDtoolbox/traintestSUNRGBD/allsplit.mat           alltrain / alltest: the frame directories

This is what VoteNet's preparation reads (``extract_split.m``, ``extract_rgbd_data_v1.m``; its detection
benchmark trains on the v1 boxes): the scene of the metadata's ``i``-th image (1-based) is ``%06d``, as VoteNet
names it; split ``train`` = the images in ``alltrain``, ``val`` = those in ``alltest`` (frame directories
matched as VoteNet matches them: the paths without their first 16 characters, ``/n/fs/sun3d/data``); images in
neither are counted as ``not_in_split``, images whose files are absent as ``missing_scene``.

Depth: ``d = (v >> 3) | (v << 13)`` (16-bit) is millimetres, clipped at 8 m as the toolbox's ``read3dPoints``
does. Per scene:

* ``color/0.jpg`` (the release's bytes, decode-checked), ``depth/0.png`` (uint16 mm, ``depth_shift`` 1000),
  ``pose/0.txt`` and ``intrinsic/``: colour and depth share ``K`` (the release registers depth to colour) and an
  identity extrinsic; the world frame is SUN RGB-D's upright depth frame (x right, y forward, z up, gravity
  along -z), so camera-to-world is ``[[Rtilt @ M, 0], [0, 1]]`` with ``M`` taking a camera point (x right,
  y down, z forward) to depth axes ``(x, z, -y)``.
* ``points.ply``: every pixel with depth, back-projected through ``K`` at its pixel centre (0-based, as
  ``correspondences.project`` projects; the MATLAB toolbox counts pixels from 1, a one-pixel shift), in the world
  frame, with the pixel's colour; ``semantic``/``instance`` from the first box (annotation order) whose oriented
  box holds the point, else ignore / 0. Only boxes of VoteNet's ten classes (``labels.SUNRGBD10``) are kept.
* ``boxes.json``: per kept box, in annotation order (``instance`` 1, 2, ...), the **axis-aligned** box of
  VoteNet's oriented box - the project's detection is axis-aligned - and the oriented box itself: ``heading``
  (VoteNet's ``-atan2(orientation[1], orientation[0])``) and ``oriented_size`` (``2 * (l, w, h)`` with
  VoteNet's ``w, l, h = |coeffs|``; l along the heading). The corners are VoteNet's ``compute_box_3d``:
  ``rotz(-heading) @ (+-l, +-w, +-h) + centroid``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError, bad
from ..labels import IGNORE_LABEL, NO_INSTANCE, SUNRGBD10
from ..scene import write_boxes, write_image, write_matrix, write_points
from . import runner
from .fetch import find_root, resolve_source

FORMAT_VERSION = 1  # of what import_frame writes; part of each scene's import key
META_FILES = (("v1", "SUNRGBDtoolbox/Metadata/SUNRGBDMeta.mat"), ("v2", "SUNRGBDMeta3DBB_v2.mat"))
SPLIT_FILE = "SUNRGBDtoolbox/traintestSUNRGBD/allsplit.mat"
SPLIT_KEYS = {"train": "alltrain", "val": "alltest"}
MAX_DEPTH_MM = 8000
CAMERA_TO_DEPTH = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # (x right, y down, z fwd) -> (x, z, -y)
_STRIP = 16  # VoteNet strips this many leading characters ("/n/fs/sun3d/data") from the release's paths


def import_sunrgbd(cfg: dict, out_root: Path, download_dir: Path, progress: bool = True) -> dict:
    """Import SUN RGB-D as configured by ``cfg`` (``data.sunrgbd``) into ``out_root``; return statistics."""
    max_scenes = cfg["max_scenes"]
    if max_scenes is not None and (not isinstance(max_scenes, int) or isinstance(max_scenes, bool) or max_scenes < 1):
        raise bad(None, "data.sunrgbd.max_scenes", "null or an integer >= 1", max_scenes)
    root = find_root(resolve_source(cfg, "sunrgbd", download_dir, progress),
                     lambda p: (p / "SUNRGBD").is_dir() and (p / "SUNRGBDtoolbox").is_dir(),
                     "a directory holding SUNRGBD/ and SUNRGBDtoolbox/", "data.sunrgbd.path")
    version, meta_path = next(((v, root / f) for v, f in META_FILES if (root / f).is_file()), (None, None))
    if meta_path is None:
        raise InputError(f"{root / META_FILES[0][1]}: file not found (SUN RGB-D's metadata; or "
                         f"{root / META_FILES[1][1]})")
    records = read_meta(meta_path)
    split_of = read_split(root / SPLIT_FILE)
    defects: Counter = Counter()
    chosen: dict[str, list[dict]] = {"train": [], "val": []}
    for rec in records:
        split = split_of.get(_frame_key(rec["depthpath"]))
        if split is None:
            defects["not_in_split"] += 1
            continue
        rec["rgb"], rec["depth"] = _local(root, rec["rgbpath"]), _local(root, rec["depthpath"])
        if not (rec["rgb"].is_file() and rec["depth"].is_file()):
            defects["missing_scene"] += 1
            continue
        chosen[split].append(rec)
    for split, recs in chosen.items():
        if not recs:
            raise InputError(f"{root / 'SUNRGBD'}: no image of split {split!r} ({SPLIT_KEYS[split]} in "
                             f"{SPLIT_FILE}) is there")
        if max_scenes:
            chosen[split] = recs[:max_scenes]
    jobs = []
    for rec in chosen["train"] + chosen["val"]:
        frame = {k: rec[k] for k in ("index", "sequenceName", "sensorType", "K", "Rtilt", "boxes")}
        digest = hashlib.sha256(json.dumps(frame, sort_keys=True).encode()).hexdigest()[:16]
        key = {"importer": "sunrgbd", "format": FORMAT_VERSION, "metadata": digest,
               "files": {"rgb": rec["rgb"].stat().st_size, "depth": rec["depth"].stat().st_size}}
        jobs.append(runner.SceneJob(f"{rec['index']:06d}", key, (frame, str(rec["rgb"]), str(rec["depth"]))))
    per_scene, imported = runner.run(out_root, jobs, import_frame, progress=progress, desc="import sunrgbd")
    for st in per_scene:
        defects.update(st["defects"])
    splits = {"clip": [], "train": [f"{r['index']:06d}" for r in chosen["train"]],
              "val": [f"{r['index']:06d}" for r in chosen["val"]]}
    stats = {"scenes": {k: len(v) for k, v in splits.items()}, "points": sum(st["points"] for st in per_scene),
             "boxes": sum(st["boxes"] for st in per_scene), "metadata": version,
             "defects": {k: v for k, v in sorted(defects.items()) if v}}
    runner.finish(out_root, SUNRGBD10, "sunrgbd", splits, extra={"import": stats, "max_scenes": max_scenes})
    return {**stats, "scenes_imported": len(imported), "scenes_reused": len(jobs) - len(imported)}


# ---------------------------------------------------------------- the toolbox's metadata

def _loadmat(path: Path, names: list[str]) -> dict:
    from scipy.io import loadmat

    try:
        return loadmat(str(path), squeeze_me=True, struct_as_record=False, variable_names=names)
    except NotImplementedError:
        raise bad(path, "format", "a MATLAB v5/v7 .mat file (as the SUN RGB-D toolbox ships)", "a v7.3 file") \
            from None
    except (ValueError, TypeError, OSError) as e:
        raise InputError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {e})") from None


def _items(x) -> list:
    """A MATLAB struct or cell array loaded with squeeze_me as a list (one element: not an array; none: empty)."""
    if isinstance(x, np.ndarray):
        return list(x.reshape(-1))
    return [x]


def _vector(path: Path, where: str, value, n: int) -> list[float]:
    a = np.asarray(value, dtype=np.float64).reshape(-1) if value is not None else np.zeros(0)
    if a.size != n or not np.isfinite(a).all():
        raise bad(path, where, f"{n} finite numbers", a.tolist())
    return a.tolist()


def read_meta(path: Path) -> list[dict]:
    """The images of a ``SUNRGBDMeta`` file: index (1-based), paths, K, Rtilt and the ten classes' boxes."""
    data = _loadmat(path, ["SUNRGBDMeta"])
    if "SUNRGBDMeta" not in data:
        raise bad(path, "SUNRGBDMeta", "a struct array (one entry per image)")
    out = []
    for i, m in enumerate(_items(data["SUNRGBDMeta"]), start=1):
        where = f"SUNRGBDMeta({i})"
        try:
            rec = {"index": i, "sequenceName": str(m.sequenceName), "sensorType": str(getattr(m, "sensorType", "")),
                   "rgbpath": str(m.rgbpath), "depthpath": str(m.depthpath)}
            K, Rtilt = m.K, m.Rtilt
            gts = _items(m.groundtruth3DBB)
        except AttributeError as e:
            raise bad(path, where, "fields sequenceName, rgbpath, depthpath, K, Rtilt, groundtruth3DBB",
                      str(e)) from None
        rec["K"] = np.reshape(_vector(path, f"{where}.K", K, 9), (3, 3)).tolist()
        rec["Rtilt"] = np.reshape(_vector(path, f"{where}.Rtilt", Rtilt, 9), (3, 3)).tolist()
        boxes = []
        for j, gt in enumerate(gts, start=1):
            name = str(getattr(gt, "classname", ""))
            if name not in SUNRGBD10.classes:
                continue  # VoteNet's DEFAULT_TYPE_WHITELIST
            gw = f"{where}.groundtruth3DBB({j})"
            boxes.append({"classname": name,
                          "centroid": _vector(path, f"{gw}.centroid", getattr(gt, "centroid", None), 3),
                          "coeffs": np.abs(_vector(path, f"{gw}.coeffs", getattr(gt, "coeffs", None), 3)).tolist(),
                          "orientation": _vector(path, f"{gw}.orientation", getattr(gt, "orientation", None), 3)})
        rec["boxes"] = boxes
        out.append(rec)
    return out


def _frame_key(path: str) -> str:
    """A frame directory as VoteNet's extract_split.m names it: the path without its first 16 characters, and
    for an image path, two levels up (``.../<frame>/depth/<name>.png`` -> ``.../<frame>``)."""
    p = path.replace("\\", "/")[_STRIP:].rstrip("/")
    if p.lower().endswith((".png", ".jpg")):
        p = p.rsplit("/", 2)[0]
    return p


def read_split(path: Path) -> dict[str, str]:
    """Frame directory key -> ``train`` / ``val`` from the toolbox's ``allsplit.mat``."""
    if not path.is_file():
        raise InputError(f"{path}: file not found (SUN RGB-D's train/test split, in SUNRGBDtoolbox)")
    data = _loadmat(path, list(SPLIT_KEYS.values()))
    out: dict[str, str] = {}
    for split, key in SPLIT_KEYS.items():
        if key not in data:
            raise bad(path, key, "a cell array of frame directories")
        for p in _items(data[key]):
            out[_frame_key(str(p))] = split
    return out


def _local(root: Path, path: str) -> Path:
    """The release's absolute path ``path`` (``/n/fs/sun3d/data/SUNRGBD/...``) under the local ``root``."""
    return root / path.replace("\\", "/")[_STRIP:].lstrip("/")


# ---------------------------------------------------------------- one image

def decode_depth(raw: np.ndarray) -> np.ndarray:
    """Millimetres (uint16) from a SUN RGB-D depth PNG's values: undo the 3-bit circular shift, clip at 8 m."""
    v = np.asarray(raw, dtype=np.uint16)
    d = (v >> 3) | (v << 13)
    return np.minimum(d, MAX_DEPTH_MM).astype(np.uint16)


def box_geometry(box: dict) -> dict:
    """VoteNet's oriented box of one annotation, its eight corners, and the axis-aligned box around them."""
    w, l, h = box["coeffs"]  # noqa: E741  (VoteNet's names: w = coeffs[0], l = coeffs[1])
    o = box["orientation"]
    heading = -float(np.arctan2(o[1], o[0]))
    c, s = np.cos(-heading), np.sin(-heading)
    R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])  # rotz(-heading)
    local = np.array([[-l, l, l, -l, -l, l, l, -l], [w, w, -w, -w, w, w, -w, -w], [h, h, h, h, -h, -h, -h, -h]])
    corners = (R @ local).T + np.asarray(box["centroid"])
    lo, hi = corners.min(0), corners.max(0)
    return {"R": R, "half": np.array([l, w, h]), "corners": corners, "heading": heading,
            "center": ((lo + hi) / 2).tolist(), "size": (hi - lo).tolist(), "oriented_size": [2 * l, 2 * w, 2 * h]}


def _read_image(path: Path, fmt: str | None) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if fmt is not None and img.format != fmt:
                raise bad(path, "image", f"a {fmt} image", img.format)
            return np.asarray(img.convert("RGB") if fmt == "JPEG" else img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def import_frame(out: Path, frame: dict, rgb_path: str, depth_path: str) -> tuple[dict, dict]:
    """Write one SUN RGB-D image as a single-frame scene into ``out``; return (scene.json content, statistics)."""
    rgb_path, depth_path = Path(rgb_path), Path(depth_path)
    raw = _read_image(depth_path, None)
    color = _read_image(rgb_path, "JPEG")
    if raw.ndim != 2 or raw.dtype != np.uint16:
        raise bad(depth_path, "depth", "a single-channel 16-bit PNG", f"{raw.dtype} of shape {raw.shape}")
    if color.shape[:2] != raw.shape:
        raise bad(rgb_path, "image size", f"{raw.shape[1]}x{raw.shape[0]} (the depth image's)",
                  f"{color.shape[1]}x{color.shape[0]}")
    depth = decode_depth(raw)
    H, W = depth.shape
    K, Rtilt = np.asarray(frame["K"]), np.asarray(frame["Rtilt"])
    c2w = np.eye(4)
    c2w[:3, :3] = Rtilt @ CAMERA_TO_DEPTH

    v, u = np.nonzero(depth)
    if not len(v):
        raise bad(depth_path, "depth", "at least one pixel with depth (empty scene)", 0)
    z = depth[v, u].astype(np.float64) / 1000.0
    cam = np.stack([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z], 1)
    xyz = cam @ c2w[:3, :3].T
    semantic = np.full(len(xyz), IGNORE_LABEL, np.uint8)
    instance = np.full(len(xyz), NO_INSTANCE, np.int32)
    boxes = []
    for k, box in enumerate(frame["boxes"], start=1):
        g = box_geometry(box)
        q = (xyz - np.asarray(box["centroid"])) @ g["R"]  # box-local coordinates
        inside = (np.abs(q) <= g["half"]).all(1) & (instance == NO_INSTANCE)  # the first box holding a point
        cls = SUNRGBD10.index(box["classname"])
        semantic[inside], instance[inside] = cls, k
        boxes.append({"instance": k, "semantic": cls, "center": g["center"], "size": g["size"],
                      "heading": g["heading"], "oriented_size": g["oriented_size"]})

    write_points(out / "points.ply", xyz.astype(np.float32), color[v, u], semantic, instance)
    write_boxes(out / "boxes.json", boxes, SUNRGBD10)
    for d in ("color", "depth", "pose"):
        (out / d).mkdir(parents=True, exist_ok=True)
    (out / "color" / "0.jpg").write_bytes(rgb_path.read_bytes())
    write_image(out / "depth" / "0.png", depth)
    write_matrix(out / "pose" / "0.txt", c2w)
    K4 = np.eye(4)
    K4[:3, :3] = K
    for name, m in (("intrinsic_color", K4), ("intrinsic_depth", K4), ("extrinsic_color", np.eye(4)),
                    ("extrinsic_depth", np.eye(4))):
        write_matrix(out / "intrinsic" / f"{name}.txt", m)
    meta = {"scene_id": f"{frame['index']:06d}", "num_frames": 1, "frame_ids": [0], "color_size": [W, H],
            "depth_size": [W, H], "depth_shift": 1000.0, "source": "sunrgbd", "has_mesh": False,
            "sequence_name": frame["sequenceName"],
            "sensor": frame["sensorType"], "metadata_index": frame["index"]}
    return meta, {"points": len(xyz), "boxes": len(boxes), "defects": {"no_benchmark_box": 1} if not boxes else {}}
