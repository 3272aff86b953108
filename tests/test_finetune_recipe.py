"""The fine-tuning recipe of issue 12: input channels (text4point.point_features), crop views, class-balanced
losses, decoding at a subset of points, and the CPU fast paths of the PointNet++ backbone (each checked against
the reference computation it replaces)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from text4point.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


def _plane(n_side: int = 20, step: float = 0.05, z: float = 0.0) -> np.ndarray:
    u, v = np.meshgrid(np.arange(n_side) * step, np.arange(n_side) * step)
    return np.stack([u.ravel(), v.ravel(), np.full(u.size, z)], 1).astype(np.float32)


# ---------------------------------------------------------------- channels


def test_normals_shape_features_and_height_of_a_floor_and_a_wall():
    from text4point.point_features import floor_height, geometry_arrays, local_geometry, num_channels

    floor = _plane(z=0.3)
    wall = floor[:, [2, 0, 1]].copy()  # the plane x = 0.3
    normal, shape = local_geometry(floor, 16)
    assert normal.shape == (400, 3) and normal.dtype == np.float32
    np.testing.assert_allclose(np.abs(normal[:, 2]), 1.0, atol=1e-5)
    np.testing.assert_allclose(shape[:, 0] + shape[:, 1], 1.0, atol=1e-5)  # flat: no scattering
    np.testing.assert_allclose(shape[:, 2], 0.0, atol=1e-5)
    np.testing.assert_allclose(np.abs(local_geometry(wall, 16)[0][:, 0]), 1.0, atol=1e-5)
    line = np.stack([np.arange(50) * 0.05, np.zeros(50), np.zeros(50)], 1)
    np.testing.assert_allclose(local_geometry(line, 16)[1][:, 0], 1.0, atol=1e-5)  # linearity 1
    both = np.concatenate([floor, wall + np.array([0, 0, 1.0], np.float32)])
    g = geometry_arrays(both, ("rgb", "height", "normal", "shape64"))
    assert sorted(g) == ["height", "normal", "normal64", "shape", "shape64"]
    assert floor_height(both[:, 2]) == pytest.approx(0.3)
    np.testing.assert_allclose(g["height"][:400], 0.0, atol=1e-6)
    assert g["height"].max() == pytest.approx(1.95 - 0.3, abs=1e-5)
    assert geometry_arrays(both, ("height",), floor_z=0.0)["height"][0] == pytest.approx(0.3)
    assert num_channels(("rgb", "height", "normal", "shape64")) == 10
    assert local_geometry(floor[:2], 16)[0].tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]


def test_channels_rotate_the_signed_normal_before_its_absolute_value():
    from text4point.point_features import channels_of

    rgb = np.full((2, 3), 0.5, np.float32)
    arrays = {"height": np.array([0.0, 1.5], np.float32), "normal": np.array([[1, 0, 0], [0.6, 0.8, 0]], np.float32)}
    quarter = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], np.float32)
    x = channels_of(("rgb", "height", "normal"), rgb, arrays, quarter)
    assert x.shape == (2, 7)
    np.testing.assert_allclose(x[:, 3], [0.0, 1.5])
    np.testing.assert_allclose(x[:, 4:], [[0, 1, 0], [0.8, 0.6, 0]], atol=1e-6)


def test_unknown_or_repeated_channels_are_one_line():
    from text4point.point_features import check_channels

    with pytest.raises(InputError, match=r"^pretrain.channels: expected distinct names among \['rgb', 'height', "
                                         r"'normal', 'shape', 'normal64', 'shape64'\], got \['rgb', 'depth'\]$"):
        check_channels(["rgb", "depth"], "pretrain.channels")
    with pytest.raises(InputError, match=r"got \['rgb', 'rgb'\]$"):
        check_channels(["rgb", "rgb"])


# ---------------------------------------------------------------- views


def _cloud(channels=("rgb", "height", "normal")):
    from text4point.finetune.data import SceneCloud
    from text4point.point_features import geometry_arrays

    pos = np.concatenate([_plane(40, 0.1), _plane(40, 0.1)[:, [2, 0, 1]]]).astype(np.float32)  # floor + wall
    n = len(pos)
    inst = np.repeat([1, 2], n // 2)
    return SceneCloud(scene_id="s", pos=pos, rgb=np.full((n, 3), 0.5, np.float32), semantic=inst - 1,
                      instance=inst, boxes=np.array([[2, 2, 0, 4, 4, 0.1], [0, 2, 2, 0.1, 4, 4]], np.float32),
                      box_classes=np.array([3, 4]), box_instances=np.array([1, 2]), point_voxel=np.arange(n),
                      point_semantic=inst - 1, point_instance=inst, geometry=geometry_arrays(pos, channels),
                      channels=tuple(channels))


def test_a_crop_keeps_full_density_in_its_window_and_the_boxes_of_its_instances():
    from text4point.finetune.data import ViewConfig, augment, centred

    cloud = _cloud()
    view = ViewConfig(max_points=100000, crop=1.0, rotation="none", flip=False, scale=(1.0, 1.0))
    it = augment(cloud, np.random.default_rng(0), 0, view)
    extent = it["pos"].max(0) - it["pos"].min(0)
    assert extent[0] <= 1.0 + 1e-6 and extent[1] <= 1.0 + 1e-6
    assert 6 * 6 <= len(it["pos"]) <= 11 * 11 + 11 * 40  # a 1 m window of 10 cm voxels, the wall at full height
    assert it["x"].shape == (len(it["pos"]), 7)
    assert set(it["box_instances"].tolist()) == set(it["instance"].tolist())
    full = centred(cloud)
    assert full["x"].shape == (len(cloud.pos), 7)
    # the evaluation view and an unaugmented whole-room view carry the same channels
    whole = augment(cloud, np.random.default_rng(0), 10 ** 6,
                    ViewConfig(max_points=10 ** 6, rotation="none", flip=False, scale=(1.0, 1.0)))
    order = np.lexsort(whole["pos"].T)
    np.testing.assert_allclose(whole["x"][order], full["x"][np.lexsort(full["pos"].T)], atol=1e-6)


def test_view_params_are_checked():
    from text4point.finetune.data import ViewConfig, view_config

    from text4point import params

    ft = params.validate({"finetune": {"max_points": 500, "view": {"crop": 2.0, "scale": [0.8, 1.2]}}},
                         sections_only=True)["finetune"]
    assert view_config(ft) == ViewConfig(max_points=500, crop=2.0, scale=(0.8, 1.2), color_shift=0.1,
                                         color_noise=0.03, color_scale=0.2)
    with pytest.raises(InputError, match=r"^finetune.view.rotation: expected one of quarter, free, none, got 'x'$"):
        view_config(dict(ft, view=dict(ft["view"], rotation="x")))


# ---------------------------------------------------------------- losses


def test_class_balance_weights_follow_the_inverse_frequency_power():
    from text4point.tasks._base import class_balance_weights
    from text4point.tasks.semseg import SemanticHead

    labels = np.array([0] * 90 + [1] * 10 + [255] * 5)
    w = class_balance_weights(labels, 3, 0.5)
    assert w[2] == 0.0 and float(w[1] / w[0]) == pytest.approx(3.0, rel=1e-5)
    assert float(0.9 * w[0] + 0.1 * w[1]) == pytest.approx(1.0, rel=1e-5)
    head = SemanticHead(4, 3)
    logits = torch.randn(5, 3)
    lab = torch.tensor([0, 0, 1, 1, 255])
    plain = head.loss(logits, lab)
    head.class_weights = torch.tensor([1.0, 3.0, 0.0])
    ce = torch.nn.functional.cross_entropy(logits[:4], lab[:4], reduction="none")
    assert float(head.loss(logits, lab)) == pytest.approx(float((ce * torch.tensor([1, 1, 3, 3.0])).sum() / 8))
    assert float(plain) == pytest.approx(float(ce.mean()))
    with pytest.raises(ValueError, match="^labels: expected at least one labelled point, got none$"):
        class_balance_weights(np.full(4, 255), 3)


# ---------------------------------------------------------------- backbone fast paths


def _clouds(n=3000, clouds=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(n, 3, generator=g) * 2
    batch = torch.sort(torch.randint(clouds, (n,), generator=g)).values
    return pos, batch


def test_sparse_interpolation_equals_knn_interpolate():
    from torch_geometric.nn import knn_interpolate

    from text4point.models.pointnet2 import interpolate

    pos_f, batch_f = _clouds(500, 3)
    pos_c, batch_c = pos_f[::4], batch_f[::4]
    x = torch.randn(len(pos_c), 8, requires_grad=True)
    ours = interpolate(x, pos_c, pos_f, batch_c, batch_f, 3)
    ref = knn_interpolate(x, pos_c, pos_f, batch_c, batch_f, k=3)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    g1, = torch.autograd.grad(ours.square().sum(), x)
    g2, = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(g1, g2, atol=1e-4, rtol=1e-4)


def test_segment_max_set_abstraction_equals_pointnetconv():
    import torch_cluster
    from torch_geometric.nn import MLP

    from text4point.models.pointnet2 import SetAbstraction

    pos, batch = _clouds()
    x = torch.randn(len(pos), 5)
    sa = SetAbstraction(0.25, 0.2, 32, MLP([8, 16, 16, 32])).eval()
    out, p, b, idx = sa(x, pos, batch)
    row, col = torch_cluster.radius(pos, pos[idx], 0.2, batch, batch[idx], max_num_neighbors=32)
    ref = sa.conv((x, x[idx]), (pos, pos[idx]), torch.stack([col, row]))
    torch.testing.assert_close(out, ref)
    assert torch.equal(p, pos[idx]) and torch.equal(b, batch[idx])


def test_decoding_a_subset_gives_those_rows_of_the_full_decoding():
    from text4point.models import build_backbone

    torch.manual_seed(0)
    net = build_backbone("pointnet2", in_channels=7, width=8, bottleneck_dim=16, out_dim=8,
                         radii=(0.2, 0.4, 0.8)).eval()
    pos, batch = _clouds(2000, 2)
    x = torch.rand(len(pos), 7)
    with torch.no_grad():
        enc = net.encode(x, pos, batch)
        full = net.decode(enc, enc.h)
        rows = torch.arange(0, len(pos), 7)
        torch.testing.assert_close(net.decode(enc, enc.h, rows), full[rows])
        torch.testing.assert_close(net.decode(enc, enc.h, enc.samples[0]), full[enc.samples[0]])
        assert torch.equal(pos[enc.samples[0]], enc.poss[1])


def test_cpu_fps_is_deterministic_and_covers_like_the_kdtree_sampler():
    import fpsample
    from scipy.spatial import cKDTree

    from text4point.models.sampling import _cpu_fps

    pts = np.random.default_rng(0).random((5000, 3)).astype(np.float32)
    ours = _cpu_fps(pts, 1250)
    ref = fpsample.bucket_fps_kdtree_sampling(pts, 1250, start_idx=0)
    assert len(set(ours.tolist())) == 1250 and np.array_equal(ours, _cpu_fps(pts, 1250))
    cover = [cKDTree(pts[s]).query(pts)[0].max() for s in (ours, ref)]
    assert cover[0] == pytest.approx(cover[1], rel=0.1)
    assert sorted(_cpu_fps(pts[:3], 2).tolist()) == sorted(fpsample.bucket_fps_kdtree_sampling(
        pts[:3], 2, start_idx=0).tolist())  # the smallest cloud (kd-line height 1)
