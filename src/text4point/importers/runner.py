"""Resumable, parallel import of a release's scenes: each scene is an atomic unit, the manifest comes last.

An import of a whole release runs for hours (ScanNet v2: ~1500 scenes), so it is written straight into the
dataset root rather than into one temporary directory that a crash would throw away:

* ``start`` removes ``dataset.json`` (the root is complete again only when ``finish`` writes it) and the
  temporaries of killed scene writers;
* ``run`` writes each scene into a temporary directory beside ``scenes/<scene>`` that is renamed when the scene
  is complete (``fsutil.atomic_dir``; its ``scene.json`` is the last file written). ``scene.json["import"]``
  records the job's ``key`` (the importer's format version, the params that shape the scene, the sizes of its
  source files) and the scene's statistics. A scene whose recorded key equals the job's is reused as it is, so
  a rerun imports only what is missing, incomplete or made from other input. Scenes run in ``workers``
  spawned processes;
* ``finish`` removes scene directories that no job of this import names (an earlier import's), then writes the
  split lists and ``dataset.json``.

Statistics are returned per scene in job order (not completion order), so an interrupted and resumed import
writes the same bytes as an uninterrupted one, whatever the number of workers.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from ..fsutil import atomic_dir, write_json
from ..labels import LabelSet
from ..scene import write_dataset_meta

RECORD = "import"  # the key of scene.json that holds a scene's import record


@dataclass(frozen=True)
class SceneJob:
    """One scene to import: ``work(tmp_dir, *args) -> (scene.json content, statistics)`` writes it into
    ``tmp_dir``; ``key`` says what it is made from (JSON-serialisable; equal keys -> the scene is reused)."""

    scene_id: str
    key: dict
    args: tuple


def start(out_root: Path) -> Path:
    """Prepare ``out_root`` for a (re)run; return its ``scenes/`` directory."""
    out_root = Path(out_root)
    scenes = out_root / "scenes"
    scenes.mkdir(parents=True, exist_ok=True)
    (out_root / "dataset.json").unlink(missing_ok=True)  # the dataset is complete again only at the end
    for p in scenes.glob(".*.tmp"):  # a killed writer's half-written scene (one import writes a root at a time)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return scenes


def reusable(scenes: Path, job: SceneJob) -> dict | None:
    """The statistics recorded by an existing scene made from the same input as ``job``, else None."""
    try:
        meta = json.loads((scenes / job.scene_id / "scene.json").read_text())
    except (OSError, ValueError):
        return None
    rec = meta.get(RECORD) if isinstance(meta, dict) else None
    if isinstance(rec, dict) and rec.get("key") == _normal(job.key) and isinstance(rec.get("stats"), dict):
        return rec["stats"]
    return None


def run(out_root: Path, jobs: list[SceneJob], work: Callable, workers: int = 1, progress: bool = True,
        desc: str = "import") -> tuple[list[dict], list[str]]:
    """Import every job's scene that is not already there; return (statistics per job, ids imported now)."""
    scenes = start(out_root)
    stats: dict[str, dict] = {}
    todo = []
    for job in jobs:
        got = reusable(scenes, job)
        if got is None:
            todo.append(job)
        else:
            stats[job.scene_id] = got
    try:
        _run(scenes, todo, work, workers, stats, tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc,
                                                      unit="scene", disable=not progress))
    except BaseException:
        for d in (scenes, Path(out_root)):  # a failed import that finished no scene leaves nothing behind
            try:
                d.rmdir()
            except OSError:
                break
        raise
    return [stats[job.scene_id] for job in jobs], [job.scene_id for job in todo]


def _run(scenes: Path, todo: list[SceneJob], work: Callable, workers: int, stats: dict, bar) -> None:
    with bar:
        if workers <= 1 or len(todo) <= 1:
            for job in todo:
                stats[job.scene_id] = import_one(scenes, job, work)
                bar.update()
        else:
            ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads (MLflow)
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx) as pool:
                pending = {pool.submit(import_one, scenes, job, work): job for job in todo}
                while pending:
                    done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                    for f in done:
                        job = pending.pop(f)
                        if f.exception() is not None:
                            for other in pending:
                                other.cancel()  # scenes already running finish (atomically), the rest wait
                            raise f.exception()
                        stats[job.scene_id] = f.result()
                        bar.update()


def import_one(scenes: Path, job: SceneJob, work: Callable) -> dict:
    """Write one scene into a temporary directory renamed to ``scenes/<id>`` when complete; return its stats."""
    with atomic_dir(scenes / job.scene_id) as tmp:
        meta, stats = work(tmp, *job.args)
        write_json(tmp / "scene.json", {**meta, RECORD: {"key": _normal(job.key), "stats": stats}})
    return stats


def finish(out_root: Path, label_set: LabelSet, source: str, splits: dict[str, list[str]], extra: dict) -> None:
    """Remove the scenes of ``scenes/`` that ``splits`` does not name, then write splits and dataset.json."""
    out_root = Path(out_root)
    keep = {s for ids in splits.values() for s in ids}
    for d in (out_root / "scenes").iterdir():
        if d.is_dir() and not d.name.startswith(".") and d.name not in keep:
            shutil.rmtree(d)
    write_dataset_meta(out_root, label_set, source, splits, extra=extra)


def file_sizes(paths: list[Path]) -> dict[str, int]:
    """``{file name: size}`` of the files that exist among ``paths`` (what a scene's key records)."""
    return {p.name: p.stat().st_size for p in paths if p.is_file()}


def _normal(obj: object) -> object:
    return json.loads(json.dumps(obj, sort_keys=True))


__all__ = ["SceneJob", "start", "run", "finish", "reusable", "import_one", "file_sizes", "RECORD"]
