"""The one on-disk format every stage reads: a dataset directory of scenes in ScanNet's export layout.

Both the offline world generator and the real-data importers write it::

    <root>/dataset.json              label set, source, per-split scene counts, params hash
    <root>/splits/<split>.txt        scene ids, one per line (clip / train / val)
    <root>/scenes/<scene>/
        scene.json                   scene id, frame count, frame ids, image sizes, depth shift, source
        points.ply                   x y z red green blue semantic instance   (the labelled scene cloud)
        mesh.ply                     optional: coloured triangle mesh, per-face semantic and instance
        boxes.json                   one axis-aligned box per object instance
        intrinsic/intrinsic_color.txt, intrinsic_depth.txt, extrinsic_color.txt, extrinsic_depth.txt
        color/<i>.jpg  depth/<i>.png (uint16, millimetres / depth_shift)  pose/<i>.txt (camera-to-world)
        label/<i>.png  (uint8 semantic ids, 255 ignore)  instance/<i>.png (uint16 ids, 0 none)

``color``/``depth``/``pose``/``intrinsic`` mirror the directories that ScanNet's SensReader export
writes, so tools written for exported ScanNet read this layout as it is. ``<i>`` is a frame id: 0..n-1 for the
offline world; for an imported recording the frame's index in the source (ScanNet's ``.sens``: every
``frame_skip``-th, as SensReader names its exports), listed in ``scene.json["frame_ids"]`` (ascending; absent
means 0..num_frames-1). ``Scene.frame_ids`` and ``Scene.sampled_frames`` are how stages enumerate frames.
Semantic ids index the dataset's label set; ``labels.IGNORE_LABEL`` marks unlabeled data.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from plyfile import PlyData, PlyElement, PlyParseError

from .errors import InputError, bad
from .fsutil import atomic_path, write_json, write_text
from .labels import IGNORE_LABEL, LABEL_SETS, LabelSet

SPLITS = ("clip", "train", "val")
INTRINSIC_FILES = ("intrinsic_color.txt", "intrinsic_depth.txt", "extrinsic_color.txt", "extrinsic_depth.txt")


class FrameDefect(Exception):
    """A frame that real data is known to contain and that stages skip and count (``reason`` is a key)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


# ---------------------------------------------------------------- point clouds, meshes, boxes

POINT_DTYPE = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
               ("semantic", "u1"), ("instance", "i4")]


def write_points(path: str | os.PathLike, xyz: np.ndarray, rgb: np.ndarray, semantic: np.ndarray,
                 instance: np.ndarray) -> None:
    """Write the labelled scene cloud as binary little-endian PLY (atomically)."""
    n = len(xyz)
    if not (len(rgb) == len(semantic) == len(instance) == n):
        raise ValueError("points, colours, semantic and instance arrays must have the same length")
    v = np.empty(n, dtype=POINT_DTYPE)
    v["x"], v["y"], v["z"] = np.asarray(xyz, dtype=np.float32).T
    v["red"], v["green"], v["blue"] = np.asarray(rgb, dtype=np.uint8).T
    v["semantic"] = semantic
    v["instance"] = instance
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(v, "vertex")], byte_order="<").write(str(tmp))


def _read_ply(path: str | os.PathLike) -> PlyData:
    try:
        return PlyData.read(str(path))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (PlyParseError, ValueError, EOFError, OSError) as e:
        raise InputError(f"{path}: not a readable PLY file ({type(e).__name__}: {e})") from None


