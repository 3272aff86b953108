"""What every downstream task provides (:class:`Task`), and the input checks its heads share.

A task module (``text4point/tasks/<name>.py``) defines its head (an ``nn.Module`` with its loss and its
decoding), and a module-level ``TASK``: a :class:`Task` that builds the head from the params, runs it on the
backbone's output, computes the training loss of a batch, scores a model's predictions on whole scenes with the
task's official metric (:mod:`text4point.metrics`), names its metrics and draws a scene's predictions.

Heads take what a backbone (:mod:`text4point.models`) gives, in PyTorch Geometric's batching convention (``pos``
``N × 3`` in metres, ``batch`` ``N`` the cloud of each point, ``None`` meaning one cloud). Bad input to a head
raises ``ValueError`` with a one-line ``<argument>: expected <what>, got <what>``.
"""

from __future__ import annotations

import abc

import numpy as np
import torch
import torch.nn.functional as F
import torch_cluster
from torch import Tensor, nn

from ..labels import IGNORE_LABEL


class Scorer(abc.ABC):
    """Accumulates a model's predictions on whole evaluation scenes and scores them."""

    @abc.abstractmethod
    def add(self, cloud, view: dict, out: dict, head: nn.Module, batch) -> dict[str, np.ndarray]:
        """Score one scene: ``cloud`` (a ``finetune.data.SceneCloud``), its evaluation ``view`` and ``batch``,
        the model's output ``out``; returns the scene's predictions per original point (saved for the figures)."""

    @abc.abstractmethod
    def result(self) -> dict:
        """The task's metrics over every scene added (the primary metric among them; fractions in [0, 1])."""


class Task(abc.ABC):
    """One downstream task (see the module docstring). Subclasses set the class attributes."""

    name: str                        # the registry key (the module name)
    title: str                       # for tables and figures, e.g. "semantic segmentation"
    metrics: dict[str, str]          # metric key -> display name, in table order
    primary: str                     # the key of the metric the comparison tables rank by
    prediction_keys: tuple[str, ...]  # the per-scene arrays of ``predictions.npz``
    free_rotation: bool = True       # training views may rotate by any angle about z (False: boxes stay aligned)

    def decode_rows(self, encoded, index: Tensor | None) -> Tensor | None:
        """The input points whose ``z3D`` the head needs (None: all): by default the training batch's supervised
        subset ``index`` (``finetune.loss_points``; None at evaluation)."""
        return index

    @abc.abstractmethod
    def head(self, in_dim: int, num_classes: int, ft: dict) -> nn.Module:
        """The task head on ``z3D`` (``in_dim`` channels) for ``num_classes`` classes; ``ft``: the ``finetune``
        params section."""

    @abc.abstractmethod
    def forward(self, head: nn.Module, z: Tensor, encoded, pos: Tensor, batch: Tensor) -> dict:
        """The head's output on the decoder's ``z3D`` (and the encoder's levels ``encoded``), as entries of the
        fine-tuning model's output dictionary."""

    @abc.abstractmethod
    def loss(self, head: nn.Module, out: dict, batch) -> dict[str, Tensor]:
        """The training losses of a ``finetune.data.SceneBatch``: ``loss`` (the total) and its terms."""

    @abc.abstractmethod
    def scorer(self, label_set, ft: dict) -> Scorer:
        """A fresh :class:`Scorer` for the label set's classes."""

    @abc.abstractmethod
    def draw(self, ax, pts: dict, pred: dict | None, scene, label_set, class_colours: np.ndarray) -> None:
        """Draw a top view of one scene on ``ax``: the ground truth (``pred`` None: ``pts`` of ``points.ply``,
        ``scene`` its :class:`~text4point.scene.Scene`) or a job's ``predictions.npz`` arrays of the scene."""


def none_to_zero(metrics: dict, keys) -> dict:
    """A metric with no evaluable class is ``None``; the tables report 0 for it, as ScanNet's scripts do."""
    for key in keys:
        if metrics.get(key) is None:
            metrics[key] = 0.0
    return metrics


def top_view(ax, xyz: np.ndarray, colours: np.ndarray) -> None:
    """Points seen from above, drawn bottom to top so that upper surfaces stay visible."""
    order = np.argsort(xyz[:, 2])
    ax.scatter(xyz[order, 0], xyz[order, 1], c=colours[order], s=0.6, linewidths=0)


def check_features(t: Tensor, name: str, dim: int | None, n: int | None = None) -> None:
    """``t`` must be a floating ``[n, dim]`` tensor (``None`` = any size)."""
    shape = f"[{'N' if n is None else n}, {'C' if dim is None else dim}]"
    if not isinstance(t, Tensor):
        raise ValueError(f"{name}: expected a tensor of shape {shape}, got {type(t).__name__}")
    if t.dim() != 2 or (dim is not None and t.size(1) != dim) or (n is not None and t.size(0) != n):
        raise ValueError(f"{name}: expected a tensor of shape {shape}, got {list(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")


