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


def write_sens(path: Path, frames, version: int = 4, color_size=COLOR_SIZE, depth_size=DEPTH_SIZE,
               camera: dict | None = None, depth_shift: float = 1000.0, sensor_name: str = "StructureSensor",
               color_compression: int = 2, depth_compression: int = 1, truncate: int = 0, imu: int | None = None,
               num_frames: int | None = None) -> dict:
    """Write a .sens file: header, then per frame pose, timestamps, sizes, JPEG colour, zlib uint16 depth.

    ``frames``: a sequence of ``make_frames`` dicts (read one at a time, so it may generate them lazily); a
    frame may carry ``depth_zlib`` (its compressed depth) instead of ``depth``. ``imu``: append the recorder's IMU
    block (uint64 count, then that many 128-byte IMU frames) as SensorData::saveToFile does. ``num_frames``: the
    count the header claims (default: ``len(frames)``). ``truncate`` chops that many bytes off the end.
    Returns the header values written.
    """
    camera = camera or default_camera()
    name = sensor_name.encode()
    claimed = len(frames) if num_frames is None else num_frames
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        out.write(struct.pack("<I", version))
        out.write(struct.pack("<Q", len(name)) + name)
        for key in ("intrinsic_color", "extrinsic_color", "intrinsic_depth", "extrinsic_depth"):
            out.write(struct.pack("<16f", *[float(x) for x in np.asarray(camera[key]).reshape(16)]))  # row by row
        out.write(struct.pack("<ii", color_compression, depth_compression))
        out.write(struct.pack("<IIII", color_size[0], color_size[1], depth_size[0], depth_size[1]))
        out.write(struct.pack("<f", depth_shift))
        out.write(struct.pack("<Q", claimed))
        for k in range(len(frames)):
            fr = frames[k]
            color = fr["color_jpeg"]
            depth = fr.get("depth_zlib") or zlib.compress(fr["depth"].astype("<u2").tobytes())
            out.write(struct.pack("<16f", *[float(x) for x in fr["pose"].reshape(16)]))
            out.write(struct.pack("<QQQQ", fr["timestamp_color"], fr["timestamp_depth"], len(color), len(depth)))
            out.write(color)
            out.write(depth)
        if imu is not None:
            rng = np.random.default_rng(imu)
            out.write(struct.pack("<Q", imu))
            for t in range(imu):  # rotation rate, acceleration, magnetic field, attitude, gravity; timestamp
                out.write(struct.pack("<15d", *rng.normal(size=15).tolist()) + struct.pack("<Q", 1000 * t))
        if truncate:
            out.truncate(out.tell() - truncate)
    return {"version": version, "sensor_name": sensor_name, **camera, "color_compression_type": color_compression,
            "depth_compression_type": depth_compression, "color_width": color_size[0],
            "color_height": color_size[1], "depth_width": depth_size[0], "depth_height": depth_size[1],
            "depth_shift": depth_shift, "num_frames": claimed}


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
            "frames": make_frames(n_frames, seed=seed, invalid=invalid), "axis_alignment": axis_alignment(seed)}


def axis_alignment(seed: int) -> np.ndarray:
    """A ScanNet axisAlignment: a rotation about z and a translation, with the 6 decimals <scene>.txt holds."""
    rng = np.random.default_rng(100 + seed)
    a = rng.uniform(-np.pi, np.pi)
    m = np.eye(4)
    m[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    m[:3, 3] = rng.uniform(-4, 4, size=3)
    return np.round(m, 6)


def write_scene_txt(path: Path, align: np.ndarray | None, n_frames: int) -> None:
    """A scan's ``<scene>.txt`` as the release has it (``key = value`` lines, matrices row by row, %f)."""
    lines = [] if align is None else ["axisAlignment = " + "".join(f"{x:f} " for x in np.asarray(align).reshape(16))]
    lines += ["colorHeight = 968", "colorToDepthExtrinsics = " + "".join(f"{x:f} " for x in np.eye(4).reshape(16)),
              "colorWidth = 1296", "depthHeight = 480", "depthWidth = 640", "fx_color = 1170.187988",
              "fx_depth = 571.623718", "fy_color = 1170.187988", "fy_depth = 571.623718", "mx_color = 647.750000",
              "mx_depth = 319.500000", "my_color = 483.750000", "my_depth = 239.500000",
              f"numColorFrames = {n_frames}", f"numDepthFrames = {n_frames}", "numIMUmeasurements = 0",
              "sceneType = Apartment"]
    Path(path).write_text("\n".join(lines) + "\n")


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
    write_sens(d / f"{scene_id}.sens", frames, color_size=color_size, depth_size=(depth_hw[1], depth_hw[0]),
               **scene.get("sens", {}))
    if "axis_alignment" in scene:  # None: a <scene>.txt without the line; no key: no <scene>.txt
        write_scene_txt(d / f"{scene_id}.txt", scene.get("axis_alignment"), len(frames))


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


# ---------------------------------------------------------------- SUN RGB-D (release + toolbox metadata)

SUN_PREFIX = "/n/fs/sun3d/data/"  # how the toolbox's metadata and split name the release's files
SUN_META_FIELDS = ("sequenceName", "groundtruth3DBB", "Rtilt", "K", "depthpath", "rgbpath", "anno_extrinsics",
                   "depthname", "rgbname", "sensorType", "valid")
SUN_BOX_FIELDS = ("basis", "coeffs", "centroid", "classname", "sequenceName", "orientation", "label")


def sun_shift(depth_mm: np.ndarray) -> np.ndarray:
    """A depth PNG's values as SUN RGB-D stores them: millimetres rotated left by 3 bits (16-bit)."""
    d = np.asarray(depth_mm, dtype=np.uint16)
    return ((d << 3) | (d >> 13)).astype(np.uint16)


def sunrgbd_frame(seed: int, sequence: str, size=(16, 12), boxes: list[dict] | None = None) -> dict:
    """One image: random colour, depth in millimetres (zeros = no depth, one pixel beyond 8 m), K, a tilt."""
    rng = np.random.default_rng(seed)
    w, h = size
    depth = rng.integers(800, 6000, size=(h, w)).astype(np.uint16)
    depth[rng.random((h, w)) < 0.2] = 0
    depth[0, 0] = 9500  # beyond 8 m: the toolbox clips it to 8 m
    t = rng.uniform(-0.2, 0.2)
    rtilt = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])  # gravity alignment
    K = np.array([[18.0 + seed, 0, (w - 1) / 2 + 0.3], [0, 19.0 + seed, (h - 1) / 2 - 0.2], [0, 0, 1]])
    return {"sequence": sequence, "rgb": rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "depth_mm": depth,
            "K": K, "Rtilt": rtilt, "boxes": boxes or [], "sensor": sequence.split("/")[1]}


