"""Official evaluation metrics of the three downstream 3D tasks, written from the benchmarks' definitions.

- Semantic segmentation, as ScanNet's ``BenchmarkScripts/3d_evaluation/evaluate_semantic_label.py``:
  ``confusion_matrix`` / ``iou_from_confusion`` (shared with the zero-shot evaluation) and
  ``semantic_metrics`` (mIoU, overall accuracy, mean class accuracy).
- Instance segmentation, as ScanNet's ``evaluate_semantic_instance.py``: ``instance_ap`` (AP over the
  overlaps 0.50..0.90, AP50, AP25).
- 3D object detection, as VoteNet's ``utils/eval_det.py``: ``detection_ap`` (VOC AP of axis-aligned boxes at
  IoU 0.25 and 0.5), (the box IoU and NMS are in :mod:`text4point.geometry`).

Every function takes numpy arrays (or anything ``np.asarray`` accepts) and raises ``ValueError`` with a
one-line message (``<argument>: expected <what>, got <what>``) on malformed input.
"""

from .detection import detection_ap
from .instance import INSTANCE_OVERLAPS, MIN_REGION_SIZE, instance_ap
from .semantic import confusion_matrix, iou_from_confusion, semantic_metrics

__all__ = ["INSTANCE_OVERLAPS", "MIN_REGION_SIZE", "confusion_matrix", "detection_ap", "instance_ap",
           "iou_from_confusion", "semantic_metrics"]
