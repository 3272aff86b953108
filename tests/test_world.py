"""The offline world: determinism, geometry that agrees between frames and the scene, labels, layout."""

import itertools

import numpy as np
import pytest
import trimesh

from text4point.labels import IGNORE_LABEL, SCANNET20
from text4point.scene import Dataset, FrameDefect
from text4point.world.generate import generate_scene, scene_rng
from text4point.world.render import SCANNET_COLOR, SCANNET_DEPTH, scaled_intrinsics
from text4point.world.room import build_room


def test_layout_of_the_dataset(tiny_world, tiny_params):
    ds = Dataset(tiny_world)
    w = tiny_params["data"]["world"]
    assert ds.label_set is SCANNET20
    for split in ("clip", "train", "val"):
        assert len(ds.split(split)) == w["scenes"][split]
    assert set(ds.split("train")).isdisjoint(ds.split("val"))
    assert set(ds.split("clip")).isdisjoint(ds.split("train") + ds.split("val"))
    sc = ds.scene(ds.split("train")[0])
    assert sc.num_frames == w["frames_per_scene"]
    for sub in ("color", "depth", "pose", "label", "instance"):
        assert len(list((sc.path / sub).iterdir())) == w["frames_per_scene"]


def test_cameras_follow_scannet_with_different_colour_and_depth_intrinsics(tiny_world, tiny_params):
    sc = Dataset(tiny_world).scene("train_0000")
    color, depth = sc.cameras()
    w = tiny_params["data"]["world"]
    assert (color.width, color.height) == tuple(w["color_size"])
    assert (depth.width, depth.height) == tuple(w["depth_size"])
    assert color.K[0, 0] == pytest.approx(1170.187988 * 96 / 1296)
    assert depth.K[0, 0] == pytest.approx(571.623718 * 64 / 640)
    assert not np.allclose(color.K, depth.K)
    assert sc.color(1).shape == (72, 96, 3) and sc.color(1).dtype == np.uint8
    raw = sc.depth(1)
    assert raw.shape == (48, 64)
    # uint16 millimetres on disk: every depth is a whole number of millimetres
    assert np.allclose(raw * 1000, np.round(raw * 1000), atol=1e-3)


def test_invalid_poses_are_written_as_minus_inf_and_skipped(tiny_world, tiny_params):
    sc = Dataset(tiny_world).scene("train_0001")
    n = tiny_params["data"]["world"]["frames_per_scene"]
    bad = []
    for i in range(n):
        try:
            assert np.isfinite(sc.pose(i)).all()
        except FrameDefect as e:
            assert e.reason == "invalid_pose"
            bad.append(i)
    assert len(bad) == round(tiny_params["data"]["world"]["invalid_pose_fraction"] * n)
    assert np.isneginf(np.loadtxt(sc.frame_path("pose", bad[0]))).all()


def test_frames_back_project_onto_the_scene_surfaces(tiny_world):
    """Valid depth, back-projected with the depth intrinsics and the pose, lands on the mesh."""
    ds = Dataset(tiny_world)
    dists = []
    for sid in ds.split("train"):
        sc = ds.scene(sid)
        mesh = sc.mesh()
        tm = trimesh.Trimesh(mesh["vertices"], mesh["faces"], process=False)
        _, cam = sc.cameras()
        for i in range(sc.num_frames):
            try:
                pose = sc.pose(i)
            except FrameDefect:
                continue
            z = sc.depth(i)
            v, u = np.nonzero(z > 0)
            zz = z[v, u]
            pc = np.stack([(u - cam.K[0, 2]) * zz / cam.K[0, 0], (v - cam.K[1, 2]) * zz / cam.K[1, 1], zz], 1)
            pw = pc @ pose[:3, :3].T + pose[:3, 3]
            sel = np.random.default_rng(i).choice(len(pw), size=min(150, len(pw)), replace=False)
            _, d, _ = trimesh.proximity.closest_point(tm, pw[sel])
            dists.append(d)
    d = np.concatenate(dists)
    assert np.median(d) < 0.01, np.median(d)
    assert np.percentile(d, 95) < 0.05, np.percentile(d, 95)


def test_depth_has_kinect_like_holes_but_is_mostly_valid(tiny_world):
    sc = Dataset(tiny_world).scene("train_0000")
    valid = np.mean([(sc.depth(i) > 0).mean() for i in range(sc.num_frames)])
    assert 0.6 < valid < 0.999


