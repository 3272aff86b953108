"""Fine-tuning data: whole labelled scenes, voxelized, with their instances and boxes.

A scene (``points.ply``: xyz, rgb, ScanNet-20 semantic id, instance id; ``boxes.json``) becomes a voxel cloud on
the pre-training grid (``voxel_size``, the correspondences' by default, so a pre-trained network sees the
resolution it was trained at): a voxel's position and colour are its points' means, its semantic and instance
labels their majority (255 / 0 when the majority is unlabelled). Each scene point keeps the row of its voxel
(``point_voxel``), so predictions on voxels are scored on the original points, as the benchmarks do.

Training items are augmented with transforms that keep axis-aligned boxes axis-aligned (VoteNet flips and
rotates by multiples of 90° about the gravity axis for that reason): a random multiple of 90° about z, a random
flip of x, a random uniform scale in ``[0.9, 1.1]``, then at most ``max_points`` voxels (a seeded random subset,
in a seeded random order). The randomness of an item depends only on ``(seed, epoch, index)``.

The data-efficient regime (``label_fraction``) keeps ``max(1, round(fraction · n))`` of the ``n`` train scenes,
drawn once from the data seed (``seed`` in params) and not from the training seed, so every training seed and
every initialisation sees the same scenes, as CSC's data-efficient benchmark fixes its scene lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ..geometry import voxelize
from ..labels import IGNORE_LABEL
from ..scene import Dataset

SCALE_RANGE = (0.9, 1.1)


@dataclass
class SceneCloud:
    """One scene at voxel resolution (numpy, CPU)."""

    scene_id: str
    pos: np.ndarray        # [V, 3] float32
    rgb: np.ndarray        # [V, 3] float32 in [0, 1]
    semantic: np.ndarray   # [V] int64, IGNORE_LABEL where unlabelled
    instance: np.ndarray   # [V] int64, 0 = no instance
    boxes: np.ndarray      # [B, 6] float32 (cx, cy, cz, dx, dy, dz)
    box_classes: np.ndarray  # [B] int64
    box_instances: np.ndarray  # [B] int64: the instance id of each box (as in ``instance``)
    point_voxel: np.ndarray  # [N] int64: each scene point's voxel row
    point_semantic: np.ndarray  # [N] int64 (ground truth of the original points)
    point_instance: np.ndarray  # [N] int64


def _majority(cluster: Tensor, values: np.ndarray, n_voxels: int, none_value: int) -> np.ndarray:
    """Per voxel, the most frequent value of its points (``none_value`` wins ties against nothing: it is
    only the result when it is the most frequent)."""
    v = torch.as_tensor(values.astype(np.int64))
    uniq, inv = torch.unique(v, return_inverse=True)
    counts = torch.zeros((n_voxels, len(uniq)), dtype=torch.int64)
    counts.index_put_((cluster, inv), torch.ones_like(inv), accumulate=True)
    best = uniq[counts.argmax(1)].numpy()
    return np.where(counts.sum(1).numpy() > 0, best, none_value)


def load_scene(dataset: Dataset, scene_id: str, voxel_size: float) -> SceneCloud:
    """Voxelize one scene of ``dataset`` (see the module docstring)."""
    scene = dataset.scene(scene_id)
    pts = scene.points()
    xyz = np.asarray(pts["xyz"], np.float32)  # read_points refuses an empty scene in one line
    k = len(dataset.label_set.classes)
    sem = np.asarray(pts["semantic"], np.int64)
    bad = (sem != IGNORE_LABEL) & ((sem < 0) | (sem >= k))
    if bad.any():
        raise InputError(f"{scene.path / 'points.ply'}: field semantic: expected ids in [0, {k}) or "
                         f"{IGNORE_LABEL}, got {int(sem[bad][0])}")
    inst = np.asarray(pts["instance"], np.int64)
    vpos, _, cluster = voxelize(torch.from_numpy(xyz), float(voxel_size))
    n = len(vpos)
    counts = torch.bincount(cluster, minlength=n).float().unsqueeze(1)
    rgb = torch.zeros((n, 3)).index_add_(0, cluster, torch.from_numpy(np.asarray(pts["rgb"], np.float32))) / counts
    boxes = scene.boxes()
    box_arr = np.array([list(b["center"]) + list(b["size"]) for b in boxes], np.float32).reshape(-1, 6)
    box_cls = np.array([int(b["semantic"]) for b in boxes], np.int64)
    box_inst = np.array([int(b["instance"]) for b in boxes], np.int64)
    return SceneCloud(scene_id=scene_id, pos=vpos.numpy().astype(np.float32), rgb=(rgb / 255.0).numpy(),
                      semantic=_majority(cluster, sem, n, IGNORE_LABEL),
                      instance=_majority(cluster, np.where(inst > 0, inst, 0), n, 0),
                      boxes=box_arr, box_classes=box_cls, box_instances=box_inst, point_voxel=cluster.numpy(),
                      point_semantic=sem, point_instance=inst)


def label_fraction_scenes(scene_ids: list[str], fraction: float, seed: int) -> list[str]:
    """The train scenes of the data-efficient regime: ``max(1, round(fraction · n))`` of them, drawn from ``seed``
    (the same for every training seed and initialisation), in their original order."""
    if not 0.0 < float(fraction) <= 1.0:
        raise InputError(f"finetune.label_fractions: expected values in (0, 1], got {fraction}")
    n = len(scene_ids)
    if n == 0:
        raise InputError("the train split has no scenes to fine-tune on")
    k = max(1, int(round(float(fraction) * n)))
    if k >= n:
        return list(scene_ids)
    pick = np.random.default_rng([int(seed), 11]).choice(n, size=k, replace=False)
    return [scene_ids[i] for i in sorted(pick)]


@dataclass
class SceneBatch:
    """Clouds in PyTorch Geometric's layout with their per-voxel labels and per-cloud boxes."""

    x: Tensor
    pos: Tensor
    batch: Tensor
    semantic: Tensor
    instance: Tensor   # per cloud ids, 0 = none
    boxes: list[Tensor] = field(default_factory=list)        # per cloud [B, 6]
    box_classes: list[Tensor] = field(default_factory=list)  # per cloud [B]
    box_instances: list[Tensor] = field(default_factory=list)  # per cloud [B]
    names: list[str] = field(default_factory=list)

    def to(self, device) -> "SceneBatch":
        return SceneBatch(x=self.x.to(device), pos=self.pos.to(device), batch=self.batch.to(device),
                          semantic=self.semantic.to(device), instance=self.instance.to(device),
                          boxes=[b.to(device) for b in self.boxes],
                          box_classes=[c.to(device) for c in self.box_classes],
                          box_instances=[c.to(device) for c in self.box_instances], names=self.names)

    @property
    def num_points(self) -> int:
        return int(self.pos.size(0))


