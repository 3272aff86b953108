"""Fine-tuning data: whole labelled scenes, voxelized, with their instances and boxes.

A scene (``points.ply``: xyz, rgb, ScanNet-20 semantic id, instance id; ``boxes.json``) becomes a voxel cloud on
the pre-training grid (``voxel_size``, the correspondences' by default, so a pre-trained network sees the
resolution it was trained at): a voxel's position and colour are its points' means, its semantic and instance
labels their majority (255 / 0 when the majority is unlabelled). Each scene point keeps the row of its voxel
(``point_voxel``), so predictions on voxels are scored on the original points, as the benchmarks do.

Training views (:class:`ViewConfig`, ``finetune.view``) are square full-height crops (``crop`` metres) around a
random voxel at full density, or the whole room, at most ``max_points`` voxels; augmented with transforms that keep
axis-aligned boxes axis-aligned (VoteNet flips and rotates by multiples of 90° about the gravity axis for that
reason): a random multiple of 90° about z, a random flip of x, a random uniform scale, and colour jitter. The
network's input channels (``pretrain.channels``: colour, height above the floor, normals, shape features;
:mod:`text4point.point_features`) are computed once per scene on its voxels; a view rotates the normals with it.
The randomness of a view depends only on ``(seed, view, index)``.

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
from ..point_features import channels_of, check_channels, geometry_arrays
from ..scene import Dataset

SCALE_RANGE = (0.9, 1.1)


@dataclass(frozen=True)
class ViewConfig:
    """How a training view is drawn from a scene (see :func:`augment`).

    ``crop``: side (metres) of a square, full-height crop of the room around a random voxel (0: the whole
    room); then at most ``max_points`` voxels (a random subset). ``rotation``: ``quarter`` (multiples of 90°
    about z, keeps boxes axis-aligned), ``free`` (any angle; not for detection) or ``none``. ``jitter``: std
    (metres) of a per-voxel Gaussian position noise, clipped at 2 std. ``color_shift``: per view and channel, a
    uniform shift in ``[-color_shift, color_shift]``; ``color_noise``: per voxel and channel Gaussian std;
    ``color_scale``: per view a brightness factor in ``[1 - s, 1 + s]`` (colours clipped to [0, 1]).
    """

    max_points: int = 8000
    crop: float = 0.0
    rotation: str = "quarter"
    flip: bool = True
    scale: tuple[float, float] = SCALE_RANGE
    jitter: float = 0.0
    color_shift: float = 0.0
    color_noise: float = 0.0
    color_scale: float = 0.0


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
    geometry: dict[str, np.ndarray] = field(default_factory=dict)  # point_features.geometry_arrays of the voxels
    channels: tuple[str, ...] = ("rgb",)

    def features(self, keep: np.ndarray | None = None, rotation: np.ndarray | None = None,
                 rgb: np.ndarray | None = None) -> np.ndarray:
        """The network input of the voxels ``keep`` (all by default) in a view rotated by ``rotation``."""
        sel = slice(None) if keep is None else keep
        col = self.rgb[sel] if rgb is None else rgb
        if self.channels == ("rgb",):
            return col
        return channels_of(self.channels, col, {k: v[sel] for k, v in self.geometry.items()}, rotation)


def _majority(cluster: Tensor, values: np.ndarray, n_voxels: int, none_value: int) -> np.ndarray:
    """Per voxel, the most frequent value of its points (``none_value`` wins ties against nothing: it is
    only the result when it is the most frequent)."""
    v = torch.as_tensor(values.astype(np.int64))
    uniq, inv = torch.unique(v, return_inverse=True)
    counts = torch.zeros((n_voxels, len(uniq)), dtype=torch.int64)
    counts.index_put_((cluster, inv), torch.ones_like(inv), accumulate=True)
    best = uniq[counts.argmax(1)].numpy()
    return np.where(counts.sum(1).numpy() > 0, best, none_value)


def load_scene(dataset: Dataset, scene_id: str, voxel_size: float, channels=("rgb",)) -> SceneCloud:
    """Voxelize one scene of ``dataset`` (see the module docstring); ``channels`` are the network's input
    channels (:mod:`text4point.point_features`): height, normals and shape features are computed once on the
    scene's voxels."""
    channels = check_channels(channels, "finetune.channels")
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
    pos = vpos.numpy().astype(np.float32)
    geometry = geometry_arrays(pos, channels)
    return SceneCloud(scene_id=scene_id, pos=pos, rgb=(rgb / 255.0).numpy(),
                      semantic=_majority(cluster, sem, n, IGNORE_LABEL),
                      instance=_majority(cluster, np.where(inst > 0, inst, 0), n, 0),
                      boxes=box_arr, box_classes=box_cls, box_instances=box_inst, point_voxel=cluster.numpy(),
                      point_semantic=sem, point_instance=inst, geometry=geometry, channels=channels)


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


