"""Reading the ``clip_features`` stage's cache (:mod:`text4point.clip.features` writes it)::

    <out>/<scene>/features.npy    float16 [F, gh, gw, d]   dense features of each cached frame
    <out>/<scene>/frames.npy      int32 [F]                 frame index of each row
    <out>/<scene>/grid.json       colour pixel (u, v) -> grid cell (:func:`~text4point.clip.dense.pixel_to_cell`)
    <out>/text_embeddings.pt      {label_set: {classes, templates, embeddings [K,T,d], ...}, "identity": ...}
    <out>/manifest.json           CLIP identity, scenes, frames, skipped counts (written last)

Everything is keyed by the CLIP identity (model, pretrained, weights sha256): :func:`load_features` refuses a
cache made by other weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..fsutil import read_array
from .load import same_weights

TEXT_FILE = "text_embeddings.pt"
MANIFEST = "manifest.json"


@dataclass
class FeatureCache:
    """A validated ``clip_features`` output directory."""

    root: Path
    manifest: dict

    @property
    def identity(self) -> dict:
        return self.manifest["identity"]

    @property
    def scene_ids(self) -> list[str]:
        return list(self.manifest["scenes"])

    def grid(self, scene_id: str) -> dict:
        return json.loads((self.root / scene_id / "grid.json").read_text())

    def frames(self, scene_id: str) -> np.ndarray:
        return read_array(self.root / scene_id / "frames.npy")

    def features(self, scene_id: str) -> np.ndarray:
        """``[F, gh, gw, d]`` float16, memory-mapped (read-only); a truncated file is one line naming it."""
        return read_array(self.root / scene_id / "features.npy", mmap=True)

    def text(self) -> dict:
        return load_text_embeddings(self.root, self.identity)


def _describe(identity: dict) -> str:
    sha = str(identity.get("weights_sha256", "?"))[:12]
    return f"model {identity.get('model')!r} ({identity.get('pretrained')}, weights sha256 {sha}...)"


def load_features(out_dir: Path, expected_identity: dict) -> FeatureCache:
    """Open a features cache; a cache of another CLIP (model or weights) is a one-line ``InputError``."""
    path = Path(out_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: file not found (run the clip_features stage)") from None
    except json.JSONDecodeError:
        raise InputError(f"{path}: not valid JSON (rerun the clip_features stage)") from None
    got = manifest.get("identity") or {}
    if not same_weights(got, expected_identity):
        raise InputError(f"{path}: CLIP features were made with {_describe(got)}, expected "
                         f"{_describe(expected_identity)} (rerun the clip_features stage)")
    return FeatureCache(Path(out_dir), manifest)


def load_text_embeddings(out_dir: Path, expected_identity: dict | None = None) -> dict:
    path = Path(out_dir) / TEXT_FILE
    try:
        text = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found (run the clip_features stage)") from None
    if expected_identity is not None and not same_weights(text.get("identity") or {}, expected_identity):
        raise InputError(f"{path}: text embeddings were made with {_describe(text.get('identity') or {})}, expected "
                         f"{_describe(expected_identity)} (rerun the clip_features stage)")
    return text