def augment(cloud: SceneCloud, rng: np.random.Generator, max_points: int) -> dict:
    """A training view of ``cloud`` (see the module docstring), as numpy arrays."""
    quarter = int(rng.integers(4))
    flip = bool(rng.random() < 0.5)
    scale = float(rng.uniform(*SCALE_RANGE))
    keep = rng.permutation(len(cloud.pos))[:max_points]
    pos = cloud.pos[keep].astype(np.float64)
    centre = cloud.pos.mean(0)
    pos = pos - centre
    boxes = cloud.boxes.astype(np.float64).copy()
    boxes[:, :3] -= centre
    c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][quarter]
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float64)
    pos = pos @ R.T
    boxes[:, :3] = boxes[:, :3] @ R.T
    if quarter % 2:
        boxes[:, [3, 4]] = boxes[:, [4, 3]]
    if flip:
        pos[:, 0] = -pos[:, 0]
        boxes[:, 0] = -boxes[:, 0]
    pos *= scale
    boxes *= scale
    return {"pos": pos.astype(np.float32), "x": cloud.rgb[keep], "semantic": cloud.semantic[keep],
            "instance": cloud.instance[keep], "boxes": boxes.astype(np.float32), "box_classes": cloud.box_classes,
            "box_instances": cloud.box_instances, "name": cloud.scene_id}


def centred(cloud: SceneCloud) -> dict:
    """The evaluation view: every voxel, centred like the training views (no other transform)."""
    centre = cloud.pos.mean(0)
    boxes = cloud.boxes.copy()
    boxes[:, :3] -= centre
    return {"pos": (cloud.pos - centre).astype(np.float32), "x": cloud.rgb, "semantic": cloud.semantic,
            "instance": cloud.instance, "boxes": boxes, "box_classes": cloud.box_classes,
            "box_instances": cloud.box_instances, "name": cloud.scene_id, "centre": centre}


def collate(items: list[dict]) -> SceneBatch:
    """Views -> :class:`SceneBatch` (instance ids stay per cloud, as the heads expect)."""
    sizes = [len(it["pos"]) for it in items]
    return SceneBatch(
        x=torch.from_numpy(np.concatenate([it["x"] for it in items]).astype(np.float32)),
        pos=torch.from_numpy(np.concatenate([it["pos"] for it in items]).astype(np.float32)),
        batch=torch.repeat_interleave(torch.arange(len(items)), torch.tensor(sizes)),
        semantic=torch.from_numpy(np.concatenate([it["semantic"] for it in items]).astype(np.int64)),
        instance=torch.from_numpy(np.concatenate([it["instance"] for it in items]).astype(np.int64)),
        boxes=[torch.from_numpy(it["boxes"].astype(np.float32)) for it in items],
        box_classes=[torch.from_numpy(it["box_classes"].astype(np.int64)) for it in items],
        box_instances=[torch.from_numpy(it["box_instances"].astype(np.int64)) for it in items],
        names=[it["name"] for it in items])


class TrainScenes(torch.utils.data.Dataset):
    """Augmented training views; item keys are ``(epoch, index)``, as :class:`text4point.training.EpochSampler`
    yields them."""

    def __init__(self, clouds: list[SceneCloud], max_points: int, seed: int):
        if not clouds:
            raise InputError("fine-tuning: no training scenes")
        self.clouds, self.max_points, self.seed = clouds, int(max_points), int(seed)

    def __len__(self) -> int:
        return len(self.clouds)

    def __getitem__(self, key) -> dict:
        epoch, index = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (0, int(key))
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, index, 5])
        return augment(self.clouds[index], rng, self.max_points)


__all__ = ["SceneBatch", "SceneCloud", "TrainScenes", "augment", "centred", "collate", "label_fraction_scenes",
           "load_scene"]
