"""Evaluation metrics (text4point.metrics) on hand-made predictions whose values are worked out by hand in the
comments: semantic segmentation (ScanNet), instance AP (ScanNet's curve), detection AP (VoteNet / VOC)."""

from __future__ import annotations

import numpy as np
import pytest

from text4point import geometry as G
from text4point import metrics as M

# instance segmentation toys: "wall" (0) is not evaluated, "chair" (1) and "table" (2) are
WALL, CHAIR, TABLE = 0, 1, 2
THINGS, THING_NAMES = [CHAIR, TABLE], ["chair", "table"]


def scene(*blocks: tuple[int, int, int]) -> dict:
    """GT of one scene from consecutive blocks of (points, semantic id, instance id)."""
    sem = np.concatenate([np.full(n, s) for n, s, _ in blocks]).astype(np.uint8)
    inst = np.concatenate([np.full(n, i) for n, _, i in blocks]).astype(np.int32)
    return {"semantic": sem, "instance": inst}


def preds(n: int, *instances: tuple[range, int, float]) -> dict:
    """Predictions of one scene from (point range, class id, score), as boolean masks."""
    masks = []
    for r, _, _ in instances:
        m = np.zeros(n, bool)
        m[list(r)] = True
        masks.append(m)
    return {"masks": masks, "classes": [c for _, c, _ in instances], "scores": [s for _, _, s in instances]}


def chair(res: dict) -> dict:
    return res["classes"]["chair"]


# ---------------------------------------------------------------- semantic segmentation


