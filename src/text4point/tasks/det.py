"""3D object detection of axis-aligned boxes, VoteNet-style (Qi et al., 2019): seeds of an intermediate encoder
level vote for their object's centre, votes are sampled by farthest-point sampling and grouped by a ball query
into proposals that predict objectness, centre, size and class; decoded as VoteNet's ScanNet evaluation does
(class-aware 3D NMS, objectness threshold, every box once per class) and scored by VoteNet's mAP at 3D IoU
0.25 and 0.5 over the label set's thing classes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torch_cluster
from torch import Tensor, nn
from torch_geometric.nn import MLP
from torch_geometric.utils import scatter

from ..geometry import nms_3d
from ..metrics import detection_ap
from ..models.sampling import fps
from ._base import (Scorer, Task, check_batch, check_features, check_ids, none_to_zero, num_clouds_of, seed_values,
                    top_view, zero_loss)

DRAW_MIN_SCORE = 0.3  # predicted boxes drawn in the figures


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
        check_features(seed_feat, "seed_feat", self.seed_dim)
        check_features(seed_pos, "seed_pos", 3, seed_feat.size(0))
        out = self.vote_mlp(seed_feat)
        return seed_pos + out[:, :3], F.normalize(seed_feat + out[:, 3:], dim=1)

    def propose(self, vote_pos: Tensor, vote_feat: Tensor, batch: Tensor | None = None) -> DetectionOutput:
        """Proposals from votes: FPS (``num_proposals`` per cloud), ball query, PointNet, box MLP.

        ``batch`` (the votes' clouds, i.e. the seeds') must be sorted, as PyG packs clouds.
        """
        check_features(vote_feat, "vote_feat", self.seed_dim)
        s = vote_feat.size(0)
        check_features(vote_pos, "vote_pos", 3, s)
        batch = check_batch(batch, "seed_batch", s, vote_pos.device, sorted_=True)
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
            check_ids(seed_instances, "seed_instances", s)
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
            vote = zero_loss(out.vote_pos)

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
            center, size, cls = zero_loss(out.center), zero_loss(out.log_size), zero_loss(out.class_logits)
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
        check_features(out.objectness_logits, "out.objectness_logits", 2, p)
        check_features(out.center, "out.center", 3, p)
        check_features(out.log_size, "out.log_size", 3, p)
        check_features(out.class_logits, "out.class_logits", self.num_classes, p)
        if not 0.0 <= float(iou_threshold) <= 1.0:
            raise ValueError(f"iou_threshold: expected a value in [0, 1], got {iou_threshold!r}")
        batch = out.proposal_batch.long()
        b = num_clouds_of(batch, num_clouds, "out.proposal_batch")
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


class _DetectionScorer(Scorer):
    def __init__(self, label_set, ft: dict):
        self.names, self.things = list(label_set.classes), list(label_set.thing_ids)
        self.nms_iou = float(ft["det"]["nms_iou"])
        self.preds, self.gts = [], []

    def add(self, cloud, view, out, head, batch) -> dict:
        got = head.predict(out["det"], iou_threshold=self.nms_iou, num_clouds=1)[0]
        boxes = np.asarray(got["boxes"], np.float64).reshape(-1, 6).copy()
        boxes[:, :3] += view["centre"]
        self.preds.append({"boxes": boxes, "classes": got["classes"], "scores": got["scores"]})
        self.gts.append({"boxes": cloud.boxes, "classes": cloud.box_classes})
        return {"boxes": boxes, "box_classes": np.asarray(got["classes"], np.int64),
                "box_scores": np.asarray(got["scores"], np.float64)}

    def result(self) -> dict:
        m = detection_ap(self.preds, self.gts, (0.25, 0.5), class_names=[self.names[c] for c in self.things],
                         class_ids=self.things)
        return none_to_zero({"map25": m["map"]["0.25"], "map50": m["map"]["0.5"], "per_class": m["ap"]["0.25"]},
                            ("map25", "map50"))


class Det(Task):
    name = "det"
    title = "3D object detection"
    metrics = {"map25": "mAP@0.25", "map50": "mAP@0.5"}
    primary = "map25"
    prediction_keys = ("boxes", "box_classes", "box_scores")
    free_rotation = False

    def decode_rows(self, encoded, index):
        """The seeds: the first set-abstraction level's points when the backbone says which input points they are
        (``Encoded.samples``); else every point (the seeds then take their nearest point's ``z3D``)."""
        return encoded.samples[0] if encoded.samples is not None else None

    def head(self, in_dim: int, num_classes: int, ft: dict) -> nn.Module:
        return DetectionHead(in_dim, num_classes, num_proposals=int(ft["det"]["num_proposals"]),
                             radius=float(ft["det"]["radius"]))

    def forward(self, head, z, encoded, pos, batch) -> dict:
        # seeds: the first set-abstraction level's points (a quarter of the voxels) carrying their z3D
        seed_pos, seed_batch = encoded.poss[1], encoded.batches[1]
        seed_feat = z if encoded.samples is not None else seed_values(z, pos, batch, seed_pos, seed_batch)
        return {"det": head(seed_feat, seed_pos, seed_batch), "seed_pos": seed_pos, "seed_batch": seed_batch}

    def loss(self, head, out, batch) -> dict:
        gts = [{"centers": b[:, :3], "sizes": b[:, 3:], "classes": c, "instances": i}
               for b, c, i in zip(batch.boxes, batch.box_classes, batch.box_instances)]
        seed_inst = seed_values(batch.instance, batch.pos, batch.batch, out["seed_pos"], out["seed_batch"])
        terms = head.loss(out["det"], gts, seed_inst)
        return {k: v for k, v in terms.items() if k != "positives"}

    def scorer(self, label_set, ft: dict) -> Scorer:
        return _DetectionScorer(label_set, ft)

    def draw(self, ax, pts, pred, scene, label_set, class_colours) -> None:
        import matplotlib.pyplot as plt

        top_view(ax, pts["xyz"], pts["rgb"] / 255.0)
        if pred is None:
            boxes = [(b["center"], b["size"], b["semantic"]) for b in scene.boxes()]
        else:
            boxes = [(b[:3], b[3:], c) for b, c, s in zip(pred["boxes"], pred["box_classes"], pred["box_scores"])
                     if s >= DRAW_MIN_SCORE]
        for (cx, cy, _), (sx, sy, _), cls in boxes:
            ax.add_patch(plt.Rectangle((cx - sx / 2, cy - sy / 2), sx, sy, fill=False, lw=1,
                                       ec=class_colours[int(cls) % len(class_colours)]))


TASK = Det()

__all__ = ["DetectionHead", "DetectionOutput", "TASK"]
