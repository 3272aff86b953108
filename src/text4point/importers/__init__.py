"""Importers of the real datasets (ScanNet v2, S3DIS, SUN RGB-D) into the canonical layout of ``text4point.scene``.

``fetch.resolve_source`` finds (or downloads and safely extracts) the release a ``data.<name>`` params block
points at; ``sens.SensFile`` streams ScanNet's ``.sens`` RGB-D recordings; ``scannet.import_scannet``,
``s3dis.import_s3dis`` and ``sunrgbd.import_sunrgbd`` write the dataset directory every later stage reads, scene
by scene and resumably (``runner``).
"""

from __future__ import annotations

from pathlib import Path

SOURCES = ("scannet", "s3dis", "sunrgbd")


def run_import(source: str, cfg: dict, out_root: Path, download_dir: Path, progress: bool = True) -> dict:
    """Import dataset ``source`` as configured by ``cfg`` (its ``data.<source>`` params) into ``out_root``, in
    place: finished scenes of an earlier, interrupted run are kept; ``dataset.json`` appears last."""
    if source == "scannet":
        from .scannet import import_scannet as importer
    elif source == "s3dis":
        from .s3dis import import_s3dis as importer
    elif source == "sunrgbd":
        from .sunrgbd import import_sunrgbd as importer
    else:
        raise ValueError(f"unknown data source {source!r}; expected one of {SOURCES}")
    return importer(cfg, Path(out_root), Path(download_dir), progress=progress)
