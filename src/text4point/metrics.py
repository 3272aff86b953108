"""Official evaluation metrics of the three downstream 3D tasks, written from the benchmarks' definitions.

- Semantic segmentation, as ScanNet's ``BenchmarkScripts/3d_evaluation/evaluate_semantic_label.py``:
  ``confusion_matrix`` / ``iou_from_confusion`` (shared with the zero-shot evaluation) and
  ``semantic_metrics`` (mIoU, overall accuracy, mean class accuracy).
- Instance segmentation, as ScanNet's ``evaluate_semantic_instance.py``: ``instance_ap`` (AP over the
  overlaps 0.50..0.90, AP50, AP25).
- 3D object detection, as VoteNet's ``utils/eval_det.py``: ``detection_ap`` (VOC AP of axis-aligned boxes at
  IoU 0.25 and 0.5), with ``box_iou_3d`` and ``nms_3d`` for the detection head.

Every function takes numpy arrays (or anything ``np.asarray`` accepts) and raises ``ValueError`` with a
one-line message (``<argument>: expected <what>, got <what>``) on malformed input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .labels import NO_INSTANCE
from .pretrain.zeroshot import confusion_matrix, iou_from_confusion

# ScanNet's overlaps are ``np.arange(0.5, 0.95, 0.05)`` followed by 0.25: nine values 0.50..0.90 (the stop,
# 0.95, is excluded), built the same way so that the thresholds carry the same rounding as ScanNet's.
INSTANCE_OVERLAPS = np.append(np.arange(0.5, 0.95, 0.05), 0.25)
MIN_REGION_SIZE = 100


# ---------------------------------------------------------------- semantic segmentation


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


# ---------------------------------------------------------------- validation helpers


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


def _int_vector(x, n: int | None, where: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1 or (n is not None and len(a) != n):
        want = f"a 1-D array of length {n}" if n is not None else "a 1-D array"
        raise ValueError(f"{where}: expected {want}, got shape {a.shape}")
    if len(a) and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{where}: expected integer ids, got dtype {a.dtype}")
    return a.astype(np.int64)


def _score_vector(x, n: int, where: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1 or len(a) != n:
        raise ValueError(f"{where}: expected a 1-D array of length {n}, got shape {a.shape}")
    if len(a) and not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{where}: expected numeric scores, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{where}: expected finite scores, got {a[~np.isfinite(a)][:3].tolist()}")
    return a


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


# ---------------------------------------------------------------- instance segmentation


def _pred_members(masks, n: int, where: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(prediction index, point index) of every member point, and the number of predictions.

    ``masks``: a ``(P, N)`` array (non-zero = member, ScanNet's mask files) or a sequence of P 1-D arrays,
    each a boolean mask of length N or an array of distinct integer point indices.
    """
    if not isinstance(masks, (list, tuple)):
        m = np.asarray(masks)
        if m.ndim != 2 or m.shape[1] != n:
            raise ValueError(f"{where}: expected a (P, {n}) mask array or a list of masks / index arrays, got "
                             f"shape {m.shape}")
        pid, pts = np.nonzero(m)
        return pid.astype(np.int64), pts.astype(np.int64), len(m)
    pids, ptss = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for i, m in enumerate(masks):
        m = np.asarray(m)
        if m.ndim != 1:
            raise ValueError(f"{where}[{i}]: expected a 1-D boolean mask or index array, got shape {m.shape}")
        if m.dtype == bool:
            if len(m) != n:
                raise ValueError(f"{where}[{i}]: expected a boolean mask of length {n}, got length {len(m)}")
            pts = np.flatnonzero(m)
        elif np.issubdtype(m.dtype, np.integer) or len(m) == 0:
            pts = m.astype(np.int64)
            if len(pts) and (pts.min() < 0 or pts.max() >= n):
                raise ValueError(f"{where}[{i}]: expected point indices in [0, {n}), got {pts.min()}..{pts.max()}")
            if len(np.unique(pts)) != len(pts):
                raise ValueError(f"{where}[{i}]: expected distinct point indices (an integer mask is read as "
                                 f"indices: pass mask != 0), got repeated indices")
        else:
            raise ValueError(f"{where}[{i}]: expected a boolean mask or integer point indices, got dtype {m.dtype}")
        pids.append(np.full(len(pts), i, np.int64))
        ptss.append(pts)
    return np.concatenate(pids), np.concatenate(ptss), len(masks)


