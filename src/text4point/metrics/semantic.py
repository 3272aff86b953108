"""Semantic segmentation metrics, as ScanNet's ``BenchmarkScripts/3d_evaluation/evaluate_semantic_label.py``
defines them (also used by the zero-shot evaluation)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..labels import IGNORE_LABEL


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore: int = IGNORE_LABEL) -> np.ndarray:
    """``[K, K]`` int64 counts, rows the ground truth, columns the prediction; ``ignore`` ground truth skipped.

    Ground-truth ids outside ``[0, K)`` other than ``ignore`` are an error (they would silently vanish).
    """
    pred = np.asarray(pred, np.int64).reshape(-1)
    gt = np.asarray(gt, np.int64).reshape(-1)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt: expected equal lengths, got {pred.shape} and {gt.shape}")
    keep = gt != ignore
    pred, gt = pred[keep], gt[keep]
    if len(gt) and (gt.min() < 0 or gt.max() >= num_classes):
        raise ValueError(f"gt: expected class ids in [0, {num_classes}) or {ignore}, got {gt.min()}..{gt.max()}")
    if len(pred) and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"pred: expected class ids in [0, {num_classes}), got {pred.min()}..{pred.max()}")
    return np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes,
                                                                                          num_classes)


def iou_from_confusion(conf: np.ndarray) -> tuple[float, list[float | None]]:
    """(mIoU, per-class IoU); a class absent from both ground truth and prediction has IoU ``None`` and is
    left out of the mean. mIoU is 0.0 when no class is defined (an empty evaluation)."""
    conf = np.asarray(conf, np.int64)
    tp = np.diag(conf).astype(np.float64)
    fp = conf.sum(0) - tp
    fn = conf.sum(1) - tp
    denom = tp + fp + fn
    ious = [float(t / d) if d > 0 else None for t, d in zip(tp, denom)]
    defined = [v for v in ious if v is not None]
    return (float(np.mean(defined)) if defined else 0.0), ious


def semantic_metrics(conf: np.ndarray, class_names: Sequence[str]) -> dict:
    """mIoU, overall accuracy and mean class accuracy from a ``[K, K]`` confusion (rows ground truth).

    Build ``conf`` with ``confusion_matrix``: as in ScanNet's label evaluation, points whose ground truth is
    the ignore label (unannotated or a class outside the benchmark) are left out, whatever their prediction.

    - ``IoU_c = TP / (TP + FP + FN)``. A class absent from the ground truth but predicted has IoU 0 and
      counts in the mean (ScanNet's ``get_iou`` returns 0 for it); a class absent from both the ground truth
      and the predictions has an undefined IoU (ScanNet's NaN): ``None`` here, left out of the mean.
    - Overall accuracy: ``trace / total``. Class accuracy ``TP_c / GT_c`` (not part of ScanNet's script, the
      usual S3DIS "mAcc"): ``None`` for a class with no ground-truth point, left out of the mean.
    - An empty evaluation (no point) gives 0.0 for the means, as ``iou_from_confusion`` does.

    Returns ``{"miou", "accuracy", "mean_class_accuracy", "iou": {class: IoU or None},
    "class_accuracy": {class: accuracy or None}, "classes_evaluated", "points"}``.
    """
    names = list(class_names)
    k = len(names)
    conf = np.asarray(conf)
    if conf.shape != (k, k):
        raise ValueError(f"conf: expected a {k}x{k} matrix (one row and column per class name), got shape "
                         f"{conf.shape}")
    if not np.issubdtype(conf.dtype, np.integer):
        raise ValueError(f"conf: expected integer counts, got dtype {conf.dtype}")
    if (conf < 0).any():
        raise ValueError(f"conf: expected non-negative counts, got minimum {conf.min()}")
    conf = conf.astype(np.int64)
    miou, ious = iou_from_confusion(conf)
    tp = np.diag(conf)
    gt = conf.sum(1)
    total = int(conf.sum())
    acc = [float(t / g) if g > 0 else None for t, g in zip(tp, gt)]
    defined_acc = [a for a in acc if a is not None]
    return {"miou": miou, "accuracy": float(tp.sum() / total) if total else 0.0,
            "mean_class_accuracy": float(np.mean(defined_acc)) if defined_acc else 0.0,
            "iou": dict(zip(names, ious)), "class_accuracy": dict(zip(names, acc)),
            "classes_evaluated": sum(v is not None for v in ious), "points": total}
