"""Semantic segmentation: a per-point classifier on ``z3D``, cross-entropy ignoring the ignore label, scored by
ScanNet's mIoU (with overall and mean class accuracy) on every point of every evaluation scene."""

from __future__ import annotations

import numpy as np
from torch import Tensor, nn
from torch_geometric.nn import MLP

from ..labels import IGNORE_LABEL
from ..metrics import confusion_matrix, semantic_metrics
from ._base import Scorer, Task, check_features, none_to_zero, rows_of, semantic_loss, top_view


class SemanticHead(nn.Module):
    """Per-point classifier on ``z3D``: a linear layer, or a two-layer MLP when ``hidden_dim > 0``.

    Args:
        in_dim: channels of ``z3D`` (the backbone's ``out_dim``).
        num_classes: classes of the label set (K); labels are ids in ``[0, K)`` or ``IGNORE_LABEL``.
        hidden_dim: hidden width of an MLP classifier (Linear-BN-ReLU-Linear); 0 for a linear one.
        dropout: dropout before the last layer of the MLP classifier.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden_dim: int = 0, dropout: float = 0.0):
        super().__init__()
        self.in_dim, self.num_classes = int(in_dim), int(num_classes)
        if self.num_classes < 1 or self.in_dim < 1:
            raise ValueError(f"in_dim, num_classes: expected positive integers, got {in_dim}, {num_classes}")
        if hidden_dim:
            self.classifier = MLP([self.in_dim, int(hidden_dim), self.num_classes], dropout=dropout)
        else:
            self.classifier = nn.Linear(self.in_dim, self.num_classes)
        self.class_weights: Tensor | None = None  # optional per-class loss weights (_base.class_balance_weights)

    def forward(self, z: Tensor) -> Tensor:
        """Class logits (``N × K``) of the per-point features ``z`` (``N × in_dim``)."""
        check_features(z, "z", self.in_dim)
        return self.classifier(z)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy over the points whose label is not ``IGNORE_LABEL`` (0 if there is none)."""
        return semantic_loss(logits, labels, self.num_classes, weight=self.class_weights)

    @staticmethod
    def predict(logits: Tensor) -> Tensor:
        """Predicted class of each point (``N``, int64)."""
        return logits.argmax(1)


class _SemanticScorer(Scorer):
    def __init__(self, label_set):
        self.names = list(label_set.classes)
        k = len(self.names)
        self.conf = np.zeros((k, k), np.int64)

    def add(self, cloud, view, out, head, batch) -> dict:
        pred = out["head"].argmax(1).cpu().numpy()[cloud.point_voxel]
        self.conf += confusion_matrix(pred, cloud.point_semantic, len(self.names))
        return {"semantic": pred.astype(np.uint8)}

    def result(self) -> dict:
        m = semantic_metrics(self.conf, self.names)
        return none_to_zero({"miou": m["miou"], "accuracy": m["accuracy"],
                             "mean_class_accuracy": m["mean_class_accuracy"], "per_class": m["iou"],
                             "confusion": self.conf.tolist()}, ("miou",))


class SemSeg(Task):
    name = "semseg"
    title = "semantic segmentation"
    metrics = {"miou": "mIoU", "accuracy": "OA", "mean_class_accuracy": "mAcc"}
    primary = "miou"
    prediction_keys = ("semantic",)

    def head(self, in_dim: int, num_classes: int, ft: dict) -> nn.Module:
        return SemanticHead(in_dim, num_classes)

    def forward(self, head, z, encoded, pos, batch) -> dict:
        return {"head": head(z)}

    def loss(self, head, out, batch) -> dict:
        return {"loss": head.loss(out["head"], batch.semantic[rows_of(out)])}

    def scorer(self, label_set, ft: dict) -> Scorer:
        return _SemanticScorer(label_set)

    def draw(self, ax, pts, pred, scene, label_set, class_colours) -> None:
        lab = pts["semantic"].astype(np.int64) if pred is None else pred["semantic"].astype(np.int64)
        k = len(label_set.classes)
        top_view(ax, pts["xyz"], np.where((lab == IGNORE_LABEL)[:, None], 0.85, class_colours[np.minimum(lab, k - 1)]))


TASK = SemSeg()

__all__ = ["SemanticHead", "TASK"]