def sun_box(classname: str, centroid, coeffs, heading: float) -> dict:
    """A groundtruth3DBB entry: ``orientation`` = (cos, -sin, 0) of VoteNet's heading (heading = -atan2(o1, o0))."""
    return {"classname": classname, "centroid": np.asarray(centroid, float), "coeffs": np.asarray(coeffs, float),
            "orientation": np.array([np.cos(heading), -np.sin(heading), 0.0])}


def _struct_array(rows: list[dict], fields: tuple[str, ...]) -> np.ndarray:
    a = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, r in enumerate(rows):
        for f in fields:
            a[0, i][f] = r.get(f, np.zeros((0, 0)))
    return a


def write_sunrgbd_release(root: Path, frames: list[dict], train: list[str], val: list[str],
                          meta: str = "v1", missing: tuple[str, ...] = ()) -> Path:
    """``SUNRGBD/<sequence>/{image,depth}/``, ``intrinsics.txt``, the toolbox's ``SUNRGBDMeta.mat`` (v1; v2:
    ``SUNRGBDMeta3DBB_v2.mat`` at the root) and ``traintestSUNRGBD/allsplit.mat`` (MATLAB v5, scipy's writer).
    ``missing``: sequences whose image files are not written (a partial download)."""
    from scipy.io import savemat

    root = Path(root)
    rows = []
    for fr in frames:
        seq = fr["sequence"]
        name = seq.rsplit("/", 1)[1]
        d = root / seq
        if seq not in missing:
            (d / "image").mkdir(parents=True, exist_ok=True)
            (d / "depth").mkdir(parents=True, exist_ok=True)
            Image.fromarray(fr["rgb"]).save(d / "image" / f"{name}.jpg", format="JPEG", quality=95)
            Image.fromarray(sun_shift(fr["depth_mm"])).save(d / "depth" / f"{name}.png", format="PNG")
            (d / "intrinsics.txt").write_text("\n".join(" ".join(f"{x:g}" for x in row) for row in fr["K"]) + "\n")
        boxes = [{"basis": np.eye(3), "coeffs": b["coeffs"].reshape(1, 3), "centroid": b["centroid"].reshape(1, 3),
                  "classname": b["classname"], "sequenceName": seq, "orientation": b["orientation"].reshape(1, 3),
                  "label": np.zeros((0, 0))} for b in fr["boxes"]]
        rows.append({"sequenceName": seq, "groundtruth3DBB": _struct_array(boxes, SUN_BOX_FIELDS),
                     "Rtilt": fr["Rtilt"], "K": fr["K"], "depthpath": f"{SUN_PREFIX}{seq}/depth/{name}.png",
                     "rgbpath": f"{SUN_PREFIX}{seq}/image/{name}.jpg", "anno_extrinsics": np.eye(3),
                     "depthname": f"{name}.png", "rgbname": f"{name}.jpg", "sensorType": fr["sensor"], "valid": 1})
    meta_path = root / ("SUNRGBDtoolbox/Metadata/SUNRGBDMeta.mat" if meta == "v1" else "SUNRGBDMeta3DBB_v2.mat")
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    savemat(meta_path, {"SUNRGBDMeta": _struct_array(rows, SUN_META_FIELDS)})
    split = root / "SUNRGBDtoolbox" / "traintestSUNRGBD" / "allsplit.mat"
    split.parent.mkdir(parents=True, exist_ok=True)
    cells = lambda seqs: np.array([f"{SUN_PREFIX}{s}" for s in seqs], dtype=object).reshape(1, -1)  # noqa: E731
    savemat(split, {"alltrain": cells(train), "alltest": cells(val)})
    return root