def check_ids(t: Tensor, name: str, n: int) -> None:
    """``t`` must be an integer vector of length ``n``."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name}: expected an integer tensor of shape [{n}], got {type(t).__name__}")
    if t.shape != (n,):
        raise ValueError(f"{name}: expected an integer tensor of shape [{n}], got {list(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name}: expected an integer tensor, got dtype {t.dtype}")


def check_labels(labels: Tensor, name: str, n: int, num_classes: int) -> Tensor:
    """Semantic labels: integer ids in ``[0, num_classes)`` or ``IGNORE_LABEL``; returned as int64."""
    check_ids(labels, name, n)
    labels = labels.long()
    bad = (labels != IGNORE_LABEL) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        raise ValueError(f"{name}: expected class ids in [0, {num_classes}) or {IGNORE_LABEL} (ignored), got "
                         f"{int(labels[bad][0])}")
    return labels


def check_batch(batch: Tensor | None, name: str, n: int, device: torch.device,
                 sorted_: bool = False) -> Tensor:
    """A batch vector (``None`` → one cloud) of non-negative ids, optionally sorted as PyG packs it."""
    if batch is None:
        return torch.zeros(n, dtype=torch.long, device=device)
    check_ids(batch, name, n)
    batch = batch.long()
    if n and int(batch.min()) < 0:
        raise ValueError(f"{name}: expected non-negative cloud indices, got {int(batch.min())}")
    if sorted_ and n > 1 and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError(f"{name}: expected a sorted batch vector (clouds packed one after another, as PyG "
                         f"does), got an unsorted one")
    return batch


def num_clouds_of(batch: Tensor, num_clouds: int | None, name: str) -> int:
    found = int(batch.max()) + 1 if batch.numel() else 0
    if num_clouds is None:
        return found
    if num_clouds < found:
        raise ValueError(f"num_clouds: expected at least {found} (the largest index in {name} + 1), got "
                         f"{num_clouds}")
    return int(num_clouds)


def semantic_loss(logits: Tensor, labels: Tensor, num_classes: int, name: str = "logits",
                  weight: Tensor | None = None) -> Tensor:
    """Mean cross-entropy over the points not labelled ``IGNORE_LABEL`` (0 when there is none), optionally with
    per-class ``weight`` (``K``; the mean is then weighted, as ``F.cross_entropy`` does)."""
    check_features(logits, name, num_classes)
    labels = check_labels(labels, "labels", logits.size(0), num_classes)
    if not bool((labels != IGNORE_LABEL).any()):
        return zero_loss(logits)
    return F.cross_entropy(logits, labels, weight=None if weight is None else weight.to(logits.device),
                           ignore_index=IGNORE_LABEL)


def class_balance_weights(labels, num_classes: int, power: float = 0.5) -> Tensor:
    """Per-class loss weights ``w_c ∝ f_c^-power`` from label frequencies ``f_c`` (``IGNORE_LABEL`` skipped),
    scaled so that ``Σ f_c w_c = 1`` (the loss keeps its scale); classes that never occur get weight 0."""
    lab = torch.as_tensor(labels).reshape(-1).long()
    lab = lab[lab != IGNORE_LABEL]
    if lab.numel() == 0:
        raise ValueError("labels: expected at least one labelled point, got none")
    f = torch.bincount(lab, minlength=num_classes).double() / lab.numel()
    w = torch.where(f > 0, f.clamp(min=1e-12) ** -float(power), torch.zeros_like(f))
    return (w / (f * w).sum()).float()


def rows_of(out: dict) -> Tensor | slice:
    """The rows of the batch the head's outputs are for (``out["rows"]``; all when None)."""
    rows = out.get("rows")
    return slice(None) if rows is None else rows


def zero_loss(t: Tensor) -> Tensor:
    """A zero loss that stays in ``t``'s graph (so ``backward`` works when nothing is supervised)."""
    return t.sum() * 0.0


def local_index(batch: Tensor, num_clouds: int) -> Tensor:
    """Index of each point within its own cloud (its rank among the points of its cloud)."""
    counts = torch.bincount(batch, minlength=num_clouds)
    starts = torch.cumsum(counts, 0) - counts
    order = torch.argsort(batch, stable=True)
    local = torch.empty_like(batch)
    local[order] = torch.arange(batch.numel(), device=batch.device) - starts[batch[order]]
    return local


def seed_values(values: Tensor, pos: Tensor, batch: Tensor | None, seed_pos: Tensor,
                seed_batch: Tensor | None) -> Tensor:
    """Per-point ``values`` (e.g. instance ids) carried to seeds: each seed takes its nearest input point's.

    Seeds of a PointNet++ level are input points (farthest-point samples of samples), so the nearest
    point is the seed itself; this is how the engine gets ``seed_instances`` for
    :meth:`DetectionHead.loss` from the per-point instance ids.
    """
    check_features(pos, "pos", 3)
    n = pos.size(0)
    if not isinstance(values, Tensor) or values.dim() == 0 or values.size(0) != n:
        got = list(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"values: expected a tensor with one row per point ({n}), got {got}")
    check_features(seed_pos, "seed_pos", 3)
    batch = check_batch(batch, "batch", n, pos.device)
    seed_batch = check_batch(seed_batch, "seed_batch", seed_pos.size(0), pos.device)
    if seed_pos.size(0) == 0:
        return values[:0]
    assign = torch_cluster.knn(pos, seed_pos, 1, batch, seed_batch)  # (seed, point)
    if assign.size(1) != seed_pos.size(0):
        raise ValueError("seed_batch: expected every seed's cloud to hold input points, got a seed in a cloud "
                         "without any")
    index = torch.empty(seed_pos.size(0), dtype=torch.long, device=pos.device)
    index[assign[0]] = assign[1]
    return values[index]