def _instance_scene(pred, gt, s: int, class_ids: np.ndarray, min_region_size: int, no_instance: int) -> dict:
    """One scene's ground-truth instances, kept predictions and their intersections (ScanNet's assignment)."""
    sem = _int_vector(_field(gt, "semantic", f"gts[{s}]"), None, f"gts[{s}]['semantic']")
    n = len(sem)
    inst = _int_vector(_field(gt, "instance", f"gts[{s}]"), n, f"gts[{s}]['instance']")
    # ground-truth instances: the (class, instance id) pairs of evaluated classes, ordered by (class, id) as
    # ScanNet orders its ``class * 1000 + instance`` ids
    member = np.isin(sem, class_ids) & (inst != no_instance)
    pairs, inverse, gt_count = np.unique(np.stack([sem[member], inst[member]], 1), axis=0, return_inverse=True,
                                         return_counts=True)
    gt_of_point = np.full(n, -1, np.int64)
    gt_of_point[member] = inverse.reshape(-1)
    gt_class = pairs[:, 0]
    void = ~member  # ScanNet's void: points of no evaluated class (here also evaluated points without instance)

    masks = _field(pred, "masks", f"preds[{s}]")
    pid, pts, p = _pred_members(masks, n, f"preds[{s}]['masks']")
    p_class = _int_vector(_field(pred, "classes", f"preds[{s}]"), p, f"preds[{s}]['classes']")
    _check_class_range(p_class, None, f"preds[{s}]['classes']")
    p_score = _score_vector(_field(pred, "scores", f"preds[{s}]"), p, f"preds[{s}]['scores']")
    p_count = np.bincount(pid, minlength=p)
    p_void = np.bincount(pid, weights=void[pts], minlength=p).astype(np.int64)
    g = len(gt_class)
    hit = gt_of_point[pts] >= 0
    inter = np.bincount(pid[hit] * g + gt_of_point[pts][hit], minlength=p * g).reshape(p, g)
    inter[p_class[:, None] != gt_class[None, :]] = 0  # ScanNet intersects a prediction with its class' GT only
    # ScanNet drops predictions of classes not evaluated and those smaller than the minimum region size (and
    # empty ones, which its script would divide by)
    keep = np.isin(p_class, class_ids) & (p_count >= max(min_region_size, 1))
    return {"gt_class": gt_class, "gt_count": gt_count.astype(np.int64), "p_class": p_class[keep],
            "p_count": p_count[keep], "p_score": p_score[keep], "p_void": p_void[keep], "inter": inter[keep]}


def _scannet_ap(y_true: np.ndarray, y_score: np.ndarray, hard_fn: int) -> float:
    """AP of ScanNet's (and Cityscapes') instance evaluation from scored TP/FP entries and missed GT.

    One (precision, recall) point per distinct score ``s``, counting the entries scoring ``>= s``, with the
    missed ground truth (``hard_fn``) added to the false negatives; then the artificial point (precision 1,
    recall 0). With the points ordered by increasing score, ``r_-1 = r_0`` and ``r_n+1 = 0``:
    ``AP = sum_i p_i * (r_i-1 - r_i+1) / 2``.
    """
    if not len(y_score):  # nothing counted: every GT missed (ScanNet's script fails on this case)
        return 0.0
    order = np.argsort(y_score, kind="stable")
    score, true = y_score[order], y_true[order]
    _, first = np.unique(score, return_index=True)
    below = np.concatenate([[0.0], np.cumsum(true)])[first]  # true entries scoring below each threshold
    tp = true.sum() - below
    fp = len(score) - first - tp
    fn = below + hard_fn
    precision = np.append(tp / (tp + fp), 1.0)
    recall = np.append(tp / (tp + fn), 0.0)
    r = np.concatenate([recall[:1], recall, [0.0]])
    return float(precision @ (0.5 * (r[:-2] - r[2:])))


def _class_blocks(scenes: list[dict], cls: int, min_region_size: int) -> tuple[list[dict], bool, bool]:
    blocks, has_gt, has_pred = [], False, False
    for sc in scenes:
        gi = np.flatnonzero(sc["gt_class"] == cls)
        pi = np.flatnonzero(sc["p_class"] == cls)
        big = sc["gt_count"][gi] >= min_region_size
        has_gt |= bool(big.any())
        has_pred |= len(pi) > 0
        if not len(pi) and not big.any():
            continue
        inter = sc["inter"][np.ix_(pi, gi)].astype(np.float64)
        iou = inter / (sc["gt_count"][gi][None, :] + sc["p_count"][pi][:, None] - inter)
        iou[inter == 0] = 0.0
        # share of a prediction on ignored points: void points and this class' GT below the minimum size
        ignored = (sc["p_void"][pi] + inter[:, ~big].sum(1)) / sc["p_count"][pi]
        blocks.append({"iou": iou, "big": big, "score": sc["p_score"][pi], "ignored": ignored})
    return blocks, has_gt, has_pred


