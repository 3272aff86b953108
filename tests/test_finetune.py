"""Fine-tuning (text4point.finetune): data views, initialisation from pre-training checkpoints, the three tasks
end to end on the tiny world, the text4point language guidance, bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from text4point.errors import InputError
from text4point.scene import Dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ft_inputs(pt_inputs, one_epoch_checkpoints, tmp_path_factory) -> dict:
    """pt_inputs plus a 1-epoch text4point and pointcontrast pre-training checkpoint."""
    cfg = copy.deepcopy(one_epoch_checkpoints["cfg"])
    cfg["finetune"]["steps"] = 2  # tests/configs/tiny.yaml's fine-tuning, two steps
    return {**pt_inputs, "cfg": cfg, "ckpts": one_epoch_checkpoints["ckpts"], "root": tmp_path_factory.mktemp("ft")}


def _finetune(ft_inputs, task, init, **kw):
    from text4point.finetune import FinetuneJob, run_stage

    ck = ft_inputs["ckpts"].get(init)
    return run_stage(FinetuneJob(kw.pop("cfg", ft_inputs["cfg"]), ft_inputs["world"], task, init, 0, 1.0, ck,
                                 progress=False, track=False, **kw), "cpu")


# ---------------------------------------------------------------- data


def test_label_fraction_scenes_are_fixed_by_the_data_seed():
    from text4point.finetune.data import label_fraction_scenes

    ids = [f"train_{i:04d}" for i in range(16)]
    ten = label_fraction_scenes(ids, 0.1, seed=0)
    assert len(ten) == 2 and ten == label_fraction_scenes(ids, 0.1, seed=0) and set(ten) <= set(ids)
    assert ten == sorted(ten)  # original order
    assert label_fraction_scenes(ids, 1.0, seed=0) == ids
    assert len(label_fraction_scenes(ids, 0.01, seed=0)) == 1  # never empty
    with pytest.raises(InputError, match=r"finetune.label_fractions: expected values in \(0, 1\], got 0.0"):
        label_fraction_scenes(ids, 0.0, seed=0)


def test_scene_voxels_keep_majority_labels_and_map_back_to_points(tiny_world):
    from text4point.finetune.data import load_scene
    from text4point.scene import Dataset

    ds = Dataset(tiny_world)
    sid = ds.split("train")[0]
    cloud = load_scene(ds, sid, 0.1)
    pts = ds.scene(sid).points()
    assert cloud.point_voxel.shape == (len(pts["xyz"]),) and cloud.point_voxel.max() == len(cloud.pos) - 1
    # every voxel position is the mean of its points
    v = 5
    np.testing.assert_allclose(cloud.pos[v], pts["xyz"][cloud.point_voxel == v].mean(0), atol=1e-5)
    # the voxel label is the majority of its points' labels
    for v in range(0, len(cloud.pos), max(1, len(cloud.pos) // 25)):
        labels = pts["semantic"][cloud.point_voxel == v].astype(np.int64)
        assert cloud.semantic[v] == np.bincount(labels).argmax()
    assert len(cloud.boxes) == len(ds.scene(sid).boxes()) > 0


def test_augmentation_moves_boxes_with_their_points(tiny_world):
    from text4point.finetune.data import augment, load_scene
    from text4point.scene import Dataset

    ds = Dataset(tiny_world)
    cloud = load_scene(ds, ds.split("train")[0], 0.1)
    for k in range(6):
        view = augment(cloud, np.random.default_rng(k), max_points=10 ** 6)
        for box, inst in zip(view["boxes"], cloud.box_instances):
            pts = view["pos"][view["instance"] == inst]
            if len(pts) == 0:
                continue
            lo, hi = box[:3] - box[3:] / 2, box[:3] + box[3:] / 2
            assert (pts >= lo - 0.11).all() and (pts <= hi + 0.11).all()  # voxel means lie within a voxel


# ---------------------------------------------------------------- training and evaluation


@pytest.mark.parametrize("task,keys", [("semseg", ("miou", "accuracy", "mean_class_accuracy")),
                                       ("insseg", ("ap", "ap50", "ap25")), ("det", ("map25", "map50"))])
def test_each_task_trains_and_is_scored_by_its_metric(ft_inputs, task, keys, tmp_path):
    m = _finetune(ft_inputs, task, "scratch", predictions_path=tmp_path / "p.npz")
    for k in keys:
        assert 0.0 <= m[k] <= 1.0, (k, m[k])
    assert m["primary"] == m[{"semseg": "miou", "insseg": "ap50", "det": "map25"}[task]]
    assert m["train_scenes"] == 2 and m["val_scenes"] == 1 and m["steps"] == 2 and np.isfinite(m["final_loss"])
    preds = np.load(tmp_path / "p.npz")
    gt = Dataset(ft_inputs["world"]).scene("val_0000").points()["semantic"]
    n_points = len(gt)
    if task == "semseg":  # every labelled point of the val scene is scored, by its voxel's prediction
        assert preds["val_0000/semantic"].shape == (n_points,)
        conf = np.asarray(m["confusion"])
        assert conf.sum() == (gt != 255).sum()
        assert np.array_equal(conf.sum(0), np.bincount(preds["val_0000/semantic"][gt != 255], minlength=20))
    elif task == "insseg":
        assert preds["val_0000/instance"].shape == (n_points,)
    else:
        assert preds["val_0000/boxes"].shape[1] == 6


def test_semseg_loss_falls_when_training_longer(ft_inputs):
    cfg = copy.deepcopy(ft_inputs["cfg"])
    cfg["finetune"].update(steps=24, batch_size=2, loss_points=1.0, class_balance=0.0)
    cfg["finetune"]["view"].update(crop=0.0, color_shift=0.0, color_noise=0.0, color_scale=0.0)  # the whole rooms
    m = _finetune(ft_inputs, "semseg", "scratch", cfg=cfg)
    assert m["loss_history"][-1] < m["loss_history"][0] - 0.3


def test_text4point_init_loads_the_pretrained_modules_and_the_prompt_starts_at_the_prompt_template(ft_inputs):
    from text4point.clip.load import load_clip
    from text4point.clip.prompt import PromptLearner
    from text4point.finetune.model import build
    from text4point.labels import SCANNET20

    cfg = ft_inputs["cfg"]
    ck = torch.load(ft_inputs["ckpts"]["text4point"], weights_only=True)
    handle = load_clip(cfg["clip"], "cpu")
    prompt = PromptLearner(handle.model, handle.tokenizer, SCANNET20.classes, 4)
    model = build(cfg, "semseg", "text4point", 20, ck, prompt)
    for name, value in model.backbone.state_dict().items():
        assert torch.equal(value, ck["model"][f"backbone.{name}"]), name
    for name, value in model.tqm.state_dict().items():
        assert torch.equal(value, ck["model"][f"tqm.{name}"]), name
    assert torch.equal(model.fc.weight, ck["model"]["fc.weight"])
    t = prompt()
    assert torch.allclose(t, handle.encode_text([f"point cloud of a {c}" for c in SCANNET20.classes]), atol=1e-5)
    assert [n for n, p in model.named_parameters() if n.startswith("prompt")] == ["prompt.ctx"]
    assert not any(p.requires_grad for p in handle.model.parameters())  # CLIP stays frozen


def test_text4point_finetuning_adds_the_score_map_loss_and_learns_the_prompt(ft_inputs):
    m = _finetune(ft_inputs, "semseg", "text4point")
    assert 0.0 <= m["miou"] <= 1.0 and np.isfinite(m["final_loss"])


def test_pointcontrast_init_loads_the_backbone(ft_inputs):
    from text4point.finetune.model import build

    ck = torch.load(ft_inputs["ckpts"]["pointcontrast"], weights_only=True)
    model = build(ft_inputs["cfg"], "insseg", "pointcontrast", 20, ck)
    for name, value in model.backbone.state_dict().items():
        assert torch.equal(value, ck["model"][f"backbone.{name}"]), name
    assert model.prompt is None and model.tqm is None


# ---------------------------------------------------------------- bad input


def test_checkpoint_of_another_backbone_or_variant_is_one_line(ft_inputs):
    from text4point.finetune.model import build

    ck = torch.load(ft_inputs["ckpts"]["pointcontrast"], weights_only=True)
    cfg = copy.deepcopy(ft_inputs["cfg"])
    cfg["pretrain"]["width"] = 16
    with pytest.raises(InputError) as e:
        build(cfg, "semseg", "pointcontrast", 20, ck, init_path="pc.pt")
    assert str(e.value).startswith("checkpoint pc.pt was made with backbone {'name': 'pointnet2', 'width': 8")
    assert "'width': 16" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="checkpoint pc.pt is of pre-training variant 'pointcontrast', not "
                                         "'image_contrast'"):
        build(ft_inputs["cfg"], "semseg", "image_contrast", 20, ck, init_path="pc.pt")


def test_text4point_checkpoint_with_another_clip_is_one_line(ft_inputs, tmp_path):
    from text4point.clip.load import build_model

    torch.manual_seed(123)
    other = tmp_path / "other_clip.pt"
    torch.save({"state_dict": build_model("t4p-tiny").state_dict()}, other)
    cfg = copy.deepcopy(ft_inputs["cfg"])
    cfg["clip"]["pretrained"] = str(other)
    with pytest.raises(InputError) as e:
        _finetune(ft_inputs, "semseg", "text4point", cfg=cfg)
    msg = str(e.value)
    assert "was pre-trained with CLIP t4p-tiny" in msg and "but params give t4p-tiny" in msg and "\n" not in msg


# ---------------------------------------------------------------- bad scenes


def test_an_empty_scene_or_labels_outside_the_label_set_are_one_line(tiny_world, tmp_path):
    import shutil

    from text4point.finetune.data import load_scene
    from text4point.scene import write_points

    root = tmp_path / "world"
    shutil.copytree(tiny_world, root)
    ds = Dataset(root)
    sid, other = ds.split("train")[:2]
    ply = ds.scene(sid).path / "points.ply"
    write_points(ply, np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), np.zeros(0, np.uint8),
                 np.zeros(0, np.int32))
    with pytest.raises(InputError, match=r"points.ply: vertex: expected at least one point \(empty scene\), got 0$"):
        load_scene(ds, sid, 0.1)
    pts = ds.scene(other).points()
    sem = pts["semantic"].copy()
    sem[0] = 40
    write_points(ds.scene(other).path / "points.ply", pts["xyz"], pts["rgb"], sem, pts["instance"])
    with pytest.raises(InputError, match=r"points.ply: field semantic: expected ids in \[0, 20\) or 255, got 40$"):
        load_scene(ds, other, 0.1)
