"""Writers of small files in the published formats of ScanNet v2 and S3DIS, for the importer tests.

They follow the formats' documentation (ScanNet's SensReader layout of ``.sens``, the release's PLY/JSON/TSV
files, S3DIS's ``x y z r g b`` annotation text) and use nothing from ``text4point.importers``, so that a
test compares the importers against the formats rather than against their own inverse.
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from plyfile import PlyData, PlyElement

# ---------------------------------------------------------------- .sens (version 4, little-endian)

COLOR_SIZE = (32, 24)  # (width, height)
DEPTH_SIZE = (16, 12)


def jpeg_bytes(rgb: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_frames(n: int, seed: int = 0, invalid: tuple[int, ...] = (), color_size=COLOR_SIZE,
                depth_size=DEPTH_SIZE) -> list[dict]:
    """``n`` frames: random JPEG colour, random uint16 depth, random poses (-inf for the ``invalid`` indices)."""
    rng = np.random.default_rng(seed)
    (cw, ch), (dw, dh) = color_size, depth_size
    frames = []
    for i in range(n):
        if i in invalid:
            pose = np.full((4, 4), -np.inf, dtype=np.float32)
        else:
            pose = np.eye(4, dtype=np.float32)
            pose[:3, :3] = rng.normal(size=(3, 3)).astype(np.float32)
            pose[:3, 3] = rng.uniform(-5, 5, size=3).astype(np.float32)
        frames.append({
            "pose": pose,
            "timestamp_color": int(1_000_000 * i + rng.integers(0, 1000)),
            "timestamp_depth": int(1_000_000 * i + rng.integers(0, 1000) + (1 << 40)),
            "color_jpeg": jpeg_bytes(rng.integers(0, 256, size=(ch, cw, 3), dtype=np.uint8)),
            "depth": rng.integers(0, 65536, size=(dh, dw), dtype=np.uint16),
        })
    return frames


def default_camera() -> dict:
    """The four 4x4 matrices of a .sens header (distinct values so a mix-up shows)."""
    k_color = np.array([[1170.19, 0, 647.75, 0], [0, 1170.19, 483.75, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)
    k_depth = np.array([[571.62, 0, 319.5, 0], [0, 571.62, 239.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)
    e_color = np.eye(4, dtype=np.float32)
    e_depth = np.eye(4, dtype=np.float32)
    e_depth[:3, 3] = [0.025, -0.001, 0.0125]
    return {"intrinsic_color": k_color, "extrinsic_color": e_color, "intrinsic_depth": k_depth,
            "extrinsic_depth": e_depth}


def write_sens(path: Path, frames: list[dict], version: int = 4, color_size=COLOR_SIZE, depth_size=DEPTH_SIZE,
               camera: dict | None = None, depth_shift: float = 1000.0, sensor_name: str = "StructureSensor",
               color_compression: int = 2, depth_compression: int = 1, truncate: int = 0) -> dict:
    """Write a .sens file: header, then per frame pose, timestamps, sizes, JPEG colour, zlib uint16 depth.

    ``truncate`` chops that many bytes off the end. Returns the header values written.
    """
    camera = camera or default_camera()
    name = sensor_name.encode()
    out = bytearray()
    out += struct.pack("<I", version)
    out += struct.pack("<Q", len(name)) + name
    for key in ("intrinsic_color", "extrinsic_color", "intrinsic_depth", "extrinsic_depth"):
        out += struct.pack("<16f", *[float(x) for x in np.asarray(camera[key]).reshape(16)])  # row by row
    out += struct.pack("<ii", color_compression, depth_compression)
    out += struct.pack("<IIII", color_size[0], color_size[1], depth_size[0], depth_size[1])
    out += struct.pack("<f", depth_shift)
    out += struct.pack("<Q", len(frames))
    for fr in frames:
        color = fr["color_jpeg"]
        depth = zlib.compress(struct.pack(f"<{fr['depth'].size}H", *fr["depth"].reshape(-1).tolist()))
        out += struct.pack("<16f", *[float(x) for x in fr["pose"].reshape(16)])
        out += struct.pack("<QQQQ", fr["timestamp_color"], fr["timestamp_depth"], len(color), len(depth))
        out += color + depth
    data = bytes(out[:len(out) - truncate]) if truncate else bytes(out)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)
    return {"version": version, "sensor_name": sensor_name, **camera, "color_compression_type": color_compression,
            "depth_compression_type": depth_compression, "color_width": color_size[0],
            "color_height": color_size[1], "depth_width": depth_size[0], "depth_height": depth_size[1],
            "depth_shift": depth_shift, "num_frames": len(frames)}


# ---------------------------------------------------------------- ScanNet v2 release

TSV_HEADER = ["id", "raw_category", "category", "count", "nyu40id", "eigen13id", "nyuClass", "mpcat40id",
              "mpcat40"]
# raw_category -> nyu40id: chair (5) -> ScanNet-20 "chair", wall (1) -> "wall", kitchen counter (12) ->
# "counter", ceiling (22) is not a benchmark class, table (7) -> "table".
TSV_ROWS = [("chair", 5), ("wall", 1), ("kitchen counter", 12), ("ceiling", 22), ("table", 7)]


def write_labels_tsv(path: Path, rows=TSV_ROWS) -> None:
    lines = ["\t".join(TSV_HEADER)]
    for k, (raw, nyu) in enumerate(rows, start=1):
        lines.append("\t".join([str(k), raw, raw, "10", str(nyu), "0", raw, "0", raw]))
    Path(path).write_text("\n".join(lines) + "\n")


def scannet_scene(seed: int = 0, n_frames: int = 7, invalid: tuple[int, ...] = (3, 4)) -> dict:
    """A 12-vertex scene: segments, five annotated objects (one with a raw category the tsv lacks), faces."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-2, 2, size=(12, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(12, 3), dtype=np.uint8)
    seg = np.array([5, 5, 5, 7, 7, 7, 9, 13, 11, 15, 20, 20])
    groups = [
        {"id": 0, "objectId": 0, "label": "chair", "segments": [5]},
        {"id": 1, "objectId": 1, "label": "wall", "segments": [7]},
        {"id": 2, "objectId": 2, "label": "kitchen counter", "segments": [9, 13, 99]},  # 99: no such segment
        {"id": 3, "objectId": 4, "label": "mystery thing", "segments": [11]},  # not in the tsv
        {"id": 4, "objectId": 5, "label": "ceiling", "segments": [15]},  # not a benchmark class
    ]
    faces = np.array([[0, 1, 2], [2, 3, 4], [0, 3, 6], [3, 4, 5], [6, 7, 8], [9, 10, 11]])
    return {"xyz": xyz, "rgb": rgb, "seg": seg, "groups": groups, "faces": faces,
            "frames": make_frames(n_frames, seed=seed, invalid=invalid)}