def test_semantic_metrics_on_a_known_confusion():
    # classes a, b, c, d; rows GT, columns prediction, the three GT=255 points are left out whatever predicted:
    #   a: [4, 1, 1, 0]   b: [0, 3, 1, 0]   c: [0, 0, 0, 0]   d: [0, 0, 0, 0]
    gt = np.array([0] * 6 + [1] * 4 + [255] * 3)
    pred = np.array([0, 0, 0, 0, 1, 2] + [1, 1, 1, 2] + [3, 0, 2])
    conf = M.confusion_matrix(pred, gt, 4)
    assert conf.tolist() == [[4, 1, 1, 0], [0, 3, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    res = M.semantic_metrics(conf, ["a", "b", "c", "d"])
    # IoU a = 4 / (4 + 0 + 2) = 2/3; b = 3 / (3 + 1 + 1) = 3/5; c (predicted, absent from GT) = 0 / 2 = 0;
    # d (absent from both) undefined
    assert res["iou"]["a"] == pytest.approx(2 / 3)
    assert res["iou"]["b"] == pytest.approx(3 / 5)
    assert res["iou"]["c"] == 0.0
    assert res["iou"]["d"] is None
    assert res["miou"] == pytest.approx((2 / 3 + 3 / 5 + 0) / 3)  # 19/45: c counts, d does not
    assert res["accuracy"] == pytest.approx(7 / 10)
    # class accuracy: a 4/6, b 3/4, c and d have no GT point
    assert res["class_accuracy"] == {"a": pytest.approx(2 / 3), "b": 0.75, "c": None, "d": None}
    assert res["mean_class_accuracy"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert res["classes_evaluated"] == 3 and res["points"] == 10


def test_semantic_metrics_three_classes_perfect():
    conf = np.diag([5, 2, 3])
    res = M.semantic_metrics(conf, ["x", "y", "z"])
    assert res["miou"] == 1.0 and res["accuracy"] == 1.0 and res["mean_class_accuracy"] == 1.0


# ---------------------------------------------------------------- instance segmentation


def test_instance_perfect_match_is_ap_1():
    gts = [scene((200, CHAIR, 1), (100, WALL, 2))]
    res = M.instance_ap([preds(300, (range(200), CHAIR, 0.9))], gts, THINGS, THING_NAMES)
    assert chair(res) == {"ap": 1.0, "ap50": 1.0, "ap25": 1.0}
    # table: no GT, no prediction -> undefined, out of the means
    assert res["classes"]["table"] == {"ap": None, "ap50": None, "ap25": None}
    assert (res["ap"], res["ap50"], res["ap25"]) == (1.0, 1.0, 1.0)
    assert res["classes_evaluated"] == 1 and res["scenes"] == 1


def test_instance_false_positive_above_true_positive_scannet_curve():
    # chair GT on 0..199, table GT on 200..399; a chair prediction on the table (score 0.9, a false positive:
    # table points are not ignored) and an exact chair prediction (score 0.5, true positive).
    # Entries sorted by score: (0.5, TP), (0.9, FP); one point per distinct score s, counting scores >= s:
    #   s=0.5: tp 1, fp 1, fn 0 -> p 1/2, r 1;   s=0.9: tp 0, fp 1, fn 1 -> p 0, r 0;   artificial: p 1, r 0.
    # r extended with r_0 in front and 0 behind: [1, 1, 0, 0, 0]; widths (r_i-1 - r_i+1)/2 = [1/2, 1/2, 0];
    # AP = 1/2 * 1/2 + 0 * 1/2 + 1 * 0 = 1/4 (VOC's envelope would give 1/2). Same at every overlap.
    gts = [scene((200, CHAIR, 1), (200, TABLE, 2))]
    p = preds(400, (range(200, 400), CHAIR, 0.9), (range(200), CHAIR, 0.5))
    res = M.instance_ap([p], gts, THINGS, THING_NAMES)
    assert chair(res)["ap50"] == pytest.approx(0.25)
    assert chair(res)["ap"] == pytest.approx(0.25) and chair(res)["ap25"] == pytest.approx(0.25)
    # table has GT but no prediction: AP 0, and it counts in the means
    assert res["classes"]["table"]["ap50"] == 0.0
    assert res["ap50"] == pytest.approx((0.25 + 0.0) / 2)


def test_instance_missed_gt_and_partial_overlap_across_thresholds():
    # two chairs, one predicted exactly: curve p [1, 1], r [1/2, 0]; r extended [1/2, 1/2, 0, 0]; widths
    # [1/4, 1/4]; AP = 1/4 + 1/4 = 1/2
    gts = [scene((200, CHAIR, 1), (200, CHAIR, 2))]
    res = M.instance_ap([preds(400, (range(200), CHAIR, 0.7))], gts, THINGS, THING_NAMES)
    assert chair(res) == {"ap": 0.5, "ap50": 0.5, "ap25": 0.5}

    # a prediction on 40..239: 160 points of the 200-point chair and 40 wall points; IoU = 160 / 240 = 2/3:
    # a match at 0.25 and 0.50, 0.55, 0.60, 0.65; at 0.70..0.90 it is a false positive (only 40/200 of it is
    # on void points) and the chair is missed -> AP 0. AP over the nine overlaps 0.50..0.90 = 4/9.
    gts = [scene((200, CHAIR, 1), (100, WALL, 5))]
    res = M.instance_ap([preds(300, (range(40, 240), CHAIR, 0.7))], gts, THINGS, THING_NAMES)
    assert chair(res)["ap50"] == 1.0 and chair(res)["ap25"] == 1.0
    assert chair(res)["ap"] == pytest.approx(4 / 9)
    assert len(M.INSTANCE_OVERLAPS) == 10 and M.INSTANCE_OVERLAPS[-1] == 0.25
    assert M.INSTANCE_OVERLAPS[:9] == pytest.approx(np.arange(50, 95, 5) / 100)


def test_instance_ignored_predictions_and_unevaluated_gt():
    # points: 0..199 chair #1 | 200..299 wall #2 (an unevaluated class: void) | 300..359 chair #3 (60 points,
    # below the 100-point minimum) | 360..459 table #4
    gts = [scene((200, CHAIR, 1), (100, WALL, 2), (60, CHAIR, 3), (100, TABLE, 4))]
    n = 460
    exact = (range(200), CHAIR, 0.5)
    tiny_fp = (range(360, 410), CHAIR, 0.99)     # 50 points < 100: dropped before matching
    on_wall = (range(200, 300), CHAIR, 0.95)     # all on void points: ignored share 1 > overlap
    on_small = (range(240, 360), CHAIR, 0.97)    # 60 void + the 60-point chair (IoU 1/2): ignored share 1
    res = M.instance_ap([preds(n, exact, tiny_fp, on_wall, on_small)], gts, THINGS, THING_NAMES)
    # nothing but the exact match counts; the small chair is not a miss and the wall GT is not evaluated
    assert chair(res) == {"ap": 1.0, "ap50": 1.0, "ap25": 1.0}

    # control: the same false positive at 100 points is kept: (0.5, TP), (0.99, FP) -> AP 1/4 as above
    big_fp = (range(360, 460), CHAIR, 0.99)
    res = M.instance_ap([preds(n, exact, big_fp)], gts, THINGS, THING_NAMES)
    assert chair(res)["ap50"] == pytest.approx(0.25)
    # control: with the minimum at 50 points the tiny prediction counts, and so does the 60-point chair (now
    # a miss): (0.5, TP), (0.99, FP), one hard false negative:
    #   s=0.5: tp 1, fp 1, fn 1 -> p 1/2, r 1/2;  s=0.99: tp 0, fp 1, fn 2 -> p 0, r 0;  artificial p 1, r 0
    # r extended [1/2, 1/2, 0, 0, 0]: widths [1/4, 1/4, 0] -> AP = 1/2 * 1/4 = 1/8
    res = M.instance_ap([preds(n, exact, tiny_fp)], gts, THINGS, THING_NAMES, min_region_size=50)
    assert chair(res)["ap50"] == pytest.approx(1 / 8)
    # control: once wall is evaluated its GT is a miss (AP 0) and its points are no longer void, so the
    # prediction on the wall is a chair false positive above the true positive (AP 1/4)
    res = M.instance_ap([preds(n, exact, on_wall)], gts, [WALL, CHAIR, TABLE], ["wall", "chair", "table"])
    assert res["classes"]["wall"]["ap50"] == 0.0
    assert chair(res)["ap50"] == pytest.approx(0.25)


def test_instance_duplicate_keeps_the_higher_score():
    # two predictions above 0.90 IoU with one chair, the first given scoring lower: the GT keeps 0.9 and the
    # duplicate is a false positive at 0.5. Sorted: (0.5, FP), (0.9, TP):
    #   s=0.5: tp 1, fp 1 -> p 1/2, r 1;  s=0.9: tp 1, fp 0 -> p 1, r 1;  artificial p 1, r 0
    # r extended [1, 1, 1, 0, 0]: widths [0, 1/2, 1/2] -> AP = 0 + 1/2 + 1/2 = 1
    gts = [scene((200, CHAIR, 1))]
    p = preds(200, (range(200), CHAIR, 0.5), (range(190), CHAIR, 0.9))  # IoU 190/200 = 0.95
    assert chair(M.instance_ap([p], gts, THINGS, THING_NAMES))["ap"] == 1.0
    # given the other way round, the same entries: the order of predictions does not decide the GT's score
    p = preds(200, (range(190), CHAIR, 0.9), (range(200), CHAIR, 0.5))
    assert chair(M.instance_ap([p], gts, THINGS, THING_NAMES))["ap"] == 1.0
    # a duplicate scoring above a separate false positive: (0.3, FP) (0.5, FP dup) (0.9, TP)
    #   s=0.3: tp 1, fp 2 -> p 1/3, r 1;  s=0.5: tp 1, fp 1 -> p 1/2, r 1;  s=0.9: p 1, r 1;  artificial p 1, r 0
    # r extended [1, 1, 1, 1, 0, 0]: widths [0, 0, 1/2, 1/2] -> AP = 1 (all false positives score below it)
    gts = [scene((200, CHAIR, 1), (200, TABLE, 2))]
    p = preds(400, (range(200), CHAIR, 0.5), (range(190), CHAIR, 0.9), (range(200, 400), CHAIR, 0.3))
    assert chair(M.instance_ap([p], gts, THINGS, THING_NAMES))["ap"] == 1.0


def test_instance_classes_without_gt_are_left_out_and_mask_formats_agree():
    # scene 0: a chair predicted exactly; scene 1: a table prediction and no table GT anywhere -> table undefined
    gts = [scene((150, CHAIR, 7)), scene((150, WALL, 1))]
    p0 = preds(150, (range(150), CHAIR, 0.8))
    p1 = preds(150, (range(150), TABLE, 0.8))
    res = M.instance_ap([p0, p1], gts, THINGS, THING_NAMES)
    assert res["classes"]["table"]["ap"] is None and res["classes_evaluated"] == 1 and res["ap"] == 1.0

    # the same case with a (P, N) mask array and with index arrays
    gts = [scene((200, CHAIR, 1), (200, TABLE, 2))]
    as_list = preds(400, (range(200, 400), CHAIR, 0.9), (range(200), CHAIR, 0.5))
    as_matrix = dict(as_list, masks=np.stack(as_list["masks"]).astype(np.int32))
    as_index = dict(as_list, masks=[np.arange(200, 400), np.arange(200)])
    results = [M.instance_ap([p], gts, THINGS, THING_NAMES) for p in (as_list, as_matrix, as_index)]
    assert results[0] == results[1] == results[2]
    assert chair(results[0])["ap50"] == pytest.approx(0.25)

    # predictions of classes not evaluated are dropped; no prediction at all for an evaluated class -> AP 0
    res = M.instance_ap([{"masks": [np.arange(200)], "classes": [WALL], "scores": [1.0]}], gts, THINGS,
                        THING_NAMES)
    assert chair(res)["ap"] == 0.0 and res["ap"] == 0.0


# ---------------------------------------------------------------- 3D detection


def det(boxes, classes, scores=None) -> dict:
    d = {"boxes": np.asarray(boxes, float).reshape(-1, 6), "classes": list(classes)}
    if scores is not None:
        d["scores"] = list(scores)
    return d


UNIT = [0, 0, 0, 1, 1, 1]
FAR = [10, 10, 10, 1, 1, 1]


def test_box_iou_3d_known_overlaps():
    a = [[0, 0, 0, 2, 2, 2]]
    b = [[1, 1, 0, 2, 2, 2], [0, 0, 0, 2, 2, 2], [5, 0, 0, 2, 2, 2], [0, 0, 0, 1, 1, 1]]
    # overlap 1 x 1 x 2 = 2, union 8 + 8 - 2 = 14 -> 1/7; identical 1; disjoint 0; nested 1/8
    assert G.box_iou_3d(a, b) == pytest.approx(np.array([[1 / 7, 1.0, 0.0, 1 / 8]]))
    assert G.box_iou_3d(np.zeros((0, 6)), b).shape == (0, 4)
    assert G.box_iou_3d([[0, 0, 0, 0, 0, 0]], [[0, 0, 0, 0, 0, 0]])[0, 0] == 0.0  # empty boxes: 0, no NaN


def test_nms_3d_drops_the_overlapping_lower_score_box():
    boxes = [[0, 0, 0, 2, 2, 2], [0.2, 0, 0, 2, 2, 2], [5, 5, 5, 1, 1, 1]]  # IoU(0, 1) = 7.2 / 8.8 = 0.82
    scores = [0.8, 0.9, 0.7]
    assert G.nms_3d(boxes, scores, 0.5).tolist() == [1, 2]
    assert G.nms_3d(boxes, scores, 0.9).tolist() == [1, 0, 2]  # 0.82 is not above 0.9
    # per class: boxes 0 and 1 of different classes do not suppress each other
    assert G.nms_3d(boxes, scores, 0.5, class_aware=True, classes=[3, 4, 3]).tolist() == [1, 0, 2]
    assert G.nms_3d(boxes, scores, 0.5, class_aware=True, classes=[3, 3, 3]).tolist() == [1, 2]


def test_detection_perfect_box_and_iou_threshold():
    gt = [det([UNIT], [0])]
    res = M.detection_ap([det([UNIT], [0], [0.9])], gt, class_names=["chair", "table"])
    assert res["ap"]["0.25"]["chair"] == 1.0 and res["ap"]["0.5"]["chair"] == 1.0
    assert res["ap"]["0.25"]["table"] is None  # no GT: undefined, out of the mAP
    assert res["map"] == {"0.25": 1.0, "0.5": 1.0} and res["classes_evaluated"] == 1
    # a box inside the GT with 0.3 of its height: IoU 0.3 / 1 = 0.3 -> a match at 0.25, not at 0.5
    res = M.detection_ap([det([[0, 0, 0, 1, 1, 0.3]], [0], [0.9])], gt, class_names=["chair", "table"])
    assert G.box_iou_3d([[0, 0, 0, 1, 1, 0.3]], [UNIT])[0, 0] == pytest.approx(0.3)
    assert res["ap"]["0.25"]["chair"] == 1.0 and res["ap"]["0.5"]["chair"] == 0.0
    # a table box where only a chair is: a table false positive of an undefined class, a chair miss
    res = M.detection_ap([det([UNIT], [1], [0.9])], gt, class_names=["chair", "table"])
    assert res["ap"]["0.25"] == {"chair": 0.0, "table": None} and res["map"]["0.25"] == 0.0


def test_detection_duplicate_is_a_false_positive():
    # GT A and B; detections A (0.9), A again (0.8), B (0.7): TP, FP (A is taken), TP.
    # recall [1/2, 1/2, 1], precision [1, 1/2, 2/3]; envelope over recall: 1 up to 1/2, 2/3 up to 1
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    b = [3, 0, 0, 1, 1, 1]
    gt = [det([UNIT, b], [0, 0])]
    res = M.detection_ap([det([UNIT, UNIT, b], [0, 0, 0], [0.9, 0.8, 0.7])], gt, (0.25,), class_names=["c"])
    assert res["ap"]["0.25"]["c"] == pytest.approx(5 / 6)


def test_detection_voc_ap_three_detections_over_two_scenes():
    # scene 0: GT A, B; scene 1: no GT. Detections sorted: FP in scene 1 (0.9), A (0.8), B (0.7)
    # recall [0, 1/2, 1], precision [0, 1/2, 2/3]; the envelope (max precision at recall >= r) is 2/3 all along:
    # AP = (1/2 - 0) * 2/3 + (1 - 1/2) * 2/3 = 2/3 (without the envelope it would be 1/2 * 1/2 + 1/2 * 2/3)
    b = [3, 0, 0, 1, 1, 1]
    gts = [det([UNIT, b], [0, 0]), det([], [])]
    dets = [det([UNIT, b], [0, 0], [0.8, 0.7]), det([UNIT], [0], [0.9])]
    res = M.detection_ap(dets, gts, class_names=["c"])
    assert res["ap"]["0.25"]["c"] == pytest.approx(2 / 3) and res["ap"]["0.5"]["c"] == pytest.approx(2 / 3)
    # a class without any detection: AP 0
    assert M.detection_ap([det([], [], []), det([], [], [])], gts, class_names=["c"])["map"]["0.5"] == 0.0


def test_detection_best_gt_taken_is_a_false_positive_and_class_ids():
    # GT A at x=0, B at x=0.5 (IoU(A, B) = 1/3). Detection 1 = A (0.9): TP. Detection 2 at x=0.1: IoU with A
    # 0.9/1.1, with B 0.6/1.4 > 0.25 - its best GT is A, taken -> FP (VoteNet does not fall back to B).
    # recall [1/2, 1/2], precision [1, 1/2] -> AP = 1/2
    gt = [det([UNIT, [0.5, 0, 0, 1, 1, 1]], [4, 4])]
    dets = [det([UNIT, [0.1, 0, 0, 1, 1, 1], FAR], [4, 4, 9], [0.9, 0.8, 0.95])]
    # class_ids: ids are semantic ids; class 9 is not evaluated, so the far box is not a false positive
    res = M.detection_ap(dets, gt, (0.25,), class_names=["cabinet", "chair"], class_ids=[2, 4])
    assert res["ap"]["0.25"] == {"cabinet": None, "chair": pytest.approx(0.5)}


# ---------------------------------------------------------------- bad input


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("call, start", [
    (lambda: M.semantic_metrics(np.zeros((3, 3), int), ["a", "b"]), "conf: expected a 2x2 matrix"),
    (lambda: M.semantic_metrics(np.zeros((2, 2)), ["a", "b"]), "conf: expected integer counts"),
    (lambda: M.instance_ap([], [scene((10, CHAIR, 1))], THINGS, THING_NAMES),
     "preds: expected one entry per scene of gts (1), got 0"),
    (lambda: M.instance_ap([], [], [1, 2], ["chair"]), "class_ids: expected a 1-D sequence of 1 ids"),
    (lambda: M.instance_ap([preds(9, (range(3), CHAIR, 1.0))], [scene((10, CHAIR, 1))], THINGS, THING_NAMES),
     "preds[0]['masks'][0]: expected a boolean mask of length 10, got length 9"),
    (lambda: M.instance_ap([{"masks": [np.array([3, 12])], "classes": [1], "scores": [1.0]}],
                           [scene((10, CHAIR, 1))], THINGS, THING_NAMES),
     "preds[0]['masks'][0]: expected point indices in [0, 10), got 3..12"),
    (lambda: M.instance_ap([{"masks": [np.array([0, 1, 1, 0])], "classes": [1], "scores": [1.0]}],
                           [scene((4, CHAIR, 1))], THINGS, THING_NAMES),
     "preds[0]['masks'][0]: expected distinct point indices"),
    (lambda: M.instance_ap([{"masks": np.ones((1, 4), bool), "classes": [-1], "scores": [1.0]}],
                           [scene((4, CHAIR, 1))], THINGS, THING_NAMES),
     "preds[0]['classes']: expected non-negative class ids, got -1"),
    (lambda: M.instance_ap([{"masks": np.ones((1, 4), bool), "classes": [1]}], [scene((4, CHAIR, 1))], THINGS,
                           THING_NAMES), "preds[0]: expected a mapping with key 'scores'"),
    (lambda: M.detection_ap([det([UNIT], [5], [1.0])], [det([UNIT], [0])], class_names=["a", "b"]),
     "pred_boxes[0]['classes']: expected class ids in [0, 2), got 5"),
    (lambda: M.detection_ap([det([UNIT], [0], [1.0])], [{"boxes": [[0, 0, 0, 1]], "classes": [0]}],
                            class_names=["a"]),
     "gt_boxes[0]['boxes']: expected an (N, 6) array of boxes (cx, cy, cz, dx, dy, dz), got shape (1, 4)"),
    (lambda: M.detection_ap([det([UNIT], [0], [1.0, 0.5])], [det([UNIT], [0])], class_names=["a"]),
     "pred_boxes[0]['scores']: expected a 1-D array of length 1, got shape (2,)"),
    (lambda: M.detection_ap([], [], (0.5, 1.5), class_names=["a"]), "iou_thresholds: expected one or more"),
    (lambda: G.box_iou_3d([[0, 0, 0, -1, 1, 1]], [UNIT]), "a: expected finite boxes with non-negative sizes"),
    (lambda: G.nms_3d([UNIT], [1.0], 0.5, class_aware=True), "classes: expected one class id per box"),
])
def test_bad_input_raises_one_line_value_error(call, start):
    with pytest.raises(ValueError) as excinfo:
        call()
    assert _one_line(excinfo).startswith(start)
