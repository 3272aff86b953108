"""One ScanNet v2 scene -> one canonical scene directory (the per-scene work of ``scannet.import_scannet``).

See ``scannet.py`` for the release layout and what is written; this module reads a scan's mesh, segments,
aggregation, ``<scene>.txt`` and ``.sens`` and writes the scene into the directory it is given.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyParseError

from ..errors import InputError, bad
from ..faults import point
from ..labels import IGNORE_LABEL, NO_INSTANCE, SCANNET20, nyu40_to_scannet20
from ..scene import boxes_from_points, write_boxes, write_image, write_matrix, write_mesh, write_points
from .sens import COLOR_COMPRESSION, SensDecodeError, SensFile

FORMAT_VERSION = 2  # of what import_scene writes; part of each scene's import key (a change re-imports)
DEPTH_PNG_LEVEL = 1  # zlib level of the exported depth PNGs: ~7x faster to write than level 6, ~8% larger


def scene_files(scan_dir: Path) -> dict[str, Path]:
    """The files of a scan that ``import_scene`` reads: the required four, then ``<scene>.txt`` and the
    ``_vh_clean_2.labels.ply``, which may be absent."""
    sid = scan_dir.name
    return {
        "sens": scan_dir / f"{sid}.sens",
        "mesh": scan_dir / f"{sid}_vh_clean_2.ply",
        "aggregation": scan_dir / f"{sid}.aggregation.json",
        "segs": scan_dir / f"{sid}_vh_clean_2.0.010000.segs.json",
        "meta": scan_dir / f"{sid}.txt",
        "labels_ply": scan_dir / f"{sid}_vh_clean_2.labels.ply",
    }


REQUIRED = ("sens", "mesh", "aggregation", "segs")


# ---------------------------------------------------------------- readers

def _read_ply(path: Path) -> PlyData:
    try:
        return PlyData.read(str(path), known_list_len={"face": {"vertex_indices": 3}})
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except PlyParseError as e:
        if "list length" in str(e):
            raise bad(path, "face", "triangles (3 vertex indices per face)", str(e)) from None
        raise InputError(f"{path}: not a readable PLY file (PlyParseError: {e})") from None
    except (ValueError, EOFError, OSError) as e:
        raise InputError(f"{path}: not a readable PLY file ({type(e).__name__}: {e})") from None


def read_scannet_mesh(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xyz (N,3) float32, rgb (N,3) uint8, faces (F,3) int64) of a ``_vh_clean_2.ply``."""
    ply = _read_ply(path)
    if "vertex" not in ply:
        raise bad(path, "element 'vertex'", "a vertex element with x y z red green blue")
    v = ply["vertex"].data
    missing = [k for k in ("x", "y", "z", "red", "green", "blue") if k not in v.dtype.names]
    if missing:
        raise bad(path, "vertex properties", "x y z red green blue", f"missing {missing}")
    if len(v) == 0:
        raise bad(path, "vertex", "at least one vertex (empty scene)", 0)
    xyz = np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float32)
    rgb = np.stack([v["red"], v["green"], v["blue"]], 1).astype(np.uint8)
    if "face" in ply and len(ply["face"].data):
        f = ply["face"].data
        if "vertex_indices" not in f.dtype.names:
            raise bad(path, "face properties", "vertex_indices")
        vi = f["vertex_indices"]
        if vi.dtype == object:  # ASCII or non-memory-mappable PLY: one array per face
            if any(len(x) != 3 for x in vi):
                raise bad(path, "face", "triangles (3 vertex indices per face)", "a face with another count")
            vi = np.stack(vi)
        faces = np.asarray(vi, dtype=np.int64).reshape(-1, 3)
        if faces.min() < 0 or faces.max() >= len(xyz):
            raise bad(path, "face vertex_indices", f"indices in 0..{len(xyz) - 1}",
                      f"{faces.min()}..{faces.max()}")
    else:
        faces = np.zeros((0, 3), np.int64)
    return xyz, rgb, faces


def _load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad(path, "content", "valid JSON", str(e)) from None


def read_segments(path: Path, num_vertices: int) -> np.ndarray:
    """Per-vertex segment ids (``segIndices``) of a ``.segs.json``."""
    data = _load_json(path)
    try:
        seg = np.asarray(data["segIndices"], dtype=np.int64)  # type: ignore[index]
        if seg.ndim != 1:
            raise ValueError
    except (KeyError, TypeError, ValueError, OverflowError):
        raise bad(path, "segIndices", "a list of integer segment ids, one per mesh vertex") from None
    if len(seg) != num_vertices:
        raise bad(path, "segIndices", f"{num_vertices} entries (one per vertex of the mesh)", f"{len(seg)} entries")
    return seg


