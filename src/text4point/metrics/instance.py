"""Instance segmentation AP, as ScanNet's ``BenchmarkScripts/3d_evaluation/evaluate_semantic_instance.py``
defines it: AP over the overlaps 0.50..0.90, AP50, AP25, with its minimum region size and void handling."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..arrays import int_vector, score_vector
from ..labels import NO_INSTANCE
from ._checks import _check_class_range, _check_scene_lists, _class_table, _field, _mean_or_none, _none_if_nan

# ScanNet's overlaps are ``np.arange(0.5, 0.95, 0.05)`` followed by 0.25: nine values 0.50..0.90 (the stop,
# 0.95, is excluded), built the same way so that the thresholds carry the same rounding as ScanNet's.
INSTANCE_OVERLAPS = np.append(np.arange(0.5, 0.95, 0.05), 0.25)
MIN_REGION_SIZE = 100


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
    sem = int_vector(_field(gt, "semantic", f"gts[{s}]"), None, f"gts[{s}]['semantic']")
    n = len(sem)
    inst = int_vector(_field(gt, "instance", f"gts[{s}]"), n, f"gts[{s}]['instance']")
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
    p_class = int_vector(_field(pred, "classes", f"preds[{s}]"), p, f"preds[{s}]['classes']")
    _check_class_range(p_class, None, f"preds[{s}]['classes']")
    p_score = score_vector(_field(pred, "scores", f"preds[{s}]"), p, f"preds[{s}]['scores']")
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
