"""Zero-shot semantic segmentation with a pre-trained network: each point takes the class whose text
embedding is most similar to its ``ĥ3D``.

Protocol (chosen here; the paper reports no zero-shot numbers):

- Input: each ``val`` scene's labelled scene cloud (``points.ply``, the ground truth), voxelized on the
  correspondences' grid (``correspondences.voxel_size``; a voxel's position and colour are the means of its
  points) - the resolution the network was pre-trained at, without the frames' partial views.
- Features: ``ĥ3D = FC(f3D(voxels))`` at the encoder's bottleneck (``N_b × d``, CLIP's joint space).
- Classes: the prompt embeddings (``"point cloud of a {}"``, the label set of the dataset) from the
  ``clip_features`` cache, ``t`` (``K × d``). A bottleneck point's class is ``argmax_k cos(ĥ3D, t_k)``.
- Upsampling: a voxel takes the class of its nearest bottleneck point (``Encoded.bottleneck_index``), a
  scene point the class of its voxel. Every scene point is scored.
- Reference: the mIoU and accuracy of labelling every point with the most frequent ground-truth class
  (``miou_majority_constant``), to read the numbers against.
- mIoU: one confusion matrix accumulated over all val scenes' points; points labelled ``IGNORE_LABEL`` (255)
  are excluded (whatever their prediction); ``IoU_c = TP / (TP + FP + FN)``; a class with
  ``TP + FP + FN = 0`` (absent from both the ground truth and the predictions) is left out of the mean, as
  its IoU is undefined. A class predicted but absent from the ground truth counts with IoU 0.

The random baseline is the same architecture initialised with the same seed and never trained (in eval
mode, so its BatchNorm layers use their initial running statistics).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import project, voxelize
from ..labels import IGNORE_LABEL
from ..metrics import confusion_matrix, iou_from_confusion
from ..point_features import channels_of, geometry_arrays
from ..scene import Dataset, FrameDefect


def voxel_cloud(xyz: np.ndarray, rgb: np.ndarray, voxel_size: float, device,
                channels: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(voxel positions [V, 3], the network input of the voxels [V, C] (their mean colour in [0, 1] and the other
    ``channels``, :mod:`text4point.point_features`, computed on the voxels), voxel of each point [N]) on
    ``device``."""
    pts = torch.as_tensor(np.asarray(xyz, np.float32), device=device)
    vpos, _, cluster = voxelize(pts, voxel_size)
    counts = torch.bincount(cluster, minlength=len(vpos)).float().unsqueeze(1)
    col = torch.as_tensor(np.asarray(rgb, np.float32) / 255.0, device=device)
    vx = torch.zeros_like(vpos).index_add_(0, cluster, col) / counts
    if tuple(channels) != ("rgb",):
        p = vpos.cpu().numpy()
        feats = channels_of(channels, vx.cpu().numpy(), geometry_arrays(p, channels))
        vx = torch.as_tensor(feats, device=device)
    return vpos, vx, cluster


@torch.no_grad()
def predict_points(model, xyz: np.ndarray, rgb: np.ndarray, text: torch.Tensor, voxel_size: float,
                   device, channels: tuple[str, ...], upsample: str = "nearest") -> np.ndarray:
    """Zero-shot class of every point of one cloud (see the module docstring); ``model`` has ``clip_space``.

    ``upsample="interpolate"`` (a diagnostic, not the protocol) classifies each voxel by ``ĥ3D`` interpolated
    from its 3 nearest bottleneck points (inverse distance) instead of taking its nearest one's class.
    """
    vpos, vx, cluster = voxel_cloud(xyz, rgb, voxel_size, device, channels)
    h_hat, encoded = model.clip_space(vx, vpos, None)
    t = F.normalize(text.to(device=device, dtype=torch.float32), dim=1)
    if upsample == "interpolate":
        from torch_geometric.nn import knn_interpolate

        h = knn_interpolate(F.normalize(h_hat.float(), dim=1), encoded.pos_b, vpos, k=3)
        return (F.normalize(h, dim=1) @ t.T).argmax(1)[cluster].cpu().numpy()
    if upsample != "nearest":
        raise ValueError(f"upsample: expected 'nearest' or 'interpolate', got {upsample!r}")
    cls = (F.normalize(h_hat.float(), dim=1) @ t.T).argmax(1)
    return cls[encoded.bottleneck_index()][cluster].cpu().numpy()