def read_points(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read ``points.ply``: ``xyz`` (N,3 float32), ``rgb`` (N,3 uint8), ``semantic`` (N uint8), ``instance``
    (N int32)."""
    ply = _read_ply(path)
    if "vertex" not in ply:
        raise bad(path, "element 'vertex'", "a vertex element with x y z red green blue semantic instance")
    v = ply["vertex"].data
    missing = [name for name, _ in POINT_DTYPE if name not in v.dtype.names]
    if missing:
        raise bad(path, "vertex properties", "x y z red green blue semantic instance", f"missing {missing}")
    if len(v) == 0:
        raise bad(path, "vertex", "at least one point (empty scene)", 0)
    return {
        "xyz": np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float32),
        "rgb": np.stack([v["red"], v["green"], v["blue"]], 1).astype(np.uint8),
        "semantic": np.asarray(v["semantic"], dtype=np.uint8),
        "instance": np.asarray(v["instance"], dtype=np.int32),
    }


_MESH_HEADER = ("ply\nformat binary_little_endian 1.0\nelement vertex {nv}\nproperty float x\nproperty float y\n"
                "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
                "element face {nf}\nproperty list uchar int vertex_indices\nproperty uchar semantic\n"
                "property int instance\nend_header\n")


def write_mesh(path: str | os.PathLike, vertices: np.ndarray, colors: np.ndarray, faces: np.ndarray,
               face_semantic: np.ndarray, face_instance: np.ndarray) -> None:
    """Write a coloured triangle mesh with per-face semantic and instance ids (binary PLY, atomically).

    The bytes are those plyfile writes for these elements; the faces (a list property, which plyfile writes one
    row at a time) go out as one packed array of (count 3, three indices, semantic, instance).
    """
    v = np.empty(len(vertices), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                       ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    v["x"], v["y"], v["z"] = np.asarray(vertices, dtype=np.float32).T
    v["red"], v["green"], v["blue"] = np.asarray(colors, dtype=np.uint8).T
    f = np.empty(len(faces), dtype=[("n", "u1"), ("vertex_indices", "<i4", (3,)), ("semantic", "u1"),
                                    ("instance", "<i4")])
    f["n"] = 3
    f["vertex_indices"] = np.asarray(faces).reshape(-1, 3)
    f["semantic"] = face_semantic
    f["instance"] = face_instance
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        out.write(_MESH_HEADER.format(nv=len(v), nf=len(f)).encode("ascii"))
        out.write(v.tobytes())
        out.write(f.tobytes())


def read_mesh(path: str | os.PathLike) -> dict[str, np.ndarray]:
    ply = _read_ply(path)
    if "vertex" not in ply or "face" not in ply:
        raise bad(path, "elements", "'vertex' and 'face'")
    v, f = ply["vertex"].data, ply["face"].data
    faces = np.stack(f["vertex_indices"]).astype(np.int64) if len(f) else np.zeros((0, 3), np.int64)
    return {
        "vertices": np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float32),
        "colors": np.stack([v["red"], v["green"], v["blue"]], 1).astype(np.uint8),
        "faces": faces,
        "semantic": np.asarray(f["semantic"], dtype=np.uint8),
        "instance": np.asarray(f["instance"], dtype=np.int32),
    }


def boxes_from_points(xyz: np.ndarray, semantic: np.ndarray, instance: np.ndarray,
                      thing_ids: tuple[int, ...]) -> list[dict]:
    """One axis-aligned box per instance whose (majority) class is a thing class, from its points."""
    boxes = []
    for inst in np.unique(instance):
        if inst <= 0:
            continue
        m = instance == inst
        sem = np.bincount(semantic[m].astype(np.int64), minlength=256).argmax()
        if sem == IGNORE_LABEL or int(sem) not in thing_ids:
            continue
        lo, hi = xyz[m].min(0), xyz[m].max(0)
        boxes.append({"instance": int(inst), "semantic": int(sem),
                      "center": ((lo + hi) / 2).round(5).tolist(), "size": (hi - lo).round(5).tolist()})
    return boxes


def write_boxes(path: str | os.PathLike, boxes: list[dict], label_set: LabelSet) -> None:
    out = [dict(b, **{"class": label_set.classes[b["semantic"]]}) for b in boxes]
    write_json(path, {"boxes": out})


def read_boxes(path: str | os.PathLike) -> list[dict]:
    try:
        data = json.loads(Path(path).read_text())
        boxes = data["boxes"]
        for b in boxes:
            if len(b["center"]) != 3 or len(b["size"]) != 3:
                raise ValueError
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (ValueError, KeyError, TypeError):
        raise bad(path, "boxes", "a JSON object {'boxes': [{instance, semantic, center[3], size[3]}]}") from None
    return boxes


# ---------------------------------------------------------------- frames

def write_matrix(path: str | os.PathLike, m: np.ndarray) -> None:
    """4x4 matrix as text, one row per line (the SensReader export format; -inf rows stay -inf)."""
    write_text(path, "\n".join(" ".join(repr(float(x)) for x in row) for row in np.asarray(m)) + "\n")


def read_matrix(path: str | os.PathLike) -> np.ndarray:
    try:
        vals = np.array(Path(path).read_text().split(), dtype=np.float64)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except ValueError:
        raise bad(path, "matrix", "16 numbers (a 4x4 matrix, row by row)") from None
    if vals.size != 16:
        raise bad(path, "matrix", "16 numbers (a 4x4 matrix, row by row)", int(vals.size))
    return vals.reshape(4, 4)


def write_image(path: str | os.PathLike, array: np.ndarray, quality: int = 92, compress_level: int = 6) -> None:
    """Write colour (JPEG), uint16 depth/instance (16-bit PNG) or uint8 labels (PNG) atomically.

    ``compress_level``: the PNG's zlib level (6, PIL's default; an importer writing hundreds of thousands of
    depth images uses 1: ~7x faster for ~8% more bytes)."""
    path = Path(path)
    a = np.asarray(array)
    if a.dtype == np.uint16:
        img = Image.fromarray(a)  # mode I;16
    else:
        img = Image.fromarray(a.astype(np.uint8))
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".jpg", ".jpeg"):
            img.save(tmp, format="JPEG", quality=quality)
        else:
            img.save(tmp, format="PNG", compress_level=compress_level)


def read_image(path: str | os.PathLike, dtype: type = np.uint8, size: tuple[int, int] | None = None,
               mode: str | None = None, draft: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image; a missing, truncated or corrupt file raises ``FrameDefect``.

    ``size = (w, h)`` / ``mode``: checked from the header before decoding (``FrameDefect("bad_image_size")``).
    ``draft = (w, h)``: a JPEG is decoded at a reduced scale no smaller than that (libjpeg's DCT scaling, 1/2 to
    1/8; an area average, so no aliasing), several times faster than a full decode.
    """
    try:
        with Image.open(path) as img:
            if (size is not None and img.size != tuple(size)) or (mode is not None and img.mode != mode):
                want = " ".join(x for x in (f"{size[0]}x{size[1]}" if size else "", mode or "") if x)
                raise FrameDefect("bad_image_size",
                                  f"{path}: expected {want}, got {img.size[0]}x{img.size[1]} {img.mode}")
            if draft is not None and img.format == "JPEG":
                img.draft(img.mode, (int(draft[0]), int(draft[1])))
            img.load()
            a = np.asarray(img)
    except FileNotFoundError:
        raise FrameDefect("missing_image", f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise FrameDefect("corrupt_image", f"{path}: unreadable image ({e})") from None
    return a.astype(dtype, copy=False)


@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics (3x3) and image size (width, height) of the colour or the depth sensor."""

    K: np.ndarray
    width: int
    height: int
    extrinsic: np.ndarray  # sensor-to-camera-rig (ScanNet's extrinsic_color / extrinsic_depth)


class Scene:
    """A scene directory in the canonical layout (read side)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_path = self.path / "scene.json"
        try:
            self.meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise InputError(f"{meta_path}: file not found (not a scene directory)") from None
        except json.JSONDecodeError as e:
            raise bad(meta_path, "scene.json", "valid JSON", str(e)) from None
        for key in ("scene_id", "num_frames"):
            if key not in self.meta:
                raise bad(meta_path, key, "a value")
        self.id: str = self.meta["scene_id"]
        self.num_frames: int = int(self.meta["num_frames"])
        self.frame_ids: list[int] = _frame_ids(self.meta, meta_path, self.num_frames)
        self.depth_shift: float = float(self.meta.get("depth_shift", 1000.0))

    def sampled_frames(self, frame_skip: int) -> list[int]:
        """Every ``frame_skip``-th of the scene's frame ids (``frame_ids[0], frame_ids[k], ...``): the frames later
        stages use."""
        return self.frame_ids[::frame_skip]

    def points(self) -> dict[str, np.ndarray]:
        return read_points(self.path / "points.ply")

    def mesh(self) -> dict[str, np.ndarray]:
        return read_mesh(self.path / "mesh.ply")

    def boxes(self) -> list[dict]:
        return read_boxes(self.path / "boxes.json")

    def cameras(self) -> tuple[Camera, Camera]:
        """(colour camera, depth camera) from ``intrinsic/`` and the image sizes in ``scene.json``."""
        d = self.path / "intrinsic"
        mats = {}
        for name in INTRINSIC_FILES:
            p = d / name
            if not p.exists():
                raise InputError(f"{p}: file not found (each scene needs {', '.join(INTRINSIC_FILES)})")
            mats[name] = read_matrix(p)
        for key in ("color_size", "depth_size"):
            if key not in self.meta:
                raise bad(self.path / "scene.json", key, "[width, height]")
        (cw, ch), (dw, dh) = self.meta["color_size"], self.meta["depth_size"]
        return (Camera(mats["intrinsic_color.txt"][:3, :3], cw, ch, mats["extrinsic_color.txt"]),
                Camera(mats["intrinsic_depth.txt"][:3, :3], dw, dh, mats["extrinsic_depth.txt"]))

    def frame_path(self, kind: str, i: int) -> Path:
        ext = {"color": "jpg", "depth": "png", "pose": "txt", "label": "png", "instance": "png"}[kind]
        return self.path / kind / f"{i}.{ext}"

    def pose(self, i: int) -> np.ndarray:
        """Camera-to-world pose; raises ``FrameDefect`` when it is non-finite (lost tracking)."""
        p = self.frame_path("pose", i)
        if not p.exists():
            raise FrameDefect("missing_pose", f"{p}: file not found")
        m = read_matrix(p)
        if not np.isfinite(m).all():
            raise FrameDefect("invalid_pose", f"{p}: non-finite camera pose")
        return m

    def color(self, i: int) -> np.ndarray:
        a = read_image(self.frame_path("color", i))
        cw, ch = self.meta["color_size"]
        if a.ndim != 3 or a.shape[:2] != (ch, cw):
            raise FrameDefect("bad_image_size", f"{self.frame_path('color', i)}: expected {cw}x{ch} RGB, got {a.shape}")
        return a

    def depth(self, i: int) -> np.ndarray:
        """Depth in metres (float32, 0 where missing)."""
        p = self.frame_path("depth", i)
        a = read_image(p, dtype=np.uint16)
        dw, dh = self.meta["depth_size"]
        if a.shape != (dh, dw):
            raise FrameDefect("bad_image_size", f"{p}: expected {dw}x{dh} depth, got {a.shape}")
        return a.astype(np.float32) / self.depth_shift

    def label(self, i: int) -> np.ndarray:
        """The frame's 2D semantic labels, at the colour image's size (another size is a one-line error)."""
        return self._at_color_size(self.frame_path("label", i), read_image(self.frame_path("label", i)))

    def instance(self, i: int) -> np.ndarray:
        p = self.frame_path("instance", i)
        return self._at_color_size(p, read_image(p, dtype=np.int32))

    def _at_color_size(self, path: Path, a: np.ndarray) -> np.ndarray:
        cw, ch = self.meta["color_size"]
        if a.shape[:2] != (ch, cw):
            raise InputError(f"{path}: expected {cw}x{ch} (the colour image's size), got "
                             f"{a.shape[1] if a.ndim > 1 else '?'}x{a.shape[0]}")
        return a


def sampled_frames(num_frames: int, frame_skip: int) -> list[int]:
    """Every ``frame_skip``-th of the frame ids 0..num_frames-1 (0, k, 2k, ...); for a scene whose ids are the
    recording's (an import), ``Scene.sampled_frames``."""
    return list(range(0, num_frames, frame_skip))


def _frame_ids(meta: dict, meta_path: Path, num_frames: int) -> list[int]:
    ids = meta.get("frame_ids")
    if ids is None:
        return list(range(num_frames))
    ok = (isinstance(ids, list) and len(ids) == num_frames
          and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
          and all(a < b for a, b in zip(ids, ids[1:])))
    if not ok:
        got = f"{len(ids)} entries" if isinstance(ids, list) else type(ids).__name__
        raise bad(meta_path, "frame_ids", f"{num_frames} ascending integers >= 0 (one per frame, num_frames)", got)
    return ids


class Dataset:
    """A dataset root in the canonical layout (read side)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        meta_path = self.root / "dataset.json"
        try:
            self.meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise InputError(f"{meta_path}: file not found (run the data stage first)") from None
        name = self.meta.get("label_set", {}).get("name")
        if name not in LABEL_SETS:
            raise bad(meta_path, "label_set.name", f"one of {sorted(LABEL_SETS)}", name)
        self.label_set = LABEL_SETS[name]

    def split(self, name: str, nonempty: bool = False) -> list[str]:
        """The scene ids of split ``name``; ``nonempty``: a split without scenes is a one-line ``InputError``
        (for a stage that needs the split; real data has an empty ``clip`` split)."""
        p = self.root / "splits" / f"{name}.txt"
        if not p.exists():
            raise InputError(f"{p}: file not found (split '{name}' does not exist in this dataset)")
        ids = [s.strip() for s in p.read_text().splitlines() if s.strip()]
        if nonempty and not ids:
            raise InputError(f"{p}: scene ids: expected at least one (split '{name}' is empty)")
        return ids

    def scene(self, scene_id: str) -> Scene:
        return Scene(self.root / "scenes" / scene_id)


def write_dataset_meta(root: Path, label_set: LabelSet, source: str, splits: dict[str, list[str]],
                       extra: dict | None = None) -> None:
    """Write ``splits/*.txt`` and ``dataset.json`` (last, so a dataset with metadata is complete)."""
    (root / "splits").mkdir(parents=True, exist_ok=True)
    for split, ids in splits.items():
        write_text(root / "splits" / f"{split}.txt", "".join(f"{s}\n" for s in ids))
    meta = {"label_set": label_set.to_json(), "source": source,
            "splits": {k: len(v) for k, v in splits.items()}}
    meta.update(extra or {})
    write_json(root / "dataset.json", meta)
