"""Fine-tuning heads of the three downstream tasks, each with its loss and its inference.

Every head takes what a backbone (:mod:`text4point.models`, PointNet++ or Point Transformer) gives,
in PyTorch Geometric's batching convention (``pos`` ``N × 3`` in metres, ``batch`` ``N`` the cloud of
each point, ``None`` meaning one cloud):

- :class:`SemanticHead` (semantic segmentation): a per-point classifier on ``z3D``; cross-entropy
  ignoring :data:`~text4point.labels.IGNORE_LABEL`.
- :class:`InstanceHead` (instance segmentation, PointGroup, Jiang et al. 2020): per-point semantic
  logits and a per-point offset to the centre of the point's instance, trained with PointGroup's
  offset L1 and direction (negative cosine) losses; inference groups the shifted points
  ``pos + offset`` of each predicted thing class by a radius graph and its connected components.
- :class:`DetectionHead` (3D detection of axis-aligned boxes, VoteNet, Qi et al. 2019): seeds of an
  intermediate encoder level vote for their object's centre; votes are sampled by farthest-point
  sampling and grouped by a ball query into proposals that predict objectness, centre, size and
  class; inference scores boxes by ``P(object) × P(class)`` and suppresses duplicates by 3D NMS.

Inference returns, per cloud, exactly the prediction dictionaries that
:func:`text4point.metrics.instance_ap` and :func:`text4point.metrics.detection_ap` take.
Bad input raises ``ValueError`` with a one-line ``<argument>: expected <what>, got <what>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F
import torch_cluster
from scipy.sparse.csgraph import connected_components
from torch import Tensor, nn
from torch_geometric.nn import MLP
from torch_geometric.utils import scatter

from text4point.labels import IGNORE_LABEL
from text4point.metrics import nms_3d
from text4point.models.sampling import fps

# ---------------------------------------------------------------- input checks


def _check_features(t: Tensor, name: str, dim: int | None, n: int | None = None) -> None:
    """``t`` must be a floating ``[n, dim]`` tensor (``None`` = any size)."""
    shape = f"[{'N' if n is None else n}, {'C' if dim is None else dim}]"
    if not isinstance(t, Tensor):
        raise ValueError(f"{name}: expected a tensor of shape {shape}, got {type(t).__name__}")
    if t.dim() != 2 or (dim is not None and t.size(1) != dim) or (n is not None and t.size(0) != n):
        raise ValueError(f"{name}: expected a tensor of shape {shape}, got {list(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")


def _check_ids(t: Tensor, name: str, n: int) -> None:
    """``t`` must be an integer vector of length ``n``."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name}: expected an integer tensor of shape [{n}], got {type(t).__name__}")
    if t.shape != (n,):
        raise ValueError(f"{name}: expected an integer tensor of shape [{n}], got {list(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name}: expected an integer tensor, got dtype {t.dtype}")


def _check_labels(labels: Tensor, name: str, n: int, num_classes: int) -> Tensor:
    """Semantic labels: integer ids in ``[0, num_classes)`` or ``IGNORE_LABEL``; returned as int64."""
    _check_ids(labels, name, n)
    labels = labels.long()
    bad = (labels != IGNORE_LABEL) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        raise ValueError(f"{name}: expected class ids in [0, {num_classes}) or {IGNORE_LABEL} (ignored), got "
                         f"{int(labels[bad][0])}")
    return labels


def _check_batch(batch: Tensor | None, name: str, n: int, device: torch.device,
                 sorted_: bool = False) -> Tensor:
    """A batch vector (``None`` → one cloud) of non-negative ids, optionally sorted as PyG packs it."""
    if batch is None:
        return torch.zeros(n, dtype=torch.long, device=device)
    _check_ids(batch, name, n)
    batch = batch.long()
    if n and int(batch.min()) < 0:
        raise ValueError(f"{name}: expected non-negative cloud indices, got {int(batch.min())}")
    if sorted_ and n > 1 and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError(f"{name}: expected a sorted batch vector (clouds packed one after another, as PyG "
                         f"does), got an unsorted one")
    return batch


def _num_clouds(batch: Tensor, num_clouds: int | None, name: str) -> int:
    found = int(batch.max()) + 1 if batch.numel() else 0
    if num_clouds is None:
        return found
    if num_clouds < found:
        raise ValueError(f"num_clouds: expected at least {found} (the largest index in {name} + 1), got "
                         f"{num_clouds}")
    return int(num_clouds)


def _semantic_loss(logits: Tensor, labels: Tensor, num_classes: int, name: str = "logits") -> Tensor:
    """Mean cross-entropy over the points not labelled ``IGNORE_LABEL`` (0 when there is none)."""
    _check_features(logits, name, num_classes)
    labels = _check_labels(labels, "labels", logits.size(0), num_classes)
    if not bool((labels != IGNORE_LABEL).any()):
        return _zero(logits)
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_LABEL)


