"""Import S3DIS (Stanford3dDataset_v1.2_Aligned_Version) into the canonical dataset layout.

Input: ``Area_<N>/<room>/Annotations/<class>_<k>.txt``, one file per annotated object, one point per line
(``x y z r g b``). ``<class>`` is one of the 13 S3DIS classes, or ``stairs``, which is mapped to
``clutter`` as is common practice; any other class is a one-line ``InputError`` naming the file.

Output: one scene per room, id ``Area_<N>_<room>``: ``points.ply`` (all annotation files of the room,
in (class, k) order; ``instance`` = the file's 1-based position in that order; ``semantic`` = the S3DIS-13
index), ``boxes.json`` (``scene.boxes_from_points`` over the thing classes) and ``scene.json``
(``num_frames`` 0, ``has_mesh`` false: S3DIS rooms have no RGB-D frames and no mesh here). Rooms are written
one by one, each atomically, and a rerun reuses the rooms already written from the same files (``runner``).
Splits: ``val`` = the rooms of area ``val_area``, ``train`` = the rooms of the other areas, ``clip`` empty;
``max_rooms`` keeps the first rooms (natural order) of each split.

Known defect of the release: a few lines do not parse as six numbers (Area_5/hallway_6 holds a stray
non-numeric character). Such lines are skipped and counted (``bad_lines``, with the files in
``bad_line_files``), as are lines with a non-finite number; they are not fatal.
"""

from __future__ import annotations

import io
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import InputError, bad
from ..labels import S3DIS13
from ..scene import boxes_from_points, write_boxes, write_points
from . import runner
from .fetch import find_root, resolve_source

FORMAT_VERSION = 1  # of what import_room writes; part of each room's import key

CLASS_ALIASES = {"stairs": "clutter"}
_ANNOTATION = re.compile(r"^(?P<cls>.+)_(?P<k>\d+)\.txt$")
_AREA = re.compile(r"^Area_(\d+)$")
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_GOOD_LINE = re.compile(rf"^[ \t]*{_NUM}(?:[ \t]+{_NUM}){{5}}[ \t]*\r?$", re.M)
_ANY_LINE = re.compile(r"^[ \t]*\S", re.M)


def import_s3dis(cfg: dict, out_root: Path, download_dir: Path, progress: bool = True) -> dict:
    """Import every room of S3DIS as configured by ``cfg`` (``data.s3dis``) into ``out_root``.

    Returns statistics: ``scenes`` per split, ``points`` written, ``defects`` (``bad_lines``) and
    ``bad_line_files`` (file relative to the release root -> skipped lines).
    """
    val_area = cfg["val_area"]
    if not isinstance(val_area, int) or isinstance(val_area, bool):
        raise bad(None, "data.s3dis.val_area", "an area number (integer)", val_area)
    max_rooms = cfg["max_rooms"]
    if max_rooms is not None and (not isinstance(max_rooms, int) or max_rooms < 1):
        raise bad(None, "data.s3dis.max_rooms", "null or an integer >= 1", max_rooms)

    root = find_root(resolve_source(cfg, "s3dis", download_dir, progress), _areas,
                     "a directory holding Area_1 ... Area_6 (Stanford3dDataset_v1.2_Aligned_Version)",
                     "data.s3dis.path")
    areas = _areas(root)
    if val_area not in areas:
        raise bad(None, "data.s3dis.val_area", f"one of the areas in {root} ({sorted(areas)})", val_area)
    rooms: dict[str, list[tuple[int, Path]]] = {"train": [], "val": []}
    for n in sorted(areas):
        split = "val" if n == val_area else "train"
        rooms[split] += [(n, d) for d in sorted((d for d in areas[n].iterdir()
                                                 if d.is_dir() and not d.name.startswith(".")),
                                                key=lambda d: _natural(d.name))]
    for split in rooms:
        if max_rooms:
            rooms[split] = rooms[split][:max_rooms]
        if not rooms[split]:
            raise InputError(f"{root}: no rooms for split {split!r} (expected Area_<N>/<room>/Annotations/)")

    splits: dict[str, list[str]] = {"clip": [], "train": [], "val": []}
    jobs = []
    for split in ("train", "val"):
        for n, room_dir in rooms[split]:
            sid = f"Area_{n}_{room_dir.name}"
            files = sorted((room_dir / "Annotations").glob("*.txt")) if (room_dir / "Annotations").is_dir() else []
            key = {"importer": "s3dis", "format": FORMAT_VERSION, "files": runner.file_sizes(files)}
            jobs.append(runner.SceneJob(sid, key, (room_dir, n, root)))
            splits[split].append(sid)
    per_room, imported = runner.run(out_root, jobs, import_room, progress=progress, desc="import s3dis")
    defects: Counter = Counter()
    bad_files: dict[str, int] = {}
    for st in per_room:
        bad_files.update(st["bad_line_files"])
        defects["bad_lines"] += sum(st["bad_line_files"].values())
    stats = {"scenes": {k: len(v) for k, v in splits.items()}, "points": sum(st["points"] for st in per_room),
             "defects": {k: v for k, v in sorted(defects.items()) if v}, "bad_line_files": bad_files}
    runner.finish(out_root, S3DIS13, "s3dis", splits,
                  extra={"import": stats, "val_area": val_area, "max_rooms": max_rooms})
    return {**stats, "scenes_imported": len(imported), "scenes_reused": len(jobs) - len(imported)}