@torch.no_grad()
def teacher_votes(scene, features, sid: str, xyz: torch.Tensor, text: torch.Tensor,
                  depth_tolerance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2D teacher's votes for the points ``xyz`` [N, 3] of ``scene`` (:func:`teacher_ceiling`'s labelling):
    ``(votes [N, K], seen [N])``, the summed cosine scores against the L2-normalized ``text`` [K, d] of the cached
    frames that see each point, and whether any frame sees it."""
    from ..clip.dense import pixel_to_cell

    votes = torch.zeros((len(xyz), text.shape[0]))
    seen = torch.zeros(len(xyz), dtype=torch.bool)
    ccam, dcam = scene.cameras()
    grid = features.grid(sid)
    feats = features.features(sid)
    for row, frame in enumerate(features.frames(sid).tolist()):
        try:
            pose = scene.pose(frame)
            depth = torch.as_tensor(scene.depth(frame))
        except FrameDefect:
            continue
        uvd, zd, inside_d = project(xyz, torch.as_tensor(dcam.K), torch.as_tensor(pose @ dcam.extrinsic),
                                    dcam.width, dcam.height)
        uid = torch.floor(uvd + 0.5)  # the pixel a point falls in, as ``project`` defines ``inside``
        ud = uid[:, 0].clamp(0, dcam.width - 1).long()
        vd = uid[:, 1].clamp(0, dcam.height - 1).long()
        observed = depth[vd, ud]
        visible = inside_d & (observed > 0) & ((zd - observed).abs() < depth_tolerance)
        uvc, _, inside_c = project(xyz, torch.as_tensor(ccam.K), torch.as_tensor(pose @ ccam.extrinsic),
                                   ccam.width, ccam.height)
        uic = torch.floor(uvc + 0.5)
        visible &= inside_c
        idx = torch.nonzero(visible).squeeze(1)
        if len(idx) == 0:
            continue
        r, c = pixel_to_cell(uic[idx, 0].numpy(), uic[idx, 1].numpy(), grid)
        f = F.normalize(torch.as_tensor(np.asarray(feats[row])[r, c], dtype=torch.float32), dim=1)
        votes.index_add_(0, idx, f @ text.T)
        seen[idx] = True
    return votes, seen


def _scores(conf: np.ndarray, classes: list[str]) -> dict:
    miou, ious = iou_from_confusion(conf)
    total = int(conf.sum())
    return {"miou": miou, "accuracy": float(np.trace(conf) / total) if total else 0.0,
            "iou": dict(zip(classes, ious)), "classes_evaluated": sum(v is not None for v in ious)}


@torch.no_grad()
def evaluate(model, data_root: Path, scene_ids: list[str], text: torch.Tensor, voxel_size: float, device,
             channels: tuple[str, ...], classes: list[str] | None = None, upsample: str = "nearest",
             teacher: tuple | None = None) -> dict:
    """Zero-shot mIoU of ``model`` over ``scene_ids`` (typically the val split) of the dataset at ``data_root``.

    Returns ``{"miou", "accuracy", "iou": {class: IoU or None}, "classes_evaluated", "points", "scenes"}`` and
    the majority-constant reference. ``teacher=(features, depth_tolerance)`` (the ``clip_features`` cache) also
    scores the 2D teacher on the labelled points its frames see (:func:`teacher_votes`) and the model on those
    same points, so that the two compare on equal terms: ``"teacher"`` (:func:`teacher_ceiling`'s dict),
    ``"covered"`` (the model's ``miou``/``accuracy``/``iou`` there) and ``"agreement"`` (the share of those
    points where the model's class is the teacher's). ``model=None`` scores the teacher alone.
    """
    ds = Dataset(data_root)
    classes = list(classes or ds.label_set.classes)
    k = len(classes)
    if text.shape[0] != k:
        raise ValueError(f"text: expected {k} class embeddings (label set {ds.label_set.name}), got {text.shape[0]}")
    conf, conf_cov, conf_teacher = (np.zeros((k, k), np.int64) for _ in range(3))
    points = agree = seen_total = labelled_total = 0
    if teacher is not None:
        features, depth_tolerance = teacher
        t = F.normalize(text.float(), dim=1)
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    try:
        for sid in scene_ids:
            scene = ds.scene(sid)
            cloud = scene.points()
            sem = np.asarray(cloud["semantic"], np.int64)
            pred = None
            if model is not None:
                pred = predict_points(model, cloud["xyz"], cloud["rgb"], text, voxel_size, device, channels, upsample)
                conf += confusion_matrix(pred, sem, k)
                points += len(pred)
            if teacher is not None:
                xyz = torch.as_tensor(np.asarray(cloud["xyz"], np.float32))
                votes, seen = teacher_votes(scene, features, sid, xyz, t, float(depth_tolerance))
                m = seen.numpy()
                by_teacher = votes.argmax(1).numpy()
                conf_teacher += confusion_matrix(by_teacher[m], sem[m], k)
                labelled = sem != IGNORE_LABEL
                seen_total += int((labelled & m).sum())
                labelled_total += int(labelled.sum())
                if pred is not None:
                    conf_cov += confusion_matrix(pred[m], sem[m], k)
                    agree += int((pred[m & labelled] == by_teacher[m & labelled]).sum())
    finally:
        if model is not None:
            model.train(was_training)
    out: dict = {"scenes": len(scene_ids)}
    if model is not None:
        total = int(conf.sum())
        gt_counts = conf.sum(1)
        present = int((gt_counts > 0).sum())
        # reference: every point labelled with the most frequent ground-truth class (IoU = its share)
        out.update(_scores(conf, classes), points=int(points),
                   miou_majority_constant=float(gt_counts.max() / total / present) if total else 0.0,
                   accuracy_majority_constant=float(gt_counts.max() / total) if total else 0.0)
    if teacher is not None:
        out["teacher"] = {**_scores(conf_teacher, classes), "coverage": seen_total / max(labelled_total, 1)}
        if model is not None:
            out["covered"] = _scores(conf_cov, classes)
            out["agreement"] = agree / max(seen_total, 1)
    return out


@torch.no_grad()
def teacher_ceiling(data_root: Path, features, scene_ids: list[str], text: torch.Tensor, depth_tolerance: float = 0.05,
                    classes: list[str] | None = None) -> dict:
    """The same zero-shot labelling done by the *2D teacher*: what a perfect distillation could reach.

    Every scene point is projected into each cached frame (colour camera); where the frame's depth confirms it
    is visible (``|z - depth| < depth_tolerance`` at the depth pixel it falls in), the frame's dense CLIP
    feature at that pixel votes with its cosine scores against ``text``; a point takes the class of its summed
    votes. Points no frame sees are left out (``coverage`` says how many were seen). Returns ``{"miou",
    "accuracy", "iou", "classes_evaluated", "coverage"}``.
    """
    return evaluate(None, data_root, scene_ids, text, 0.0, "cpu", (), classes,
                    teacher=(features, depth_tolerance))["teacher"]


__all__ = ["evaluate", "predict_points", "teacher_ceiling", "teacher_votes", "voxel_cloud"]