def _zero(t: Tensor) -> Tensor:
    """A zero loss that stays in ``t``'s graph (so ``backward`` works when nothing is supervised)."""
    return t.sum() * 0.0


def _local_index(batch: Tensor, num_clouds: int) -> Tensor:
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
    _check_features(pos, "pos", 3)
    n = pos.size(0)
    if not isinstance(values, Tensor) or values.dim() == 0 or values.size(0) != n:
        got = list(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"values: expected a tensor with one row per point ({n}), got {got}")
    _check_features(seed_pos, "seed_pos", 3)
    batch = _check_batch(batch, "batch", n, pos.device)
    seed_batch = _check_batch(seed_batch, "seed_batch", seed_pos.size(0), pos.device)
    if seed_pos.size(0) == 0:
        return values[:0]
    assign = torch_cluster.knn(pos, seed_pos, 1, batch, seed_batch)  # (seed, point)
    if assign.size(1) != seed_pos.size(0):
        raise ValueError("seed_batch: expected every seed's cloud to hold input points, got a seed in a cloud "
                         "without any")
    index = torch.empty(seed_pos.size(0), dtype=torch.long, device=pos.device)
    index[assign[0]] = assign[1]
    return values[index]


# ---------------------------------------------------------------- semantic segmentation


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

    def forward(self, z: Tensor) -> Tensor:
        """Class logits (``N × K``) of the per-point features ``z`` (``N × in_dim``)."""
        _check_features(z, "z", self.in_dim)
        return self.classifier(z)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy over the points whose label is not ``IGNORE_LABEL`` (0 if there is none)."""
        return _semantic_loss(logits, labels, self.num_classes)

    @staticmethod
    def predict(logits: Tensor) -> Tensor:
        """Predicted class of each point (``N``, int64)."""
        return logits.argmax(1)


# ---------------------------------------------------------------- instance segmentation


class InstanceOutput(NamedTuple):
    """What :class:`InstanceHead` predicts per point: ``sem_logits`` (``N × K``), ``offsets`` (``N × 3``)."""

    sem_logits: Tensor
    offsets: Tensor


class InstanceHead(nn.Module):
    """PointGroup's semantic and offset branches on ``z3D``, its offset losses and its clustering.

    - Semantic branch: a linear classifier (``N × K`` logits).
    - Offset branch: Linear-BN-ReLU-Linear to a 3D vector per point, the shift from the point to the
      centre of its instance, the centre being the mean of the instance's points (as PointGroup).

    Args:
        in_dim: channels of ``z3D``.
        num_classes: classes of the label set (K).
        hidden_dim: hidden width of the offset branch (default ``in_dim``).
        semantic_weight, offset_weight, direction_weight: weights of the three terms of the total loss
            (PointGroup sums them with weight 1).
    """

    def __init__(self, in_dim: int, num_classes: int, hidden_dim: int | None = None,
                 semantic_weight: float = 1.0, offset_weight: float = 1.0, direction_weight: float = 1.0):
        super().__init__()
        self.in_dim, self.num_classes = int(in_dim), int(num_classes)
        if self.num_classes < 1 or self.in_dim < 1:
            raise ValueError(f"in_dim, num_classes: expected positive integers, got {in_dim}, {num_classes}")
        hidden = self.in_dim if hidden_dim is None else int(hidden_dim)
        self.semantic = nn.Linear(self.in_dim, self.num_classes)
        self.offset = MLP([self.in_dim, hidden, 3])
        self.weights = {"semantic": float(semantic_weight), "offset_l1": float(offset_weight),
                        "offset_dir": float(direction_weight)}

    def forward(self, z: Tensor) -> InstanceOutput:
        """Semantic logits (``N × K``) and offsets to the instance centre (``N × 3``, metres) of ``z``."""
        _check_features(z, "z", self.in_dim)
        return InstanceOutput(self.semantic(z), self.offset(z))

    def loss(self, pos: Tensor, batch: Tensor | None, sem_logits: Tensor, offsets: Tensor, labels: Tensor,
             instances: Tensor) -> dict[str, Tensor]:
        """PointGroup's losses; returns ``{"loss", "semantic", "offset_l1", "offset_dir"}``.

        - ``semantic``: cross-entropy over the points not labelled ``IGNORE_LABEL``;
        - ``offset_l1``: ``Σ_i ‖o_i − (c_i − p_i)‖₁ / n``, over the ``n`` points with an instance
          (``instances > 0``; ids are per cloud, 0 or negative = none), ``c_i`` the mean position of
          the points of ``i``'s instance in ``i``'s cloud;
        - ``offset_dir``: ``−Σ_i cos(o_i, c_i − p_i) / n`` over the same points (in ``[−1, 1]``).

        Terms without a supervised point are 0; ``loss`` is their weighted sum.
        """
        _check_features(pos, "pos", 3)
        n = pos.size(0)
        batch = _check_batch(batch, "batch", n, pos.device)
        _check_features(sem_logits, "sem_logits", self.num_classes, n)
        _check_features(offsets, "offsets", 3, n)
        _check_ids(instances, "instances", n)
        semantic = _semantic_loss(sem_logits, labels, self.num_classes, "sem_logits")

        valid = instances > 0
        if bool(valid.any()):
            inst = instances[valid].long()
            key = batch[valid] * (int(inst.max()) + 1) + inst
            _, group = torch.unique(key, return_inverse=True)
            p = pos[valid].detach()
            centre = scatter(p, group, 0, reduce="mean")
            target = centre[group] - p
            pred = offsets[valid]
            offset_l1 = (pred - target).abs().sum(1).mean()
            cos = (F.normalize(pred, dim=1, eps=1e-8) * F.normalize(target, dim=1, eps=1e-8)).sum(1)
            offset_dir = -cos.mean()
        else:
            offset_l1 = offset_dir = _zero(offsets)
        terms = {"semantic": semantic, "offset_l1": offset_l1, "offset_dir": offset_dir}
        total = sum(self.weights[k] * v for k, v in terms.items())
        return {"loss": total, **terms}

    @torch.no_grad()
    def predict(self, pos: Tensor, batch: Tensor | None, sem_logits: Tensor, offsets: Tensor,
                thing_ids: Sequence[int], radius: float = 0.05, min_points: int = 20,
                max_neighbors: int | None = None, num_clouds: int | None = None) -> list[dict]:
        """Instance proposals of each cloud by PointGroup's clustering of the shifted points.

        Each point takes its arg-max class; for each cloud and each class of ``thing_ids``, the shifted
        points ``pos + offsets`` of that class are linked when closer than ``radius`` (a
        :func:`torch_cluster.radius_graph`), and each connected component of at least ``min_points``
        points is a proposal, scored by the mean probability of its class over its points (PointGroup's
        clustering on the shifted set, without its second clustering on the original coordinates and
        without ScoreNet). Points of other classes form no proposal.

        ``max_neighbors`` caps the neighbours found per point (``None``: no cap, so the components are
        exact; a cap bounds memory on dense clusters but may split them). The clustering runs on the CPU.

        Returns one dictionary per cloud (``num_clouds``, default the largest batch index + 1):
        ``{"masks": [int64 arrays of point indices *within the cloud*], "classes": (P,) int64,
        "scores": (P,) float64}``, proposals in decreasing score: the ``preds[s]`` of
        :func:`text4point.metrics.instance_ap`.
        """
        _check_features(pos, "pos", 3)
        n = pos.size(0)
        batch = _check_batch(batch, "batch", n, pos.device)
        _check_features(sem_logits, "sem_logits", self.num_classes, n)
        _check_features(offsets, "offsets", 3, n)
        things = np.asarray(thing_ids, dtype=np.int64).reshape(-1) if len(thing_ids) else np.zeros(0, np.int64)
        if len(things) and (things.min() < 0 or things.max() >= self.num_classes):
            raise ValueError(f"thing_ids: expected class ids in [0, {self.num_classes}), got {things.tolist()}")
        if not radius > 0:
            raise ValueError(f"radius: expected a positive distance in metres, got {radius!r}")
        if int(min_points) < 1:
            raise ValueError(f"min_points: expected a positive integer, got {min_points!r}")
        if max_neighbors is not None and int(max_neighbors) < 1:
            raise ValueError(f"max_neighbors: expected a positive integer or None, got {max_neighbors!r}")
        b = _num_clouds(batch, num_clouds, "batch")
        out = [{"masks": [], "classes": np.zeros(0, np.int64), "scores": np.zeros(0, np.float64)}
               for _ in range(b)]

        k = self.num_classes
        probs = torch.softmax(sem_logits.detach().float(), 1).cpu()
        conf, cls = probs.max(1)
        batch_c = batch.cpu()
        local = _local_index(batch_c, b)
        is_thing = torch.zeros(k, dtype=torch.bool)
        is_thing[torch.from_numpy(things)] = True
        sel = torch.nonzero(is_thing[cls]).view(-1)
        if not sel.numel():
            return out
        group = batch_c[sel] * k + cls[sel]  # one clustering per (cloud, class)
        order = torch.argsort(group, stable=True)
        sel, group = sel[order], group[order]
        _, group, sizes = torch.unique_consecutive(group, return_inverse=True, return_counts=True)
        shifted = (pos.detach().float() + offsets.detach().float()).cpu()[sel]
        cap = int(sizes.max()) if max_neighbors is None else int(max_neighbors)
        edges = torch_cluster.radius_graph(shifted, float(radius), group, loop=False, max_num_neighbors=cap)
        m = sel.numel()
        graph = scipy.sparse.coo_matrix((np.ones(edges.size(1), np.int8), (edges[0].numpy(), edges[1].numpy())),
                                        shape=(m, m))
        _, comp = connected_components(graph, directed=False)  # components never cross (cloud, class) groups
        comp = torch.from_numpy(comp).long()
        count = torch.bincount(comp)
        score = torch.bincount(comp, weights=conf[sel].double()) / count
        keep = torch.nonzero(count >= int(min_points)).view(-1)
        if not keep.numel():
            return out
        first = torch.full((count.numel(),), m, dtype=torch.long).scatter_reduce(
            0, comp, torch.arange(m), reduce="amin")
        comp_cls, comp_cloud = cls[sel][first], batch_c[sel][first]
        members = torch.argsort(comp, stable=True)
        starts = (torch.cumsum(count, 0) - count).tolist()
        point_local = local[sel][members].numpy()
        # proposals by cloud, then decreasing score (stable: component order on ties)
        keep = keep.numpy()[np.lexsort((-score[keep].numpy(), comp_cloud[keep].numpy()))]
        classes, scores = [[] for _ in range(b)], [[] for _ in range(b)]
        for c in keep.tolist():
            cloud = int(comp_cloud[c])
            out[cloud]["masks"].append(np.sort(point_local[starts[c]:starts[c] + int(count[c])]).astype(np.int64))
            classes[cloud].append(int(comp_cls[c]))
            scores[cloud].append(float(score[c]))
        for cloud, o in enumerate(out):
            o["classes"] = np.asarray(classes[cloud], dtype=np.int64)
            o["scores"] = np.asarray(scores[cloud], dtype=np.float64)
        return out


# ---------------------------------------------------------------- 3D object detection


@dataclass
class DetectionOutput:
    """What :class:`DetectionHead` predicts.

    Proposals (``P`` over the batch, at most ``num_proposals`` per cloud):

    Attributes:
        proposal_pos: ``P × 3``, the sampled vote each proposal is centred on (VoteNet's
            aggregated vote position; objectness targets are measured from it).
        proposal_batch: ``P``, cloud of each proposal.
        objectness_logits: ``P × 2`` (not an object, object).
        center: ``P × 3``, predicted box centre (``proposal_pos`` + predicted residual).
        log_size: ``P × 3``, natural log of the predicted box size ``(dx, dy, dz)`` in metres.
        class_logits: ``P × K``.
        seed_pos, seed_batch: the seeds (``S × 3``, ``S``).
        vote_pos: ``S × 3``, each seed's vote for its object's centre.
        vote_feat: ``S × seed_dim``, the votes' (L2-normalised) features.
    """

    proposal_pos: Tensor
    proposal_batch: Tensor
    objectness_logits: Tensor
    center: Tensor
    log_size: Tensor
    class_logits: Tensor
    seed_pos: Tensor | None = None
    seed_batch: Tensor | None = None
    vote_pos: Tensor | None = None
    vote_feat: Tensor | None = None

    @property
    def size(self) -> Tensor:
        """Predicted box size ``(dx, dy, dz)`` in metres (``P × 3``)."""
        return self.log_size.exp()

    @property
    def boxes(self) -> Tensor:
        """Predicted boxes ``(cx, cy, cz, dx, dy, dz)`` (``P × 6``)."""
        return torch.cat([self.center, self.size], 1)


class DetectionHead(nn.Module):
    """VoteNet's voting, proposal and loss modules for axis-aligned boxes, on seeds of any backbone level.

    - Voting: a shared MLP (seed_dim → seed_dim → seed_dim → 3 + seed_dim) gives each seed an offset
      to its object's centre and a feature residual; ``vote = seed + offset``, vote features
      ``normalize(seed_feat + residual)`` (as VoteNet).
    - Proposals: ``num_proposals`` votes per cloud by farthest-point sampling on the vote positions
      (VoteNet's ``vote_fps``; the first vote of each cloud starts, for reproducibility), each
      grouping at most ``max_neighbors`` votes within ``radius`` (a ball query); a PointNet on
      ``[(vote − centre)/radius, vote_feat]`` (three layers of ``hidden_dim``, BN, ReLU) max-pooled
      per proposal, then an MLP (hidden_dim → hidden_dim → 2 + 3 + 3 + K) predicts objectness, a
      centre residual, the log size and the class logits.
    - Size: predicted as the *log of the box size* in metres, class-agnostic (an initial output near
      0 is a 1 m box; sizes are always positive; the regression is scale-relative). VoteNet's size
      clusters and heading bins are not used: boxes are axis-aligned.

    Args:
        seed_dim: channels of the seed features (e.g. ``Encoded.xs[k].size(1)``).
        num_classes: K; GT classes are ids in ``[0, K)`` (e.g. the label set's ids, of which only the
            thing classes occur).
        num_proposals: proposals per cloud (fewer if a cloud has fewer seeds).
        radius: ball-query radius (metres) of the vote grouping (VoteNet: 0.3).
        max_neighbors: votes per proposal group (VoteNet: 16).
        hidden_dim: width of the proposal PointNet and MLP (VoteNet: 128).
        near_threshold, far_threshold: a proposal closer than ``near`` to a GT centre is positive,
            farther than ``far`` from all negative, in between ignored (VoteNet: 0.3, 0.6).
        objectness_weights: class weights of the objectness cross-entropy (VoteNet: 0.2, 0.8).
        huber_delta: transition of the Huber (smooth L1) losses of centre and log size (VoteNet's
            ``huber_loss`` delta, 1.0).
        min_size: GT sizes are clamped to at least this (metres) before the log (flat objects).
        vote_weight, objectness_weight, center_weight, size_weight, class_weight: weights of the
            total loss (VoteNet: 1, 0.5, 1, 1, 0.1).
    """

    def __init__(self, seed_dim: int, num_classes: int, num_proposals: int = 256, radius: float = 0.3,
                 max_neighbors: int = 16, hidden_dim: int = 128, near_threshold: float = 0.3,
                 far_threshold: float = 0.6, objectness_weights: tuple[float, float] = (0.2, 0.8),
                 huber_delta: float = 1.0, min_size: float = 0.01, vote_weight: float = 1.0,
                 objectness_weight: float = 0.5, center_weight: float = 1.0, size_weight: float = 1.0,
                 class_weight: float = 0.1):
        super().__init__()
        self.seed_dim, self.num_classes = int(seed_dim), int(num_classes)
        self.num_proposals, self.max_neighbors = int(num_proposals), int(max_neighbors)
        if min(self.seed_dim, self.num_classes, self.num_proposals, self.max_neighbors) < 1:
            raise ValueError(f"seed_dim, num_classes, num_proposals, max_neighbors: expected positive integers, "
                             f"got {seed_dim}, {num_classes}, {num_proposals}, {max_neighbors}")
        if not 0 < near_threshold <= far_threshold:
            raise ValueError(f"near_threshold, far_threshold: expected 0 < near <= far, got {near_threshold}, "
                             f"{far_threshold}")
        if not radius > 0:
            raise ValueError(f"radius: expected a positive distance in metres, got {radius!r}")
        self.radius = float(radius)
        self.near, self.far = float(near_threshold), float(far_threshold)
        self.huber_delta, self.min_size = float(huber_delta), float(min_size)
        self.register_buffer("objectness_weights", torch.tensor([float(w) for w in objectness_weights]),
                             persistent=False)
        self.weights = {"vote": float(vote_weight), "objectness": float(objectness_weight),
                        "center": float(center_weight), "size": float(size_weight), "class": float(class_weight)}
        d, h = self.seed_dim, int(hidden_dim)
        self.vote_mlp = MLP([d, d, d, 3 + d])
        self.group_mlp = MLP([d + 3, h, h, h], plain_last=False)
        self.proposal_mlp = MLP([h, h, h, 2 + 3 + 3 + self.num_classes])

    # ------------------------------------------------------------ forward

    def vote(self, seed_feat: Tensor, seed_pos: Tensor) -> tuple[Tensor, Tensor]:
        """Each seed's vote: its position (``S × 3``) and its normalised feature (``S × seed_dim``)."""
        _check_features(seed_feat, "seed_feat", self.seed_dim)
        _check_features(seed_pos, "seed_pos", 3, seed_feat.size(0))
        out = self.vote_mlp(seed_feat)
        return seed_pos + out[:, :3], F.normalize(seed_feat + out[:, 3:], dim=1)

    def propose(self, vote_pos: Tensor, vote_feat: Tensor, batch: Tensor | None = None) -> DetectionOutput:
        """Proposals from votes: FPS (``num_proposals`` per cloud), ball query, PointNet, box MLP.

        ``batch`` (the votes' clouds, i.e. the seeds') must be sorted, as PyG packs clouds.
        """
        _check_features(vote_feat, "vote_feat", self.seed_dim)
        s = vote_feat.size(0)
        _check_features(vote_pos, "vote_pos", 3, s)
        batch = _check_batch(batch, "seed_batch", s, vote_pos.device, sorted_=True)
        if s == 0:
            raise ValueError("seed_feat: expected at least one seed, got 0")
        deg = torch.bincount(batch)
        # ceil(ratio · deg) = min(deg, num_proposals) per cloud (the -0.5 keeps float error below the ceil)
        ratio = (deg.clamp(max=self.num_proposals).to(vote_pos.dtype) - 0.5) / deg.clamp(min=1).to(vote_pos.dtype)
        ratio = ratio.clamp(0.0, 1.0)
        idx = fps(vote_pos.detach(), batch, ratio)
        centre, centre_batch = vote_pos[idx], batch[idx]
        row, col = torch_cluster.radius(vote_pos.detach(), centre.detach(), self.radius, batch, centre_batch,
                                        max_num_neighbors=self.max_neighbors)  # row: proposal, col: vote
        rel = (vote_pos[col] - centre[row]) / self.radius
        grouped = self.group_mlp(torch.cat([rel, vote_feat[col]], 1))
        pooled = scatter(grouped, row, 0, dim_size=idx.numel(), reduce="max")  # each group holds its centre
        out = self.proposal_mlp(pooled)
        k = self.num_classes
        return DetectionOutput(proposal_pos=centre, proposal_batch=centre_batch, objectness_logits=out[:, :2],
                               center=centre + out[:, 2:5], log_size=out[:, 5:8], class_logits=out[:, 8:8 + k],
                               vote_pos=vote_pos, vote_feat=vote_feat, seed_batch=batch)

    def forward(self, seed_feat: Tensor, seed_pos: Tensor, seed_batch: Tensor | None = None) -> DetectionOutput:
        """Votes and proposals of the seeds (e.g. ``Encoded.xs[k]``, ``.poss[k]``, ``.batches[k]``)."""
        vote_pos, vote_feat = self.vote(seed_feat, seed_pos)
        out = self.propose(vote_pos, vote_feat, seed_batch)
        out.seed_pos = seed_pos
        return out

    # ------------------------------------------------------------ loss

    def _gt(self, gt_boxes: Sequence[Mapping], num_clouds: int, device: torch.device, need_instances: bool):
        if isinstance(gt_boxes, Mapping) or not isinstance(gt_boxes, Sequence):
            raise ValueError(f"gt_boxes: expected a sequence with one mapping per cloud, got "
                             f"{type(gt_boxes).__name__}")
        if len(gt_boxes) != num_clouds:
            raise ValueError(f"gt_boxes: expected one entry per cloud ({num_clouds}), got {len(gt_boxes)}")
        centers, sizes, classes, instances, cloud = [], [], [], [], []
        for i, g in enumerate(gt_boxes):
            keys = ("centers", "sizes", "classes") + (("instances",) if need_instances else ())
            for key in keys:
                if not isinstance(g, Mapping) or key not in g:
                    raise ValueError(f"gt_boxes[{i}]: expected a mapping with keys {list(keys)}, got "
                                     f"{sorted(g) if isinstance(g, Mapping) else type(g).__name__}")
            c = torch.as_tensor(g["centers"], dtype=torch.float32, device=device).reshape(-1, 3) \
                if np.size(g["centers"]) else torch.zeros(0, 3, device=device)
            n = c.size(0)
            z = torch.as_tensor(g["sizes"], dtype=torch.float32, device=device)
            if z.shape != (n, 3) and not (n == 0 and z.numel() == 0):
                raise ValueError(f"gt_boxes[{i}]['sizes']: expected shape [{n}, 3], got {list(z.shape)}")
            z = z.reshape(n, 3)
            if not bool(torch.isfinite(c).all()) or not bool(torch.isfinite(z).all()) or bool((z < 0).any()):
                raise ValueError(f"gt_boxes[{i}]: expected finite centres and non-negative finite sizes, got a "
                                 f"non-finite value or a negative size")
            k = torch.as_tensor(g["classes"], device=device)
            if k.shape != (n,) or (n and (k.is_floating_point() or k.dtype == torch.bool)):
                raise ValueError(f"gt_boxes[{i}]['classes']: expected {n} integer class ids, got shape "
                                 f"{list(k.shape)} dtype {k.dtype}")
            k = k.long()
            if n and (int(k.min()) < 0 or int(k.max()) >= self.num_classes):
                raise ValueError(f"gt_boxes[{i}]['classes']: expected class ids in [0, {self.num_classes}), got "
                                 f"{k.tolist()}")
            if need_instances:
                ins = torch.as_tensor(g["instances"], device=device)
                if ins.shape != (n,) or (n and (ins.is_floating_point() or ins.dtype == torch.bool)):
                    raise ValueError(f"gt_boxes[{i}]['instances']: expected {n} integer instance ids, got shape "
                                     f"{list(ins.shape)} dtype {ins.dtype}")
                ins = ins.long()
                if len(torch.unique(ins)) != n:
                    raise ValueError(f"gt_boxes[{i}]['instances']: expected distinct instance ids, got "
                                     f"{ins.tolist()}")
                instances.append(ins)
            centers.append(c), sizes.append(z), classes.append(k)
            cloud.append(torch.full((n,), i, dtype=torch.long, device=device))
        cat = torch.cat
        return (cat(centers), cat(sizes), cat(classes), cat(instances) if need_instances else None, cat(cloud))

    def _vote_targets(self, out: DetectionOutput, seed_instances: Tensor | None, centers: Tensor, sizes: Tensor,
                      gt_inst: Tensor | None, gt_cloud: Tensor) -> Tensor:
        """For each seed, the index of its GT box, or -1 for a seed in no object."""
        seed_batch = out.seed_batch
        s = seed_batch.numel()
        target = torch.full((s,), -1, dtype=torch.long, device=seed_batch.device)
        if centers.size(0) == 0 or s == 0:
            return target
        if seed_instances is not None:  # the box of the seed's instance in its cloud
            inst = seed_instances.long()
            span = int(max(int(inst.max()), int(gt_inst.max()))) + 1
            lo = min(int(inst.min()), int(gt_inst.min()), 0)
            gt_key = gt_cloud * (span - lo) + (gt_inst - lo)
            seed_key = seed_batch * (span - lo) + (inst - lo)
            sorted_key, order = torch.sort(gt_key)
            pos = torch.searchsorted(sorted_key, seed_key).clamp(max=sorted_key.numel() - 1)
            hit = (sorted_key[pos] == seed_key) & (inst > 0)
            target[hit] = order[pos[hit]]
            return target
        # geometric: the smallest GT box of the seed's cloud that contains it
        sp = out.seed_pos.detach()
        inside = ((sp[:, None, :] - centers[None]).abs() <= sizes[None] / 2).all(2)
        inside &= seed_batch[:, None] == gt_cloud[None]
        volume = sizes.prod(1).expand(s, -1).masked_fill(~inside, float("inf"))
        best = volume.argmin(1)
        return torch.where(inside.any(1), best, target)

    def loss(self, out: DetectionOutput, gt_boxes: Sequence[Mapping],
             seed_instances: Tensor | None = None) -> dict[str, Tensor]:
        """VoteNet's losses; returns ``{"loss", "vote", "objectness", "center", "size", "class",
        "positives"}`` (``positives``: the count of positive proposals, not a loss).

        ``gt_boxes[b]`` (one per cloud, ``len(gt_boxes)`` the number of clouds): ``{"centers": (G, 3),
        "sizes": (G, 3) metres, "classes": (G,) ids in [0, K)}`` and, with ``seed_instances``,
        ``"instances": (G,)`` the instance id of each box (distinct within a cloud).

        - ``vote``: ``Σ ‖vote − c‖₁ / n`` over the ``n`` seeds inside an object, ``c`` the centre of
          their object's GT box. With ``seed_instances`` (``S``, the per-point instance ids carried to
          the seeds, e.g. by :func:`seed_values`), a seed is in the box whose instance id equals its own
          (ids ≤ 0 or without a box: in no object), as VoteNet on ScanNet; without, a seed is in the
          smallest GT box containing it, as VoteNet on SUN RGB-D.
        - ``objectness``: weighted cross-entropy; a proposal whose position is closer than
          ``near_threshold`` to a GT centre of its cloud is positive, one farther than
          ``far_threshold`` from all of them negative, the others ignored (normalised by the count of
          positives and negatives).
        - ``center``, ``size``: for positive proposals, Huber losses (summed over xyz, averaged over
          the positives) of the centre and of ``log size`` against those of the nearest GT centre's box.
        - ``class``: cross-entropy of the positives against the class of that box.
        """
        if not isinstance(out, DetectionOutput) or out.vote_pos is None or out.seed_batch is None:
            raise ValueError("out: expected the DetectionOutput of DetectionHead.forward, got "
                             f"{type(out).__name__} without votes")
        seed_batch = out.seed_batch
        s = seed_batch.numel()
        num_clouds = int(torch.maximum(seed_batch.max(), out.proposal_batch.max())) + 1 if s else 0
        if isinstance(gt_boxes, Sequence) and not isinstance(gt_boxes, Mapping) and len(gt_boxes) > num_clouds:
            num_clouds = len(gt_boxes)  # trailing clouds without seeds
        if seed_instances is not None:
            _check_ids(seed_instances, "seed_instances", s)
        elif out.seed_pos is None:
            raise ValueError("seed_instances: expected per-seed instance ids when out has no seed_pos, got None")
        device = out.center.device
        centers, sizes, classes, gt_inst, gt_cloud = self._gt(gt_boxes, num_clouds, device,
                                                             seed_instances is not None)

        # votes
        target = self._vote_targets(out, seed_instances, centers, sizes, gt_inst, gt_cloud)
        voting = target >= 0
        if bool(voting.any()):
            vote = (out.vote_pos[voting] - centers[target[voting]]).abs().sum(1).mean()
        else:
            vote = _zero(out.vote_pos)

        # objectness: distance of each proposal to the nearest GT centre of its cloud
        p = out.proposal_pos.size(0)
        if centers.size(0):
            dist = torch.cdist(out.proposal_pos.detach().float(), centers)
            dist = dist.masked_fill(out.proposal_batch[:, None] != gt_cloud[None], float("inf"))
            nearest, assign = dist.min(1)
        else:
            nearest = torch.full((p,), float("inf"), device=device)
            assign = torch.zeros(p, dtype=torch.long, device=device)
        positive = nearest < self.near
        counted = positive | (nearest > self.far)
        ce = F.cross_entropy(out.objectness_logits, positive.long(), weight=self.objectness_weights,
                             reduction="none")
        objectness = (ce * counted).sum() / counted.sum().clamp(min=1)

        # boxes and classes of the positives
        if bool(positive.any()):
            a = assign[positive]
            center = F.smooth_l1_loss(out.center[positive], centers[a], beta=self.huber_delta,
                                      reduction="none").sum(1).mean()
            log_gt = sizes[a].clamp(min=self.min_size).log()
            size = F.smooth_l1_loss(out.log_size[positive], log_gt, beta=self.huber_delta,
                                    reduction="none").sum(1).mean()
            cls = F.cross_entropy(out.class_logits[positive], classes[a])
        else:
            center, size, cls = _zero(out.center), _zero(out.log_size), _zero(out.class_logits)
        terms = {"vote": vote, "objectness": objectness, "center": center, "size": size, "class": cls}
        total = sum(self.weights[k] * v for k, v in terms.items())
        return {"loss": total, **terms, "positives": positive.sum()}

    # ------------------------------------------------------------ inference

    @torch.no_grad()
    def predict(self, out: DetectionOutput, iou_threshold: float = 0.25, score_threshold: float = 0.05,
                class_aware: bool = True, num_clouds: int | None = None) -> list[dict]:
        """Boxes of each cloud after 3D NMS, as VoteNet's ScanNet evaluation decodes them.

        Proposals are suppressed by greedy NMS of the axis-aligned boxes ranked by ``P(object)``
        (:func:`text4point.metrics.nms_3d`: a box with ``IoU > iou_threshold`` with a kept, higher-ranked one
        is removed; with ``class_aware``, only by one of its arg-max class), those with ``P(object)`` below
        ``score_threshold`` are dropped, and every survivor is reported once per class ``c`` with the score
        ``P(object) · P(c)`` (VoteNet's ``per_class_proposal``: the per-class AP then ranks each box by its
        probability of that class, not only under its arg-max class).

        Returns one dictionary per cloud: ``{"boxes": (B, 6) (cx, cy, cz, dx, dy, dz), "classes": (B,)
        int64, "scores": (B,) float64}`` with ``B = kept proposals × K``, highest score first: the
        ``pred_boxes[s]`` of :func:`text4point.metrics.detection_ap`.
        """
        p = out.proposal_batch.numel()
        _check_features(out.objectness_logits, "out.objectness_logits", 2, p)
        _check_features(out.center, "out.center", 3, p)
        _check_features(out.log_size, "out.log_size", 3, p)
        _check_features(out.class_logits, "out.class_logits", self.num_classes, p)
        if not 0.0 <= float(iou_threshold) <= 1.0:
            raise ValueError(f"iou_threshold: expected a value in [0, 1], got {iou_threshold!r}")
        batch = out.proposal_batch.long()
        b = _num_clouds(batch, num_clouds, "out.proposal_batch")
        obj = torch.softmax(out.objectness_logits.float(), 1)[:, 1].double().cpu().numpy()
        prob = torch.softmax(out.class_logits.float(), 1).double().cpu().numpy()
        cls = prob.argmax(1).astype(np.int64)
        boxes = torch.cat([out.center, out.log_size.exp()], 1).double().cpu().numpy()
        batch = batch.cpu().numpy()
        k = prob.shape[1]
        results = []
        for c in range(b):
            idx = np.flatnonzero((batch == c) & np.isfinite(boxes).all(1))
            keep = nms_3d(boxes[idx], obj[idx], float(iou_threshold), class_aware=class_aware,
                          classes=cls[idx] if class_aware else None)
            idx = idx[keep]
            idx = idx[obj[idx] >= score_threshold]
            score = (obj[idx, None] * prob[idx]).reshape(-1)
            order = np.argsort(-score, kind="stable")
            results.append({"boxes": np.repeat(boxes[idx], k, 0)[order],
                            "classes": np.tile(np.arange(k, dtype=np.int64), len(idx))[order],
                            "scores": score[order]})
        return results


__all__ = ["DetectionHead", "DetectionOutput", "InstanceHead", "InstanceOutput", "SemanticHead", "seed_values"]
