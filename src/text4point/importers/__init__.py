"""Importers of the real datasets (ScanNet v2, S3DIS) into the canonical layout of ``text4point.scene``.

``fetch.resolve_source`` finds (or downloads and safely extracts) the release a ``data.<name>`` params block
points at; ``sens.SensFile`` streams ScanNet's ``.sens`` RGB-D recordings; ``scannet.import_scannet`` and
``s3dis.import_s3dis`` write the dataset directory every later stage reads.
"""