def view_config(ft: dict) -> ViewConfig:
    """The :class:`ViewConfig` of the (validated) ``finetune`` params section: ``max_points`` and ``view``."""
    v = dict(ft["view"])
    v["scale"] = tuple(float(x) for x in v["scale"])
    if v["rotation"] not in ("quarter", "free", "none"):
        raise InputError(f"finetune.view.rotation: expected one of quarter, free, none, got {v['rotation']!r}")
    return ViewConfig(max_points=int(ft["max_points"]), **v)


def _crop(cloud: SceneCloud, rng: np.random.Generator, side: float) -> np.ndarray:
    """Rows of the voxels in a square ``side`` × ``side`` (x, y), full-height window centred on a random voxel."""
    c = cloud.pos[int(rng.integers(len(cloud.pos)))]
    inside = (np.abs(cloud.pos[:, :2] - c[None, :2]) <= side / 2).all(1)
    return np.flatnonzero(inside)


def augment(cloud: SceneCloud, rng: np.random.Generator, max_points, view: ViewConfig | None = None) -> dict:
    """A training view of ``cloud`` (see the module docstring and :class:`ViewConfig`), as numpy arrays.

    ``max_points`` is the cap of the default view (kept for the callers that pass only it); ``view``, when
    given, overrides everything."""
    view = view or ViewConfig(max_points=int(max_points))
    quarter = int(rng.integers(4))
    flip = bool(rng.random() < 0.5)
    scale = float(rng.uniform(*view.scale))
    if view.crop > 0:
        rows = _crop(cloud, rng, float(view.crop))
        keep = rows[rng.permutation(len(rows))[:view.max_points]]
    else:
        keep = rng.permutation(len(cloud.pos))[:view.max_points]
    pos = cloud.pos[keep].astype(np.float64)
    centre = pos.mean(0) if view.crop > 0 else cloud.pos.mean(0)
    pos = pos - centre
    present = np.isin(cloud.box_instances, cloud.instance[keep]) if view.crop > 0 else \
        np.ones(len(cloud.boxes), bool)
    boxes = cloud.boxes[present].astype(np.float64).copy()
    boxes[:, :3] -= centre
    if view.rotation == "free":
        a = float(rng.uniform(0, 2 * np.pi))
        c, s = np.cos(a), np.sin(a)
    elif view.rotation == "quarter":
        c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][quarter]
    else:
        c, s = 1.0, 0.0
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float64)
    if flip and view.flip:
        R = np.diag([-1.0, 1.0, 1.0]) @ R
    pos = pos @ R.T
    boxes[:, :3] = boxes[:, :3] @ R.T
    if view.rotation == "quarter" and quarter % 2:
        boxes[:, [3, 4]] = boxes[:, [4, 3]]
    pos *= scale
    boxes *= scale
    if view.jitter > 0:
        pos += np.clip(rng.normal(0.0, view.jitter, pos.shape), -2 * view.jitter, 2 * view.jitter)
    rgb = cloud.rgb[keep]
    if view.color_shift > 0 or view.color_noise > 0 or view.color_scale > 0:
        rgb = rgb * float(rng.uniform(1 - view.color_scale, 1 + view.color_scale)) \
            + rng.uniform(-view.color_shift, view.color_shift, (1, 3)) \
            + (rng.normal(0.0, view.color_noise, rgb.shape) if view.color_noise > 0 else 0.0)
        rgb = np.clip(rgb, 0.0, 1.0).astype(np.float32)
    return {"pos": pos.astype(np.float32), "x": cloud.features(keep, R, rgb), "semantic": cloud.semantic[keep],
            "instance": cloud.instance[keep], "boxes": boxes.astype(np.float32),
            "box_classes": cloud.box_classes[present], "box_instances": cloud.box_instances[present],
            "name": cloud.scene_id}


def centred(cloud: SceneCloud) -> dict:
    """The evaluation view: every voxel, centred like the training views (no other transform)."""
    centre = cloud.pos.mean(0)
    boxes = cloud.boxes.copy()
    boxes[:, :3] -= centre
    return {"pos": (cloud.pos - centre).astype(np.float32), "x": cloud.features(), "semantic": cloud.semantic,
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
    """Augmented training views; item keys are ``(view, index)``: the ``view``-th view drawn in the job, of scene
    ``index``; its randomness depends on ``(seed, view, index)`` alone."""

    def __init__(self, clouds: list[SceneCloud], max_points: int, seed: int, view: ViewConfig | None = None):
        if not clouds:
            raise InputError("fine-tuning: no training scenes")
        self.clouds, self.max_points, self.seed = clouds, int(max_points), int(seed)
        self.view = view

    def __len__(self) -> int:
        return len(self.clouds)

    def __getitem__(self, key) -> dict:
        epoch, index = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (0, int(key))
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, index, 5])
        return augment(self.clouds[index], rng, self.max_points, self.view)


__all__ = ["SceneBatch", "SceneCloud", "TrainScenes", "ViewConfig", "augment", "centred", "collate",
           "label_fraction_scenes", "load_scene", "view_config"]