def _class_ap_at(blocks: list[dict], has_gt: bool, has_pred: bool, th: float) -> float:
    """ScanNet's matching of one class at overlap ``th`` (greedy, GT in order, predictions in given order)."""
    if not has_gt:
        return float("nan")
    if not has_pred:
        return 0.0
    y_true, y_score, hard_fn = [], [], 0
    for b in blocks:
        hit = b["iou"] > th
        visited = np.zeros(len(hit), bool)
        for j in np.flatnonzero(b["big"]):
            best = None
            for i in np.flatnonzero(hit[:, j] & ~visited):
                s = float(b["score"][i])
                if best is None:
                    best, visited[i] = s, True
                else:  # a second match of this GT: the lower score is a false positive (the prediction stays
                    y_true.append(0.0)  # unvisited, as in ScanNet)
                    y_score.append(min(best, s))
                    best = max(best, s)
            if best is None:
                hard_fn += 1
            else:
                y_true.append(1.0)
                y_score.append(best)
        # a prediction overlapping no GT of its class (small ones included) above ``th`` is a false positive
        # unless more than ``th`` of it lies on ignored points
        fp = ~hit.any(1) & (b["ignored"] <= th)
        y_true.extend([0.0] * int(fp.sum()))
        y_score.extend(b["score"][fp].tolist())
    return _scannet_ap(np.asarray(y_true), np.asarray(y_score), hard_fn)


def instance_ap(preds: Sequence[Mapping], gts: Sequence[Mapping], class_ids: Sequence[int],
                class_names: Sequence[str], min_region_size: int = MIN_REGION_SIZE,
                no_instance: int = NO_INSTANCE) -> dict:
    """ScanNet's 3D instance segmentation AP (``evaluate_semantic_instance.py``) over a set of scenes.

    ``gts[s]``: ``{"semantic": (N,) class ids, "instance": (N,) instance ids}`` (a ``Scene.points()`` dict
    fits). ``preds[s]``: ``{"masks", "classes": (P,), "scores": (P,)}`` where ``masks`` is a ``(P, N)`` array
    (non-zero = member) or a list of P arrays, each a boolean mask of length N or distinct integer point
    indices. ``class_ids``: the evaluated semantic ids, ``class_names`` their names.

    Definitions, as ScanNet's script:

    - A GT instance is the set of points sharing a (semantic id, instance id) pair, of an evaluated class, with
      ``instance != no_instance``. GT of classes not evaluated is not evaluated; its points are void. GT
      instances smaller than ``min_region_size`` points are neither matched nor missed.
    - Predictions of classes not in ``class_ids`` and predictions smaller than ``min_region_size`` (or empty)
      are dropped.
    - Overlap ``IoU = |P ∩ G| / (|P| + |G| - |P ∩ G|)``, with GT of the prediction's class only; a match needs
      ``IoU > t`` for t in 0.50, 0.55, ..., 0.90 (``np.arange(0.5, 0.95, 0.05)``, as ScanNet) and 0.25.
    - Greedy: each GT (in (class, id) order) takes the first unmatched prediction (in the given order) above
      the overlap; further predictions above it are false positives with the lower of the two scores, the GT
      keeping the higher. Unmatched GT are false negatives.
    - A prediction with no GT of its class above the overlap (small GT included) is a false positive unless
      the share of its points on ignored points - void points, plus GT of its class below the minimum size -
      exceeds the overlap; then it is ignored.
    - AP: ScanNet's curve, one point per distinct score plus the artificial (precision 1, recall 0) point,
      integrated as ``sum p_i (r_i-1 - r_i+1) / 2`` (see ``_scannet_ap``).
    - A class with no GT (of at least the minimum size) has an undefined AP (ScanNet's NaN): ``None`` here,
      left out of the means; a class with GT and no prediction has AP 0.

    Choices where the script leaves it open: ScanNet reads predictions and scenes in dictionary order, here
    they are taken in the given order (it matters only when one prediction clears the overlap with two GT,
    possible at 0.25); points of an evaluated class without an instance (``no_instance``) are void (ScanNet's
    ground truth has none); a class whose predictions are all ignored while all its GT is missed has AP 0
    (ScanNet's script fails on it).

    Returns ``{"ap", "ap50", "ap25", "classes": {name: {"ap", "ap50", "ap25"}}, "classes_evaluated",
    "scenes"}``: ``ap`` the mean over the nine overlaps 0.50..0.90, the top-level values the means over the
    classes with GT (``None`` when no class has any).
    """
    ids, names = _class_table(class_ids, class_names)
    _check_scene_lists(preds, gts, "preds", "gts")
    if isinstance(min_region_size, bool) or not isinstance(min_region_size, (int, np.integer)) \
            or min_region_size < 0:
        raise ValueError(f"min_region_size: expected a non-negative integer, got {min_region_size!r}")
    scenes = [_instance_scene(p, g, s, ids, int(min_region_size), int(no_instance))
              for s, (p, g) in enumerate(zip(preds, gts))]
    ap = np.empty((len(ids), len(INSTANCE_OVERLAPS)))
    for ci, cls in enumerate(ids):
        blocks, has_gt, has_pred = _class_blocks(scenes, int(cls), int(min_region_size))
        for oi, th in enumerate(INSTANCE_OVERLAPS):
            ap[ci, oi] = _class_ap_at(blocks, has_gt, has_pred, float(th))
    o25 = np.isclose(INSTANCE_OVERLAPS, 0.25)
    o50 = np.flatnonzero(np.isclose(INSTANCE_OVERLAPS, 0.5))[0]
    per_class = {"ap": ap[:, ~o25].mean(1), "ap50": ap[:, o50], "ap25": ap[:, np.flatnonzero(o25)[0]]}
    defined = ~np.isnan(ap[:, 0])
    out = {k: _mean_or_none(v[defined]) for k, v in per_class.items()}
    out["classes"] = {name: {k: _none_if_nan(v[ci]) for k, v in per_class.items()} for ci, name in enumerate(names)}
    out["classes_evaluated"] = int(defined.sum())
    out["scenes"] = len(scenes)
    return out