def read_aggregation(path: Path) -> list[tuple[int, str, np.ndarray]]:
    """The annotated objects of an ``.aggregation.json`` as (objectId, raw label, segment ids), in file order."""
    data = _load_json(path)
    groups = data.get("segGroups") if isinstance(data, dict) else None
    if not isinstance(groups, list):
        raise bad(path, "segGroups", "a list of objects {objectId, label, segments}")
    out = []
    for k, g in enumerate(groups):
        try:
            oid, label = g["objectId"], g["label"]
            segs = np.asarray(g["segments"], dtype=np.int64).reshape(-1)
            if not isinstance(oid, int) or isinstance(oid, bool) or oid < 0 or not isinstance(label, str):
                raise ValueError
        except (KeyError, TypeError, ValueError, OverflowError):
            raise bad(path, f"segGroups[{k}]", "{objectId: integer >= 0, label: string, segments: [integers]}") \
                from None
        out.append((oid, label, segs))
    return out


def read_axis_alignment(path: Path) -> np.ndarray | None:
    """The ``axisAlignment`` of a scan's ``<scene>.txt`` (16 numbers, the 4x4 matrix row by row), or None when
    the file or the line is absent."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    for n, line in enumerate(text.splitlines(), start=1):
        key, sep, value = line.partition("=")
        if sep and key.strip() == "axisAlignment":
            try:
                m = np.array([float(x) for x in value.split()], dtype=np.float64)
            except ValueError:
                m = np.zeros(0)
            if m.size != 16 or not np.isfinite(m).all():
                raise bad(path, f"line {n} (axisAlignment)", "16 finite numbers (a 4x4 matrix, row by row)",
                          value.strip())
            return m.reshape(4, 4)
    return None


# ---------------------------------------------------------------- labels

def vertex_labels(seg: np.ndarray, groups: list[tuple[int, str, np.ndarray]], label_map: dict[str, int],
                  defects: Counter) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex (semantic uint8, instance int32) by the rule of ScanNet's own export
    (BenchmarkScripts ``export_train_mesh_for_evaluation.py``, as VoteNet's ScanNet loader also reads it):

    * semantic: the raw labels in order of first appearance, each over the segments of all its groups, a later
      label overwriting an earlier one where they share a segment;
    * instance: the objectIds in order of first appearance, each over the segments of its last group, a later
      objectId overwriting an earlier one. As in the script, whose per-label list *is* the label's first group's
      list, that first group's object also holds the segments of the label's later groups (this matters only
      when an objectId repeats).

    Counted: ``unknown_segment`` (a listed segment id that ``segIndices`` lacks; the script would fail on it),
    ``unknown_label`` (a group whose raw category the label table lacks: ignored), ``empty_object`` (an objectId
    left without a vertex).
    """
    useg, inv = np.unique(seg, return_inverse=True)

    def rows(segs: np.ndarray) -> np.ndarray:  # positions in useg of the listed ids that exist
        if not len(useg) or not len(segs):
            return np.zeros(0, np.int64)
        pos = np.searchsorted(useg, segs).clip(max=len(useg) - 1)
        return pos[useg[pos] == segs]

    lists: list[list[np.ndarray]] = [[segs] for _, _, segs in groups]
    first_of_label: dict[str, int] = {}
    last_of_object: dict[int, int] = {}
    for k, (oid, label, segs) in enumerate(groups):
        defects["unknown_segment"] += len(segs) - len(rows(segs))
        if label not in label_map:
            defects["unknown_label"] += 1
        if label in first_of_label:
            lists[first_of_label[label]].append(segs)
        else:
            first_of_label[label] = k
        last_of_object[oid] = k  # a repeated objectId keeps its first position, takes the later group's list
    sem_of_seg = np.full(len(useg), IGNORE_LABEL, dtype=np.uint8)
    for label, k in first_of_label.items():
        sem_of_seg[rows(np.concatenate(lists[k]))] = label_map.get(label, IGNORE_LABEL)
    inst_of_seg = np.full(len(useg), NO_INSTANCE, dtype=np.int32)
    for oid, k in last_of_object.items():
        inst_of_seg[rows(np.concatenate(lists[k]))] = oid + 1
    present = set(np.unique(inst_of_seg).tolist())
    defects["empty_object"] += sum(oid + 1 not in present for oid in last_of_object)
    return sem_of_seg[inv], inst_of_seg[inv]


