"""Import a ScanNet v2 release into the canonical dataset layout (``text4point.scene``).

Input (the release root, found at ``data.scannet.path``, in an archive there, or downloaded from ``url``)::

    scannetv2-labels.combined.tsv          raw_category -> nyu40id (tab-separated, header row)
    scannetv2_train.txt, scannetv2_val.txt the official split lists (at the root or in splits/)
    scans/<scene>/<scene>.sens                       RGB-D recording (see ``sens.py``)
                  <scene>_vh_clean_2.ply             cleaned, decimated mesh (vertices x y z red green blue)
                  <scene>.aggregation.json           objects: segGroups [{objectId, label, segments}]
                  <scene>_vh_clean_2.0.010000.segs.json  segIndices: one segment id per mesh vertex
                  <scene>_vh_clean_2.labels.ply      optional, only cross-checked (see below)

Output per scene (written into a temporary directory that is renamed into place when complete):

* ``points.ply``: the mesh vertices with colour; ``instance`` = ``objectId + 1`` of the segGroup that owns
  the vertex's segment (0 where none does); ``semantic`` = the group's raw category -> nyu40id (tsv) ->
  ScanNet-20 index, ``IGNORE_LABEL`` for non-benchmark classes, unannotated vertices and raw categories
  that the tsv does not list (these are counted as ``unknown_label``, per object). Where a segment is listed
  by several groups, the last group wins (as in ScanNet's own export scripts).
* ``mesh.ply``: the same vertices and the mesh's triangles. A face's (semantic, instance) is the majority
  of its three vertices' (semantic, instance) pairs; when all three differ, the first vertex's pair.
* ``boxes.json``: ``scene.boxes_from_points`` over the thing classes.
* every ``frame_skip``-th frame of the ``.sens`` (source frames 0, k, 2k, ...) as ``color/<i>.jpg`` (the
  recorded JPEG bytes, not re-encoded), ``depth/<i>.png`` (uint16 as recorded), ``pose/<i>.txt``
  (camera-to-world as recorded; frames with lost tracking keep their -inf pose and are counted as
  ``invalid_pose``), ``i`` = 0..n-1, and ``scene.json["source_frame"]`` the recorded indices. A frame whose
  colour or depth payload does not decode is not exported and is counted as ``corrupt_frame``.
* ``intrinsic/{intrinsic,extrinsic}_{color,depth}.txt`` from the ``.sens`` header.

Scenes that a split list names but ``scans/`` lacks (a partial download) are skipped and counted as
``missing_scene``; ``max_scenes`` takes the first scenes of each list that are present. When
``_vh_clean_2.labels.ply`` is present, the number of vertices whose NYU40 label maps to a different
ScanNet-20 class than the aggregation gives is reported as ``labels_ply_disagreement`` (informational).
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyParseError
from tqdm import tqdm

from ..errors import InputError, bad
from ..fsutil import atomic_dir, write_json
from ..labels import IGNORE_LABEL, NO_INSTANCE, SCANNET20, nyu40_to_scannet20
from ..scene import boxes_from_points, write_boxes, write_dataset_meta, write_image, write_matrix, write_mesh, \
    write_points
from .fetch import find_root, resolve_source
from .sens import COLOR_COMPRESSION, SensDecodeError, SensFile

LABELS_TSV = "scannetv2-labels.combined.tsv"
SPLIT_FILES = {"train": "scannetv2_train.txt", "val": "scannetv2_val.txt"}
_SCENE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def import_scannet(cfg: dict, out_root: Path, download_dir: Path, progress: bool = True) -> dict:
    """Import the ScanNet v2 train and val scenes named by ``cfg`` (``data.scannet``) into ``out_root``.

    Returns statistics: ``scenes`` per split, ``frames`` exported, and ``defects`` counted (``invalid_pose``
    frames, ``corrupt_frame`` frames, ``unknown_label`` objects, ``missing_scene`` scenes, ...).
    """
    frame_skip = cfg.get("frame_skip", 10)
    if not isinstance(frame_skip, int) or isinstance(frame_skip, bool) or frame_skip < 1:
        raise bad(None, "data.scannet.frame_skip", "an integer >= 1", frame_skip)
    max_scenes = cfg.get("max_scenes")
    if max_scenes is not None and (not isinstance(max_scenes, int) or max_scenes < 1):
        raise bad(None, "data.scannet.max_scenes", "null or an integer >= 1", max_scenes)

    root = find_root(resolve_source(cfg, "scannet", download_dir, progress), lambda p: (p / "scans").is_dir(),
                     "a ScanNet v2 release directory (with scans/, scannetv2-labels.combined.tsv and the split "
                     "lists)", "data.scannet.path")
    label_map = read_label_map(root / LABELS_TSV)
    defects: Counter = Counter()
    chosen: dict[str, list[str]] = {}
    for split in ("train", "val"):
        ids = read_split_list(root, split)
        present = [s for s in ids if (root / "scans" / s).is_dir()]
        defects["missing_scene"] += len(ids) - len(present)
        if not present:
            raise InputError(f"{root / 'scans'}: none of the {len(ids)} scenes of {SPLIT_FILES[split]} is there "
                             f"(expected scans/<scene>/ directories, e.g. scans/{ids[0] if ids else 'scene0000_00'})")
        chosen[split] = present[:max_scenes] if max_scenes else present

    out_root = Path(out_root)
    scenes_dir = out_root / "scenes"
    (out_root / "dataset.json").unlink(missing_ok=True)  # the dataset is complete again only at the end
    frames = 0
    todo = [sid for split in ("train", "val") for sid in chosen[split]]
    for sid in tqdm(todo, desc="import scannet", unit="scene", disable=not progress):
        frames += import_scene(root / "scans" / sid, scenes_dir / sid, label_map, frame_skip, defects)

    stats = {"scenes": {"clip": 0, "train": len(chosen["train"]), "val": len(chosen["val"])},
             "frames": frames, "defects": {k: v for k, v in sorted(defects.items()) if v}}
    splits = {"clip": [], "train": chosen["train"], "val": chosen["val"]}
    write_dataset_meta(out_root, SCANNET20, "scannet", splits,
                       extra={"import": stats, "frame_skip": frame_skip, "max_scenes": max_scenes})
    return stats


# ---------------------------------------------------------------- release-level files

def read_label_map(tsv: Path) -> dict[str, int]:
    """ScanNet's label table as raw_category -> ScanNet-20 index (``IGNORE_LABEL`` for other NYU40 ids)."""
    if not tsv.is_file():
        raise InputError(f"{tsv}: file not found (ScanNet's label table, expected at the release root)")
    nyu_to_20 = nyu40_to_scannet20()
    out: dict[str, int] = {}
    with open(tsv, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if not header or "raw_category" not in header or "nyu40id" not in header:
            raise bad(tsv, "header", "a tab-separated header row with the columns raw_category and nyu40id",
                      "\t".join(header or []))
        ri, ni = header.index("raw_category"), header.index("nyu40id")
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            if len(row) <= max(ri, ni):
                raise bad(tsv, f"row {reader.line_num}", f"at least {max(ri, ni) + 1} tab-separated columns",
                          f"{len(row)} columns")
            raw, value = row[ri], row[ni].strip()
            nyu = int(value) if re.fullmatch(r"[+-]?\d+", value) else None
            if nyu is None or not 0 <= nyu <= 40:
                raise InputError(f"{tsv}: row {reader.line_num} (raw_category {raw!r}): nyu40id: expected an "
                                 f"integer in 0..40, got {value!r}")
            out[raw] = nyu_to_20[nyu]
    return out


def read_split_list(root: Path, split: str) -> list[str]:
    """The official scene list of ``split`` from the release root or its ``splits/`` directory."""
    name = SPLIT_FILES[split]
    for p in (root / name, root / "splits" / name):
        if p.is_file():
            ids = []
            for n, line in enumerate(p.read_text().splitlines(), start=1):
                s = line.strip()
                if not s:
                    continue
                if not _SCENE_ID.match(s):
                    raise bad(p, f"line {n}", "a scene id such as scene0000_00", s)
                ids.append(s)
            return ids
    raise InputError(f"{root / name}: file not found (put ScanNet's official split lists {SPLIT_FILES['train']} "
                     f"and {SPLIT_FILES['val']} at the release root or in {root / 'splits'})")


# ---------------------------------------------------------------- one scene

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
    """The annotated objects of an ``.aggregation.json`` as (objectId, raw label, segment ids)."""
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


def vertex_labels(seg: np.ndarray, groups: list[tuple[int, str, np.ndarray]], label_map: dict[str, int],
                  defects: Counter) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex (semantic uint8, instance int32) from the segment ids and the aggregation's groups."""
    useg, inv = np.unique(seg, return_inverse=True)
    group_of_seg = np.full(len(useg), -1, dtype=np.int64)
    for gi, (_, _, segs) in enumerate(groups):  # one step per annotated object, not per point
        pos = np.searchsorted(useg, segs).clip(max=max(len(useg) - 1, 0))
        hit = pos[useg[pos] == segs] if len(useg) else pos[:0]
        group_of_seg[hit] = gi  # later groups win where groups overlap
    group_sem = np.empty(len(groups) + 1, dtype=np.uint8)
    group_inst = np.empty(len(groups) + 1, dtype=np.int32)
    for gi, (oid, label, _) in enumerate(groups):
        if label not in label_map:
            defects["unknown_label"] += 1
        group_sem[gi] = label_map.get(label, IGNORE_LABEL)
        group_inst[gi] = oid + 1
    group_sem[-1], group_inst[-1] = IGNORE_LABEL, NO_INSTANCE  # index -1: vertices of no group
    g = group_of_seg[inv]
    return group_sem[g], group_inst[g]


def face_labels(faces: np.ndarray, semantic: np.ndarray, instance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-face (semantic, instance): the majority pair of the three vertices, else the first vertex's pair."""
    s, i = semantic[faces], instance[faces]  # (F, 3)
    same = lambda a, b: (s[:, a] == s[:, b]) & (i[:, a] == i[:, b])  # noqa: E731
    pick = np.where(same(1, 2) & ~same(0, 1), 1, 0)  # b == c != a: b is the majority; otherwise a is (or a tie)
    rows = np.arange(len(faces))
    return s[rows, pick], i[rows, pick]


def import_scene(scan_dir: Path, out_dir: Path, label_map: dict[str, int], frame_skip: int,
                 defects: Counter) -> int:
    """Write one ScanNet scene in the canonical layout (atomically); return the number of frames exported."""
    sid = scan_dir.name
    paths = {
        "sens": scan_dir / f"{sid}.sens",
        "mesh": scan_dir / f"{sid}_vh_clean_2.ply",
        "aggregation": scan_dir / f"{sid}.aggregation.json",
        "segs": scan_dir / f"{sid}_vh_clean_2.0.010000.segs.json",
    }
    for p in paths.values():
        if not p.is_file():
            needs = ", ".join(q.name for q in paths.values())
            raise InputError(f"{p}: file not found (each ScanNet scene needs {needs})")
    xyz, rgb, faces = read_scannet_mesh(paths["mesh"])
    seg = read_segments(paths["segs"], len(xyz))
    semantic, instance = vertex_labels(seg, read_aggregation(paths["aggregation"]), label_map, defects)
    labels_ply = scan_dir / f"{sid}_vh_clean_2.labels.ply"
    if labels_ply.is_file():
        defects["labels_ply_disagreement"] += _labels_ply_disagreement(labels_ply, semantic)
    face_sem, face_inst = face_labels(faces, semantic, instance)
    boxes = boxes_from_points(xyz, semantic, instance, SCANNET20.thing_ids)

    with atomic_dir(out_dir) as tmp, SensFile(paths["sens"]) as sens:
        write_points(tmp / "points.ply", xyz, rgb, semantic, instance)
        write_mesh(tmp / "mesh.ply", xyz, rgb, faces, face_sem, face_inst)
        write_boxes(tmp / "boxes.json", boxes, SCANNET20)
        for name, m in (("intrinsic_color", sens.intrinsic_color), ("intrinsic_depth", sens.intrinsic_depth),
                        ("extrinsic_color", sens.extrinsic_color), ("extrinsic_depth", sens.extrinsic_depth)):
            write_matrix(tmp / "intrinsic" / f"{name}.txt", m)
        source_frame = _export_frames(sens, tmp, frame_skip, defects)
        write_json(tmp / "scene.json", {
            "scene_id": sid, "num_frames": len(source_frame), "source_frame": source_frame,
            "color_size": [sens.color_width, sens.color_height], "depth_size": [sens.depth_width, sens.depth_height],
            "depth_shift": float(sens.depth_shift), "source": "scannet", "has_mesh": True,
            "frame_skip": frame_skip, "source_num_frames": sens.num_frames,
        })
    return len(source_frame)


def _export_frames(sens: SensFile, out: Path, frame_skip: int, defects: Counter) -> list[int]:
    for d in ("color", "depth", "pose"):
        (out / d).mkdir(parents=True, exist_ok=True)
    jpeg = COLOR_COMPRESSION[sens.color_compression_type] == "jpeg"
    source_frame: list[int] = []
    for fr in sens:
        if fr.index % frame_skip:
            continue  # only the 96-byte frame header was read
        try:
            depth = fr.depth()
            if jpeg:
                color = fr.color_bytes()
                if not color.startswith(b"\xff\xd8"):
                    raise SensDecodeError(f"{sens.path}: frame {fr.index}: colour: expected JPEG data", fr.index)
            else:
                color = fr.color()
        except SensDecodeError:
            defects["corrupt_frame"] += 1
            continue
        i = len(source_frame)
        if jpeg:
            (out / "color" / f"{i}.jpg").write_bytes(color)  # inside the scene's temporary directory
        else:
            write_image(out / "color" / f"{i}.jpg", color)
        write_image(out / "depth" / f"{i}.png", depth)
        write_matrix(out / "pose" / f"{i}.txt", fr.camera_to_world)
        if not np.isfinite(fr.camera_to_world).all():
            defects["invalid_pose"] += 1
        source_frame.append(fr.index)
    return source_frame


def _labels_ply_disagreement(path: Path, semantic: np.ndarray) -> int:
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