# ---------------------------------------------------------------- 3D detection


def _boxes(x, where: str) -> np.ndarray:
    b = np.asarray(x, dtype=np.float64) if np.size(x) else np.zeros((0, 6))
    if b.ndim != 2 or b.shape[1] != 6:
        raise ValueError(f"{where}: expected an (N, 6) array of boxes (cx, cy, cz, dx, dy, dz), got shape {b.shape}")
    if not np.isfinite(b).all() or (b[:, 3:] < 0).any():
        raise ValueError(f"{where}: expected finite boxes with non-negative sizes, got a non-finite value or a "
                         f"negative size")
    return b


def box_iou_3d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[N, M]`` IoU of axis-aligned boxes ``(cx, cy, cz, dx, dy, dz)``; 0 where both boxes are empty."""
    a, b = _boxes(a, "a"), _boxes(b, "b")
    lo = np.maximum(a[:, None, :3] - a[:, None, 3:] / 2, b[None, :, :3] - b[None, :, 3:] / 2)
    hi = np.minimum(a[:, None, :3] + a[:, None, 3:] / 2, b[None, :, :3] + b[None, :, 3:] / 2)
    inter = np.clip(hi - lo, 0.0, None).prod(-1)
    union = a[:, 3:].prod(1)[:, None] + b[:, 3:].prod(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms_3d(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, *, class_aware: bool = False,
           classes: np.ndarray | None = None) -> np.ndarray:
    """Greedy non-maximum suppression of axis-aligned boxes; the kept indices, highest score first.

    The highest-scoring remaining box is kept and every box with ``IoU > iou_threshold`` with it is removed
    (VoteNet's ``nms_3d_faster``); equal scores keep the given order. ``class_aware=True`` (VoteNet's
    ``_samecls`` variant) needs ``classes``: boxes of different classes never suppress each other.
    """
    b = _boxes(boxes, "boxes")
    s = _score_vector(scores, len(b), "scores")
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold: expected a value in [0, 1], got {iou_threshold!r}")
    iou = box_iou_3d(b, b)
    if class_aware:
        if classes is None:
            raise ValueError("classes: expected one class id per box when class_aware=True, got None")
        c = _int_vector(classes, len(b), "classes")
        iou[c[:, None] != c[None, :]] = 0.0
    elif classes is not None:
        raise ValueError("classes: expected None unless class_aware=True (per-class suppression), got an array")
    order = np.argsort(-s, kind="stable")
    removed = np.zeros(len(b), bool)
    keep = []
    for i in order:
        if removed[i]:
            continue
        keep.append(i)
        removed |= iou[i] > iou_threshold
    return np.asarray(keep, dtype=np.int64)


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
        pb = _boxes(_field(p, "boxes", f"pred_boxes[{s}]"), f"pred_boxes[{s}]['boxes']")
        pc = _int_vector(_field(p, "classes", f"pred_boxes[{s}]"), len(pb), f"pred_boxes[{s}]['classes']")
        _check_class_range(pc, bound, f"pred_boxes[{s}]['classes']")
        ps = _score_vector(_field(p, "scores", f"pred_boxes[{s}]"), len(pb), f"pred_boxes[{s}]['scores']")
        gb = _boxes(_field(g, "boxes", f"gt_boxes[{s}]"), f"gt_boxes[{s}]['boxes']")
        gc = _int_vector(_field(g, "classes", f"gt_boxes[{s}]"), len(gb), f"gt_boxes[{s}]['classes']")
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


__all__ = ["INSTANCE_OVERLAPS", "MIN_REGION_SIZE", "box_iou_3d", "confusion_matrix", "detection_ap",
           "instance_ap", "iou_from_confusion", "nms_3d", "semantic_metrics"]
