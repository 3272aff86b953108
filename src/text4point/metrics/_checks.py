"""Input checks shared by the metrics: one-line ``ValueError`` s (``<argument>: expected <what>, got <what>``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _class_table(class_ids, class_names) -> tuple[np.ndarray, list[str]]:
    names = list(class_names)
    ids = np.asarray(class_ids)
    if ids.ndim != 1 or len(ids) != len(names):
        raise ValueError(f"class_ids: expected a 1-D sequence of {len(names)} ids (one per class name), got shape "
                         f"{ids.shape}")
    if len(ids) and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0):
        raise ValueError(f"class_ids: expected non-negative integer class ids, got {ids.tolist()}")
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"class_ids: expected distinct ids, got {ids.tolist()}")
    return ids.astype(np.int64), names


def _field(entry, key: str, where: str):
    if not isinstance(entry, Mapping) or key not in entry:
        raise ValueError(f"{where}: expected a mapping with key {key!r}, got "
                         f"{sorted(entry) if isinstance(entry, Mapping) else type(entry).__name__}")
    return entry[key]






def _check_class_range(classes: np.ndarray, k: int | None, where: str) -> None:
    """Class ids must be non-negative and, when ``k`` is given, below it."""
    if not len(classes):
        return
    if classes.min() < 0:
        raise ValueError(f"{where}: expected non-negative class ids, got {classes.min()}")
    if k is not None and classes.max() >= k:
        raise ValueError(f"{where}: expected class ids in [0, {k}), got {classes.max()}")


def _none_if_nan(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _check_scene_lists(preds, gts, pred_name: str, gt_name: str) -> None:
    for name, v in ((pred_name, preds), (gt_name, gts)):
        if isinstance(v, Mapping) or not isinstance(v, Sequence):
            raise ValueError(f"{name}: expected a sequence with one entry per scene, got {type(v).__name__}")
    if len(preds) != len(gts):
        raise ValueError(f"{pred_name}: expected one entry per scene of {gt_name} ({len(gts)}), got {len(preds)}")