def write_scannet_scene(scans: Path, scene_id: str, scene: dict, labels_nyu40: np.ndarray | None = None) -> None:
    d = Path(scans) / scene_id
    d.mkdir(parents=True, exist_ok=True)
    n = len(scene["xyz"])
    v = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                           ("blue", "u1"), ("alpha", "u1")])
    v["x"], v["y"], v["z"] = scene["xyz"].T
    v["red"], v["green"], v["blue"] = scene["rgb"].T
    v["alpha"] = 255
    f = np.empty(len(scene["faces"]), dtype=[("vertex_indices", "i4", (3,))])
    f["vertex_indices"] = scene["faces"]
    PlyData([PlyElement.describe(v, "vertex"),
             PlyElement.describe(f, "face", len_types={"vertex_indices": "u1"})],
            byte_order="<").write(str(d / f"{scene_id}_vh_clean_2.ply"))
    if labels_nyu40 is not None:
        lv = np.empty(n, dtype=v.dtype.descr + [("label", "<u2")])
        for k in v.dtype.names:
            lv[k] = v[k]
        lv["label"] = labels_nyu40
        PlyData([PlyElement.describe(lv, "vertex"),
                 PlyElement.describe(f, "face", len_types={"vertex_indices": "u1"})],
                byte_order="<").write(str(d / f"{scene_id}_vh_clean_2.labels.ply"))
    (d / f"{scene_id}.aggregation.json").write_text(json.dumps(
        {"sceneId": f"scannet.{scene_id}", "appId": "Aggregator.v2", "segGroups": scene["groups"],
         "segmentsFile": f"scannet.{scene_id}_vh_clean_2.0.010000.segs.json"}))
    (d / f"{scene_id}_vh_clean_2.0.010000.segs.json").write_text(json.dumps(
        {"params": {"kThresh": "0.0001", "segMinVerts": "20"}, "sceneId": scene_id,
         "segIndices": [int(s) for s in scene["seg"]]}))
    frames = scene["frames"]
    depth_hw = frames[0]["depth"].shape if frames else DEPTH_SIZE[::-1]
    with Image.open(io.BytesIO(frames[0]["color_jpeg"])) if frames else contextlib.nullcontext() as img:
        color_size = img.size if frames else COLOR_SIZE
    write_sens(d / f"{scene_id}.sens", frames, color_size=color_size, depth_size=(depth_hw[1], depth_hw[0]))


