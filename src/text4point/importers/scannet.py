"""Import a ScanNet v2 release into the canonical dataset layout (``text4point.scene``).

Input (the release root, found at ``data.scannet.path``, in an archive there, or downloaded from ``url``)::

    scannetv2-labels.combined.tsv          raw_category -> nyu40id (tab-separated, header row)
    scannetv2_train.txt, scannetv2_val.txt the official split lists (at the root or in splits/)
    scans/<scene>/<scene>.sens                       RGB-D recording (see ``sens.py``)
                  <scene>.txt                        scan metadata; its axisAlignment line (see below)
                  <scene>_vh_clean_2.ply             cleaned, decimated mesh (vertices x y z red green blue)
                  <scene>.aggregation.json           objects: segGroups [{objectId, label, segments}]
                  <scene>_vh_clean_2.0.010000.segs.json  segIndices: one segment id per mesh vertex
                  <scene>_vh_clean_2.labels.ply      optional, only cross-checked (see below)

Output per scene (``scannet_scene.import_scene``):

* ``points.ply``: the mesh vertices with colour; ``instance`` = ``objectId + 1``, ``semantic`` = the raw
  category -> nyu40id (tsv) -> ScanNet-20 index, by the rule of ScanNet's own export script where groups share
  a segment (``scannet_scene.vertex_labels``: labels in order of first appearance, later ones overwrite; the
  same for objectIds); ``IGNORE_LABEL`` for non-benchmark classes, unannotated vertices and raw categories that
  the tsv does not list (counted, per object, as ``unknown_label``).
* ``mesh.ply``: the same vertices and the mesh's triangles. A face's (semantic, instance) is the majority
  of its three vertices' (semantic, instance) pairs; when all three differ, the first vertex's pair.
* ``boxes.json``: ``scene.boxes_from_points`` over the thing classes.
* **Axis alignment.** ``<scene>.txt``'s ``axisAlignment`` (a 4x4 matrix, row by row: a rotation about z and a
  translation that square the room with the axes and put it at the origin) is applied as VoteNet's and
  PointContrast's ScanNet pipelines apply it: points and mesh vertices ``x' = A x``, hence boxes in the aligned
  frame, and camera poses ``A @ camera_to_world``, so that frames project onto the aligned points. The matrix is
  recorded as ``scene.json["axis_alignment"]``; a scan without it is imported unaligned (``axis_alignment``
  null, counted as ``missing_axis_alignment``).
* every ``frame_skip``-th frame of the ``.sens`` (0, k, 2k, ...) whose colour decodes (a full JPEG decode check
  at 1/8 scale) and whose depth decodes, named by its index in the ``.sens`` as SensReader names its exports:
  ``color/<i>.jpg`` (the recorded JPEG bytes, not re-encoded), ``depth/<i>.png`` (uint16 as recorded),
  ``pose/<i>.txt``; ``scene.json["frame_ids"]`` lists them. Frames with lost tracking keep their -inf pose
  (``invalid_pose``); undecodable frames are not exported (``corrupt_frame``).
* ``intrinsic/{intrinsic,extrinsic}_{color,depth}.txt`` from the ``.sens`` header.

Scenes that a split list names but ``scans/`` lacks (a partial download) are skipped and counted as
``missing_scene``; ``max_scenes`` takes the first scenes of each list that are present. Also counted:
``unknown_segment`` (an aggregation segment id that ``segIndices`` lacks), ``empty_object`` (an object left
with no vertex), ``bad_labels_ply`` (an unreadable ``_vh_clean_2.labels.ply``: skipped) and, informational,
``labels_ply_disagreement`` (vertices whose labels.ply NYU40 label maps to another class than the aggregation).

The import is resumable and parallel (``runner``): each scene is written atomically and records what it was made
from; a rerun imports only the scenes that are missing or made from other input, in ``workers`` processes, and
``dataset.json`` is written last.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

from ..errors import InputError, bad
from ..labels import SCANNET20, nyu40_to_scannet20
from . import runner
from .fetch import find_root, resolve_source
from .scannet_scene import FORMAT_VERSION, import_scene, scene_files

LABELS_TSV = "scannetv2-labels.combined.tsv"
SPLIT_FILES = {"train": "scannetv2_train.txt", "val": "scannetv2_val.txt"}
_SCENE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _int_param(cfg: dict, key: str, nullable: bool = False) -> int | None:
    v = cfg[key]
    if v is None and nullable:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise bad(None, f"data.scannet.{key}", ("null or " if nullable else "") + "an integer >= 1", v)
    return v


def import_scannet(cfg: dict, out_root: Path, download_dir: Path, progress: bool = True) -> dict:
    """Import the ScanNet v2 train and val scenes named by ``cfg`` (``data.scannet``) into ``out_root``.

    Returns statistics: ``scenes`` per split, ``frames`` exported, ``defects`` counted (``invalid_pose``
    frames, ``corrupt_frame`` frames, ``unknown_label`` objects, ``missing_scene`` scenes, ...) - what
    ``dataset.json["import"]`` records - and ``scenes_imported`` / ``scenes_reused`` by this run.
    """
    frame_skip = _int_param(cfg, "frame_skip")
    max_scenes = _int_param(cfg, "max_scenes", nullable=True)
    workers = _int_param(cfg, "workers")

    root = find_root(resolve_source(cfg, "scannet", download_dir, progress), lambda p: (p / "scans").is_dir(),
                     "a ScanNet v2 release directory (with scans/, scannetv2-labels.combined.tsv and the split "
                     "lists)", "data.scannet.path")
    label_map = read_label_map(root / LABELS_TSV)
    label_key = hashlib.sha256(json.dumps(label_map, sort_keys=True).encode()).hexdigest()[:16]
    missing = 0
    chosen: dict[str, list[str]] = {}
    for split in ("train", "val"):
        ids = read_split_list(root, split)
        present = [s for s in ids if (root / "scans" / s).is_dir()]
        missing += len(ids) - len(present)
        if not present:
            raise InputError(f"{root / 'scans'}: none of the {len(ids)} scenes of {SPLIT_FILES[split]} is there "
                             f"(expected scans/<scene>/ directories, e.g. scans/{ids[0] if ids else 'scene0000_00'})")
        chosen[split] = present[:max_scenes] if max_scenes else present

    todo = list(dict.fromkeys(sid for split in ("train", "val") for sid in chosen[split]))  # a scene listed twice once
    jobs = []
    for sid in todo:
        scan = root / "scans" / sid
        key = {"importer": "scannet", "format": FORMAT_VERSION, "frame_skip": frame_skip, "label_table": label_key,
               "files": runner.file_sizes(list(scene_files(scan).values()))}
        jobs.append(runner.SceneJob(sid, key, (scan, label_map, frame_skip)))
    per_scene, imported = runner.run(out_root, jobs, import_scene, workers=workers, progress=progress,
                                     desc="import scannet")
    defects = {"missing_scene": missing}
    for st in per_scene:
        for k, v in st["defects"].items():
            defects[k] = defects.get(k, 0) + v
    stats = {"scenes": {"clip": 0, "train": len(chosen["train"]), "val": len(chosen["val"])},
             "frames": sum(st["frames"] for st in per_scene),
             "defects": {k: v for k, v in sorted(defects.items()) if v}}
    splits = {"clip": [], "train": chosen["train"], "val": chosen["val"]}
    runner.finish(out_root, SCANNET20, "scannet", splits,
                  extra={"import": stats, "frame_skip": frame_skip, "max_scenes": max_scenes})
    return {**stats, "scenes_imported": len(imported), "scenes_reused": len(todo) - len(imported)}


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