def _areas(root: Path) -> dict[int, Path]:
    if not root.is_dir():
        return {}
    return {int(m.group(1)): p for p in root.iterdir() if p.is_dir() and (m := _AREA.match(p.name))}


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def annotation_class(path: Path) -> tuple[int, int]:
    """(S3DIS-13 index, k) of an ``Annotations/<class>_<k>.txt`` file."""
    m = _ANNOTATION.match(path.name)
    if not m:
        raise bad(path, "file name", "<class>_<k>.txt (e.g. chair_1.txt)", path.name)
    cls = CLASS_ALIASES.get(m["cls"], m["cls"])
    if cls not in S3DIS13.classes:
        raise bad(path, "class", f"one of {', '.join(S3DIS13.classes)} (or stairs)", m["cls"])
    return S3DIS13.index(cls), int(m["k"])


def read_annotation(path: Path) -> tuple[np.ndarray, int]:
    """The (M, 6) float64 ``x y z r g b`` rows of an annotation file and the number of lines skipped.

    A well-formed file is parsed in one ``numpy.loadtxt`` call; a file with malformed lines is filtered by
    one regular expression over the whole text (lines of exactly six numbers are kept), so no per-line
    Python loop runs in either case.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    text = raw.decode("latin-1")  # any byte decodes; non-ASCII bytes only occur on malformed lines
    if not text.strip():
        return np.zeros((0, 6)), 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = np.loadtxt(io.StringIO(text), dtype=np.float64, ndmin=2, comments=None)
        if a.shape[1] != 6:
            raise ValueError
        skipped = 0
    except ValueError:
        good = [m.group(0) for m in _GOOD_LINE.finditer(text)]
        skipped = len(_ANY_LINE.findall(text)) - len(good)
        a = np.loadtxt(io.StringIO("\n".join(good)), dtype=np.float64, ndmin=2, comments=None) if good \
            else np.zeros((0, 6))
    finite = np.isfinite(a).all(axis=1)
    if not finite.all():
        skipped += int((~finite).sum())
        a = a[finite]
    return a.reshape(-1, 6), skipped


def import_room(out: Path, room_dir: Path, area: int, root: Path) -> tuple[dict, dict]:
    """Write one room as a scene into the directory ``out``; return (its scene.json content, its statistics:
    ``points`` and ``bad_line_files``, {file relative to the release root ``root``: lines skipped})."""
    ann = room_dir / "Annotations"
    if not ann.is_dir():
        raise InputError(f"{ann}: directory not found (each S3DIS room needs Annotations/<class>_<k>.txt)")
    files = sorted(((annotation_class(p), p) for p in ann.iterdir()
                    if p.is_file() and p.suffix == ".txt" and not p.name.startswith(".")),
                   key=lambda t: (S3DIS13.classes[t[0][0]], t[0][1], t[1].name))
    if not files:
        raise InputError(f"{ann}: no annotation files (expected <class>_<k>.txt, e.g. chair_1.txt)")
    arrays, sems, skipped = [], [], {}
    for (sem, _), p in files:
        a, n_bad = read_annotation(p)
        arrays.append(a)
        sems.append(sem)
        if n_bad:
            skipped[p.relative_to(root).as_posix()] = n_bad
    counts = np.array([len(a) for a in arrays])
    if not counts.sum():
        raise bad(ann, "points", "at least one point in its annotation files (empty scene)", 0)
    data = np.concatenate(arrays, axis=0)
    xyz = data[:, :3].astype(np.float32)
    rgb = np.clip(np.rint(data[:, 3:6]), 0, 255).astype(np.uint8)
    semantic = np.repeat(np.array(sems, dtype=np.uint8), counts)
    instance = np.repeat(np.arange(1, len(files) + 1, dtype=np.int32), counts)
    boxes = boxes_from_points(xyz, semantic, instance, S3DIS13.thing_ids)
    write_points(out / "points.ply", xyz, rgb, semantic, instance)
    write_boxes(out / "boxes.json", boxes, S3DIS13)
    meta = {"scene_id": f"Area_{area}_{room_dir.name}", "num_frames": 0, "frame_ids": [], "source": "s3dis",
            "has_mesh": False, "area": area, "room": room_dir.name}
    return meta, {"points": len(xyz), "bad_line_files": skipped}
