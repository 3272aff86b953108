"""Instance segmentation, PointGroup-style (Jiang et al., 2020): per-point semantic logits and offsets to the
instance centre, grouped by the connected components of a radius graph on the shifted points, scored by
ScanNet's instance AP (0.5:0.95), AP50 and AP25 over the label set's thing classes."""

from __future__ import annotations

from collections.abc import Sequence
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

from ..metrics import instance_ap
from ._base import (Scorer, Task, check_batch, check_features, check_ids, local_index, none_to_zero, num_clouds_of,
                    rows_of, semantic_loss, top_view, zero_loss)


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
        self.class_weights: Tensor | None = None  # optional per-class weights of the semantic loss

    def forward(self, z: Tensor) -> InstanceOutput:
        """Semantic logits (``N × K``) and offsets to the instance centre (``N × 3``, metres) of ``z``."""
        check_features(z, "z", self.in_dim)
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
        check_features(pos, "pos", 3)
        n = pos.size(0)
        batch = check_batch(batch, "batch", n, pos.device)
        check_features(sem_logits, "sem_logits", self.num_classes, n)
        check_features(offsets, "offsets", 3, n)
        check_ids(instances, "instances", n)
        semantic = semantic_loss(sem_logits, labels, self.num_classes, "sem_logits", weight=self.class_weights)

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
            offset_l1 = offset_dir = zero_loss(offsets)
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
        check_features(pos, "pos", 3)
        n = pos.size(0)
        batch = check_batch(batch, "batch", n, pos.device)
        check_features(sem_logits, "sem_logits", self.num_classes, n)
        check_features(offsets, "offsets", 3, n)
        things = np.asarray(thing_ids, dtype=np.int64).reshape(-1) if len(thing_ids) else np.zeros(0, np.int64)
        if len(things) and (things.min() < 0 or things.max() >= self.num_classes):
            raise ValueError(f"thing_ids: expected class ids in [0, {self.num_classes}), got {things.tolist()}")
        if not radius > 0:
            raise ValueError(f"radius: expected a positive distance in metres, got {radius!r}")
        if int(min_points) < 1:
            raise ValueError(f"min_points: expected a positive integer, got {min_points!r}")
        if max_neighbors is not None and int(max_neighbors) < 1:
            raise ValueError(f"max_neighbors: expected a positive integer or None, got {max_neighbors!r}")
        b = num_clouds_of(batch, num_clouds, "batch")
        out = [{"masks": [], "classes": np.zeros(0, np.int64), "scores": np.zeros(0, np.float64)}
               for _ in range(b)]

        k = self.num_classes
        probs = torch.softmax(sem_logits.detach().float(), 1).cpu()
        conf, cls = probs.max(1)
        batch_c = batch.cpu()
        local = local_index(batch_c, b)
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


def instance_colours(ids: np.ndarray) -> np.ndarray:
    """A fixed random colour per instance id; grey for no instance (id <= 0)."""
    rng = np.random.default_rng(0)
    palette = rng.uniform(0.15, 0.95, (int(ids.max(initial=0)) + 1, 3))
    out = palette[np.maximum(ids, 0)]
    out[ids <= 0] = 0.85
    return out


class _InstanceScorer(Scorer):
    def __init__(self, label_set, ft: dict):
        self.names, self.things = list(label_set.classes), list(label_set.thing_ids)
        self.radius, self.min_points = float(ft["insseg"]["radius"]), int(ft["insseg"]["min_points"])
        self.preds, self.gts = [], []

    def add(self, cloud, view, out, head, batch) -> dict:
        o = out["head"]
        props = head.predict(batch.pos, batch.batch, o.sem_logits, o.offsets, self.things, radius=self.radius,
                             min_points=self.min_points, num_clouds=1)[0]
        masks, inst_map = [], np.zeros(len(cloud.point_voxel), np.int32)
        for j, vox in enumerate(props["masks"]):
            in_vox = np.zeros(len(cloud.pos), bool)
            in_vox[np.asarray(vox, np.int64)] = True
            m = in_vox[cloud.point_voxel]
            masks.append(m)
            inst_map[m & (inst_map == 0)] = j + 1
        self.preds.append({"masks": masks, "classes": props["classes"], "scores": props["scores"]})
        self.gts.append({"semantic": cloud.point_semantic, "instance": cloud.point_instance})
        return {"instance": inst_map, "instance_classes": np.asarray(props["classes"], np.int64)}

    def result(self) -> dict:
        m = instance_ap(self.preds, self.gts, self.things, [self.names[c] for c in self.things])
        return none_to_zero({"ap": m["ap"], "ap50": m["ap50"], "ap25": m["ap25"],
                             "per_class": {c: v["ap50"] for c, v in m["classes"].items()}}, ("ap", "ap50", "ap25"))


class InsSeg(Task):
    name = "insseg"
    title = "instance segmentation"
    metrics = {"ap": "AP", "ap50": "AP50", "ap25": "AP25"}
    primary = "ap50"
    prediction_keys = ("instance",)

    def head(self, in_dim: int, num_classes: int, ft: dict) -> nn.Module:
        return InstanceHead(in_dim, num_classes)

    def forward(self, head, z, encoded, pos, batch) -> dict:
        return {"head": head(z)}

    def loss(self, head, out, batch) -> dict:
        o, r = out["head"], rows_of(out)
        return head.loss(batch.pos[r], batch.batch[r], o.sem_logits, o.offsets, batch.semantic[r], batch.instance[r])

    def scorer(self, label_set, ft: dict) -> Scorer:
        return _InstanceScorer(label_set, ft)

    def draw(self, ax, pts, pred, scene, label_set, class_colours) -> None:
        sem, inst = pts["semantic"].astype(np.int64), pts["instance"].astype(np.int64)
        ids = (np.where(np.isin(sem, label_set.thing_ids), inst, 0) if pred is None
               else pred["instance"].astype(np.int64))
        top_view(ax, pts["xyz"], instance_colours(ids))


TASK = InsSeg()

__all__ = ["InstanceHead", "InstanceOutput", "TASK", "instance_colours"]
