"""3D object detection AP, as VoteNet's ``utils/eval_det.py`` defines it: VOC AP of axis-aligned boxes at
3D IoU thresholds (0.25 and 0.5 for ScanNet)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..arrays import boxes_array, int_vector, score_vector
from ..geometry import box_iou_3d
from ._checks import _check_class_range, _check_scene_lists, _class_table, _field, _mean_or_none, _none_if_nan


def _voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC 2010+ AP (``use_07_metric=False``): area under the precision envelope, summed where recall moves."""
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _threshold_key(t: float) -> str:
    return f"{t:g}"


def detection_ap(pred_boxes: Sequence[Mapping], gt_boxes: Sequence[Mapping],
                 iou_thresholds: Sequence[float] = (0.25, 0.5), *, class_names: Sequence[str],
                 class_ids: Sequence[int] | None = None) -> dict:
    """VoteNet's 3D detection AP (``utils/eval_det.py``) of axis-aligned boxes over a set of scenes.

    ``pred_boxes[s]``: ``{"boxes": (P, 6), "classes": (P,), "scores": (P,)}``; ``gt_boxes[s]``:
    ``{"boxes": (G, 6), "classes": (G,)}``; boxes are ``(cx, cy, cz, dx, dy, dz)``. Class ids index
    ``class_names``, or, with ``class_ids`` (e.g. a label set's ``thing_ids``), are those ids; then boxes of
    other classes (predicted or ground truth) are not evaluated.

    Per class and IoU threshold, as VoteNet: the class' detections of all scenes sorted by decreasing score
    (equal scores in scene, then given, order); each takes the GT of its scene and class with the highest IoU
    (the first on ties); it is a true positive if that IoU is ``> threshold`` and that GT is not yet taken
    (then it is), else a false positive - also when the best GT is taken and another GT would clear the
    threshold. ``recall = cumTP / #GT``, ``precision = cumTP / cumDet``; AP is VOC's area under the
    interpolated (right-maximum) precision envelope (``use_07_metric=False``).

    Choices where VoteNet is not defined: a class with no GT box has an undefined AP (VoteNet gets NaN or
    crashes): ``None`` here, left out of the mAP; a class with GT and no detection has AP 0 (VoteNet's
    multiprocessing variant).

    Returns ``{"thresholds": [...], "map": {"0.25": mAP, ...}, "ap": {"0.25": {name: AP or None}, ...},
    "classes_evaluated", "scenes"}`` (``map`` ``None`` when no class has GT).
    """
    names = list(class_names)
    k = len(names)
    if class_ids is None:
        ids, bound = np.arange(k, dtype=np.int64), k  # ids index class_names
    else:
        ids, names = _class_table(class_ids, names)
        bound = None  # other ids are allowed and not evaluated
    _check_scene_lists(pred_boxes, gt_boxes, "pred_boxes", "gt_boxes")
    thresholds = [float(t) for t in np.atleast_1d(np.asarray(iou_thresholds, dtype=np.float64))]
    if not thresholds or any(not 0.0 <= t < 1.0 for t in thresholds):
        raise ValueError(f"iou_thresholds: expected one or more values in [0, 1), got {iou_thresholds!r}")

    scenes = []
    for s, (p, g) in enumerate(zip(pred_boxes, gt_boxes)):
        pb = boxes_array(_field(p, "boxes", f"pred_boxes[{s}]"), f"pred_boxes[{s}]['boxes']")
        pc = int_vector(_field(p, "classes", f"pred_boxes[{s}]"), len(pb), f"pred_boxes[{s}]['classes']")
        _check_class_range(pc, bound, f"pred_boxes[{s}]['classes']")
        ps = score_vector(_field(p, "scores", f"pred_boxes[{s}]"), len(pb), f"pred_boxes[{s}]['scores']")
        gb = boxes_array(_field(g, "boxes", f"gt_boxes[{s}]"), f"gt_boxes[{s}]['boxes']")
        gc = int_vector(_field(g, "classes", f"gt_boxes[{s}]"), len(gb), f"gt_boxes[{s}]['classes']")
        _check_class_range(gc, bound, f"gt_boxes[{s}]['classes']")
        scenes.append((pb, pc, ps, gb, gc))

    ap = np.full((len(ids), len(thresholds)), np.nan)
    for ci, cls in enumerate(ids):
        scores, best_iou, best_gt, npos = [], [], [], 0
        for pb, pc, ps, gb, gc in scenes:
            pm, gm = pc == cls, gc == cls
            iou = box_iou_3d(pb[pm], gb[gm])
            scores.append(ps[pm])
            if iou.shape[1]:
                best_iou.append(iou.max(1))
                best_gt.append(npos + iou.argmax(1))  # a global GT index: unique over scenes
            else:
                best_iou.append(np.full(len(iou), -np.inf))
                best_gt.append(np.full(len(iou), -1))
            npos += int(gm.sum())
        if npos == 0:
            continue
        order = np.argsort(-np.concatenate(scores), kind="stable")
        best_iou = np.concatenate(best_iou)[order]
        best_gt = np.concatenate(best_gt)[order]
        for ti, t in enumerate(thresholds):
            candidate = np.flatnonzero(best_iou > t)
            _, first = np.unique(best_gt[candidate], return_index=True)  # the first claim of each GT wins
            tp = np.zeros(len(order))
            tp[candidate[first]] = 1.0
            ctp = np.cumsum(tp)
            cdet = np.arange(1, len(order) + 1)
            ap[ci, ti] = _voc_ap(ctp / npos, ctp / np.maximum(cdet, np.finfo(np.float64).eps))

    defined = ~np.isnan(ap[:, 0])
    keys = [_threshold_key(t) for t in thresholds]
    return {"thresholds": thresholds,
            "map": {key: _mean_or_none(ap[defined, ti]) for ti, key in enumerate(keys)},
            "ap": {key: {name: _none_if_nan(ap[ci, ti]) for ci, name in enumerate(names)}
                   for ti, key in enumerate(keys)},
            "classes_evaluated": int(defined.sum()), "scenes": len(scenes)}