def test_scene_cloud_labels_instances_and_boxes_agree(tiny_world):
    ds = Dataset(tiny_world)
    for sid in ds.split("train") + ds.split("val"):
        sc = ds.scene(sid)
        pts = sc.points()
        sem, ins, xyz = pts["semantic"], pts["instance"], pts["xyz"]
        assert ((sem < len(SCANNET20.classes)) | (sem == IGNORE_LABEL)).all()
        assert (sem == IGNORE_LABEL).any()  # the ceiling is unlabeled, as in ScanNet
        assert (ins[sem == IGNORE_LABEL] == 0).all()
        boxes = sc.boxes()
        assert boxes and all(b["semantic"] in SCANNET20.thing_ids for b in boxes)
        for b in boxes:
            m = ins == b["instance"]
            if not m.any():  # a tiny part may get no sample at low density
                continue
            assert (sem[m] == b["semantic"]).all()
            lo = np.array(b["center"]) - np.array(b["size"]) / 2 - 1e-3
            hi = np.array(b["center"]) + np.array(b["size"]) / 2 + 1e-3
            assert ((xyz[m] >= lo) & (xyz[m] <= hi)).all()


def test_label_images_match_the_labels_of_the_points_they_see(tiny_world):
    """A pixel's instance id is the instance of the surface the colour camera sees there."""
    sc = Dataset(tiny_world).scene("train_0000")
    lab, inst = sc.label(0), sc.instance(0)
    assert lab.shape == inst.shape == (72, 96)
    pts = sc.points()
    pairs = set(zip(pts["instance"].tolist(), pts["semantic"].tolist()))
    seen = set(zip(inst.ravel().tolist(), lab.ravel().tolist()))
    assert seen <= pairs | {(0, IGNORE_LABEL)}


def test_rooms_use_many_classes_without_interpenetration():
    classes = set()
    for i in range(40):
        room = build_room(scene_rng(7, "train", i), [[3.5, 7.5], [3.0, 6.5], [2.5, 3.0]], [7, 12])
        X, Y, H = room.size
        boxes = room.boxes
        classes |= {SCANNET20.classes[b["semantic"]] for b in boxes}
        mesh = room.mesh()
        classes |= {SCANNET20.classes[s] for s in np.unique(mesh["semantic"]) if s != IGNORE_LABEL}
        for b in boxes:
            lo = np.array(b["center"]) - np.array(b["size"]) / 2
            hi = lo + np.array(b["size"])
            assert (lo[:2] > -0.2).all() and hi[0] < X + 0.2 and hi[1] < Y + 0.2 and hi[2] <= H + 1e-6
        for a, b in itertools.combinations(boxes, 2):
            half_a, half_b = np.divide(a["size"], 2), np.divide(b["size"], 2)
            overlap = (np.minimum(np.add(a["center"], half_a), np.add(b["center"], half_b))
                       - np.maximum(np.subtract(a["center"], half_a), np.subtract(b["center"], half_b)))
            assert (overlap <= 1e-6).any(), (SCANNET20.classes[a["semantic"]], SCANNET20.classes[b["semantic"]])
    assert len(classes) >= 18, sorted(classes)
    assert {"wall", "floor", "door", "window", "chair", "table", "bed", "toilet"} <= classes


def test_generation_is_deterministic_per_seed(tmp_path, tiny_params):
    cfg = tiny_params["data"]["world"]
    a = generate_scene(tmp_path / "a", "train", 0, cfg, seed=0)
    b = generate_scene(tmp_path / "b", "train", 0, cfg, seed=0)
    c = generate_scene(tmp_path / "c", "train", 0, cfg, seed=1)
    for name in ("points.ply", "mesh.ply", "boxes.json", "color/2.jpg", "depth/2.png", "pose/2.txt", "label/2.png"):
        assert (tmp_path / "a/train_0000" / name).read_bytes() == (tmp_path / "b/train_0000" / name).read_bytes()
    assert (tmp_path / "a/train_0000/points.ply").read_bytes() != (tmp_path / "c/train_0000/points.ply").read_bytes()
    assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    assert c["room_size"] != a["room_size"]


def test_scaled_intrinsics_keep_the_principal_point_in_pixel_centres():
    K = scaled_intrinsics(SCANNET_COLOR, (1296, 968))
    assert K[0, 0] == pytest.approx(1170.187988) and K[0, 2] == pytest.approx(647.75)
    Kd = scaled_intrinsics(SCANNET_DEPTH, (320, 240))
    assert Kd[0, 2] == pytest.approx((319.5 + 0.5) / 2 - 0.5)