def face_labels(faces: np.ndarray, semantic: np.ndarray, instance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-face (semantic, instance): the majority pair of the three vertices, else the first vertex's pair."""
    s, i = semantic[faces], instance[faces]  # (F, 3)
    same = lambda a, b: (s[:, a] == s[:, b]) & (i[:, a] == i[:, b])  # noqa: E731
    pick = np.where(same(1, 2) & ~same(0, 1), 1, 0)  # b == c != a: b is the majority; otherwise a is (or a tie)
    rows = np.arange(len(faces))
    return s[rows, pick], i[rows, pick]


def labels_ply_disagreement(path: Path, semantic: np.ndarray) -> int:
    """Vertices whose ``_vh_clean_2.labels.ply`` NYU40 label maps to another ScanNet-20 class than ``semantic``."""
    ply = _read_ply(path)
    if "vertex" not in ply or "label" not in ply["vertex"].data.dtype.names:
        raise bad(path, "vertex properties", "x y z red green blue alpha label")
    nyu = np.asarray(ply["vertex"].data["label"], dtype=np.int64)
    if len(nyu) != len(semantic):
        raise bad(path, "vertex", f"{len(semantic)} vertices (as in the _vh_clean_2.ply)", f"{len(nyu)}")
    table = np.full(max(int(nyu.max(initial=0)), 40) + 1, IGNORE_LABEL, dtype=np.int64)
    for k, v in nyu40_to_scannet20().items():
        table[k] = v
    return int((table[nyu.clip(min=0)] != semantic).sum())


# ---------------------------------------------------------------- one scene

def import_scene(out: Path, scan_dir: Path, label_map: dict[str, int], frame_skip: int) -> tuple[dict, dict]:
    """Write one ScanNet scene into the directory ``out``; return (its scene.json content, its statistics)."""
    sid = scan_dir.name
    paths = scene_files(scan_dir)
    for name in REQUIRED:
        if not paths[name].is_file():
            needs = ", ".join(paths[k].name for k in REQUIRED)
            raise InputError(f"{paths[name]}: file not found (each ScanNet scene needs {needs})")
    defects: Counter = Counter()
    xyz, rgb, faces = read_scannet_mesh(paths["mesh"])
    seg = read_segments(paths["segs"], len(xyz))
    semantic, instance = vertex_labels(seg, read_aggregation(paths["aggregation"]), label_map, defects)
    if paths["labels_ply"].is_file():
        try:
            defects["labels_ply_disagreement"] += labels_ply_disagreement(paths["labels_ply"], semantic)
        except InputError:
            defects["bad_labels_ply"] += 1  # optional and only cross-checked: a damaged copy is no reason to stop
    align = read_axis_alignment(paths["meta"])
    if align is None:
        defects["missing_axis_alignment"] += 1
    A = np.eye(4) if align is None else align
    xyz = (xyz.astype(np.float64) @ A[:3, :3].T + A[:3, 3]).astype(np.float32)
    face_sem, face_inst = face_labels(faces, semantic, instance)
    boxes = boxes_from_points(xyz, semantic, instance, SCANNET20.thing_ids)

    write_points(out / "points.ply", xyz, rgb, semantic, instance)
    write_mesh(out / "mesh.ply", xyz, rgb, faces, face_sem, face_inst)
    write_boxes(out / "boxes.json", boxes, SCANNET20)
    with SensFile(paths["sens"]) as sens:
        for name, m in (("intrinsic_color", sens.intrinsic_color), ("intrinsic_depth", sens.intrinsic_depth),
                        ("extrinsic_color", sens.extrinsic_color), ("extrinsic_depth", sens.extrinsic_depth)):
            write_matrix(out / "intrinsic" / f"{name}.txt", m)
        frame_ids = export_frames(sens, out, frame_skip, A, defects, sid)
        meta = {
            "scene_id": sid, "num_frames": len(frame_ids), "frame_ids": frame_ids,
            "color_size": [sens.color_width, sens.color_height], "depth_size": [sens.depth_width, sens.depth_height],
            "depth_shift": float(sens.depth_shift), "source": "scannet", "has_mesh": True,
            "frame_skip": frame_skip, "source_num_frames": sens.num_frames,
            "axis_alignment": None if align is None else align.tolist(),
        }
    stats = {"frames": len(frame_ids), "defects": {k: v for k, v in sorted(defects.items()) if v}}
    return meta, stats


def export_frames(sens: SensFile, out: Path, frame_skip: int, align: np.ndarray, defects: Counter,
                  scene_id: str = "") -> list[int]:
    """Write every ``frame_skip``-th frame of ``sens`` whose payloads decode, named by its index in the recording;
    return those indices. Poses are mapped into the aligned frame (``align @ camera_to_world``)."""
    for d in ("color", "depth", "pose"):
        (out / d).mkdir(parents=True, exist_ok=True)
    jpeg = COLOR_COMPRESSION[sens.color_compression_type] == "jpeg"
    frame_ids: list[int] = []
    for fr in sens:
        if fr.index % frame_skip:
            continue  # only the 96-byte frame header was read
        point("import.frame", scene=scene_id, frame=fr.index)  # a scene half written, in its temporary directory
        try:
            depth = fr.depth()
            color = fr.check_color() if jpeg else fr.color()
        except SensDecodeError:
            defects["corrupt_frame"] += 1
            continue
        i = fr.index
        if jpeg:
            (out / "color" / f"{i}.jpg").write_bytes(color)  # the recorded bytes, inside the scene's temp dir
        else:
            write_image(out / "color" / f"{i}.jpg", color)
        write_image(out / "depth" / f"{i}.png", depth, compress_level=DEPTH_PNG_LEVEL)
        pose = fr.camera_to_world
        if np.isfinite(pose).all():
            pose = align @ pose.astype(np.float64)
        else:
            defects["invalid_pose"] += 1  # lost tracking: the -inf pose is kept as recorded
        write_matrix(out / "pose" / f"{i}.txt", pose)
        frame_ids.append(i)
    return frame_ids