def write_scannet_release(root: Path, scenes: dict[str, dict], train: list[str], val: list[str],
                          splits_subdir: bool = False, tsv_rows=TSV_ROWS, labels_ply: dict | None = None) -> Path:
    """A ScanNet v2 release root: scans/<scene>/..., the label tsv and the split lists."""
    root = Path(root)
    for sid, scene in scenes.items():
        write_scannet_scene(root / "scans", sid, scene, (labels_ply or {}).get(sid))
    write_labels_tsv(root / "scannetv2-labels.combined.tsv", tsv_rows)
    split_dir = root / "splits" if splits_subdir else root
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / "scannetv2_train.txt").write_text("".join(f"{s}\n" for s in train))
    (split_dir / "scannetv2_val.txt").write_text("".join(f"{s}\n" for s in val))
    return root


# ---------------------------------------------------------------- S3DIS

def s3dis_points(n: int, seed: int) -> np.ndarray:
    """(n, 6) rows x y z r g b with millimetre coordinates (exact in the 3-decimal text form)."""
    rng = np.random.default_rng(seed)
    xyz = rng.integers(-5000, 5000, size=(n, 3)) / 1000.0
    return np.concatenate([xyz, rng.integers(0, 256, size=(n, 3))], axis=1)


def write_s3dis_room(root: Path, area: int, room: str, objects: list[tuple[str, int, np.ndarray]],
                     bad_lines: dict[str, list[tuple[int, str]]] | None = None) -> Path:
    """``Area_<area>/<room>/Annotations/<class>_<k>.txt`` files; ``bad_lines`` inserts raw lines at positions."""
    ann = Path(root) / f"Area_{area}" / room / "Annotations"
    ann.mkdir(parents=True, exist_ok=True)
    for cls, k, pts in objects:
        name = f"{cls}_{k}.txt"
        lines = [f"{x:.3f} {y:.3f} {z:.3f} {int(r)} {int(g)} {int(b)}" for x, y, z, r, g, b in pts]
        for pos, line in sorted((bad_lines or {}).get(name, []), reverse=True):
            lines.insert(pos, line)
        (ann / name).write_text("\n".join(lines) + "\n")
    # the release also holds the room's whole cloud beside Annotations/; importers read the annotations
    (ann.parent / f"{room}.txt").write_text("0 0 0 0 0 0\n")
    return ann
