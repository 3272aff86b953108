"""The correspondences stage: geometry, exact matches on a hand-built scene, labels on the tiny world,
bad frames, storage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from text4point import correspondences as C
from text4point import corrfiles
from text4point import geometry as G
from text4point.errors import InputError
from text4point.fsutil import write_json
from text4point.scene import Dataset, Scene, sampled_frames, write_image, write_matrix

CPU = torch.device("cpu")


def K4(fx, fy, cx, cy) -> np.ndarray:
    K = np.eye(4)
    K[0, 0], K[1, 1], K[0, 2], K[1, 2] = fx, fy, cx, cy
    return K


def rot(axis: str, deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    i, j = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}[axis]
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


# ---------------------------------------------------------------- geometry


def test_backproject_project_round_trip_across_intrinsics():
    rng = np.random.default_rng(0)
    Kd = K4(57.1, 57.3, 31.7, 23.4)[:3, :3]        # depth 64x48
    Kc = K4(117.0, 116.2, 64.9, 47.6)[:3, :3]      # colour 130x97: other size, focal and centre
    pose = np.eye(4)
    pose[:3, :3] = rot("z", 20) @ rot("y", -35) @ rot("x", 12)
    pose[:3, 3] = [1.3, -0.7, 2.1]
    depth = rng.uniform(0.5, 4.0, (48, 64)).astype(np.float32)
    depth[rng.random((48, 64)) < 0.2] = 0  # missing depth is skipped
    d, T = torch.from_numpy(depth), torch.tensor(pose, dtype=torch.float32)
    world, pix = G.backproject(d, torch.tensor(Kd), T)
    assert len(world) == int((depth > 0).sum())
    u, v = (pix % 64).numpy(), (pix // 64).numpy()

    # back into the depth camera: the same pixel and depth
    uv, z, inside = G.project(world, torch.tensor(Kd), T, 64, 48)
    assert inside.all()
    assert np.abs(uv.numpy() - np.stack([u, v], 1)).max() < 0.5
    assert np.abs(uv.numpy() - np.stack([u, v], 1)).max() < 1e-2
    assert np.allclose(z.numpy(), depth[v, u], atol=1e-4)

    # into the colour camera of the same pose: Kc Kd^-1 [u, v, 1], whatever the depth
    uvc, zc, inside_c = G.project(world, torch.tensor(Kc), T, 130, 97)
    h = np.stack([u, v, np.ones_like(u)], 1) @ (Kc @ np.linalg.inv(Kd)).T
    assert np.abs(uvc.numpy() - h[:, :2] / h[:, 2:]).max() < 0.5
    assert np.abs(uvc.numpy() - h[:, :2] / h[:, 2:]).max() < 1e-2
    assert np.allclose(zc.numpy(), depth[v, u], atol=1e-4)
    ui = np.floor(h[:, :2] / h[:, 2:] + 0.5)
    expect_inside = ((ui >= 0) & (ui < [130, 97])).all(1)
    assert (inside_c.numpy() == expect_inside).mean() > 0.999

    # points behind the camera are never inside
    _, zb, inside_b = G.project(torch.tensor([[0.0, 0.0, -1.0]]), torch.tensor(Kc), torch.eye(4), 130, 97)
    assert zb.item() < 0 and not inside_b.item()


def test_voxel_keys_are_world_aligned_and_shared_between_frames():
    pts = torch.tensor([[0.01, 0.01, 0.01], [0.04, 0.02, 0.03], [0.06, 0.01, 0.01], [-0.01, 0.0, 0.0],
                        [1000.03, -3.02, 7.47]])
    vp, keys, cluster = G.voxelize(pts, 0.05)
    assert len(keys) == 4 and bool((keys[1:] > keys[:-1]).all())  # sorted, unique
    assert cluster[0] == cluster[1] and len(set(cluster.tolist())) == 4
    assert torch.allclose(vp[cluster[0]], pts[:2].mean(0))
    # the same voxel seen in another "frame" (another point set) has the same key
    _, keys2, cl2 = G.voxelize(torch.tensor([[0.049, 0.001, 0.049], [1000.04, -3.03, 7.46]]), 0.05)
    assert keys2[cl2[0]] == keys[cluster[0]] and keys2[cl2[1]] == keys[cluster[4]]


def test_batched_voxelization_equals_frame_by_frame():
    """voxelize_frames gives per frame exactly geometry.voxelize's points and keys: dense tables over one or
    several groups of frames, the torch.unique fallback, empty frames and frames far from the origin."""
    from text4point.corrgeom import voxelize_frames

    rng = np.random.default_rng(3)
    frames = [rng.normal([0.3, -1.0, 2.0], 0.8, (500, 3)), np.zeros((0, 3)), rng.normal(0.0, 0.3, (300, 3)),
              rng.normal([900.0, -40.0, 3.0], 0.5, (200, 3)), rng.normal(0.0, 0.05, (7, 3))]
    frames = [torch.tensor(f, dtype=torch.float32) for f in frames]
    want = [G.voxelize(f, 0.05)[:2] for f in frames]
    pts = torch.cat(frames).T.contiguous()
    for max_cells in (1, 5000, 1 << 20, 1 << 24):
        vp, keys, sizes = voxelize_frames(pts, [len(f) for f in frames], 0.05, max_cells=max_cells)
        assert sizes == [len(k) for _, k in want]
        assert torch.equal(keys, torch.cat([k for _, k in want]))
        assert torch.equal(vp, torch.cat([p for p, _ in want]))


def test_color_zbuffer_gather_equals_scatter():
    """With coincident colour and depth sensors the splatting z-buffer is a gather; both give the same."""
    rng = np.random.default_rng(1)
    Kd, Kc = K4(57.2, 57.2, 31.6, 23.6), K4(117.0, 117.0, 64.8, 48.3)
    depth = rng.uniform(0.5, 4.0, (48, 64)).astype(np.float32)
    depth[rng.random((48, 64)) < 0.1] = 0
    pose = np.eye(4)
    pose[:3, :3] = rot("y", 30)
    pose[:3, 3] = [0.5, 1.0, -2.0]
    T = torch.tensor(pose, dtype=torch.float32)
    zs = C.color_zbuffer(torch.from_numpy(depth), torch.tensor(Kd[:3, :3]), T, torch.tensor(Kc[:3, :3]), T, 130, 97)
    c2d = C.coincident_color_to_depth(Kd, Kc, np.eye(4), np.eye(4), (64, 48), (130, 97))
    g = torch.cat([torch.from_numpy(depth).reshape(-1), torch.zeros(1)])[c2d]
    zg = torch.where(g > 0, g, torch.tensor(float("inf")))
    same = (zs == zg) | (torch.isfinite(zs) & torch.isfinite(zg) & ((zs - zg).abs() < 1e-4))
    assert same.float().mean() > 0.999
    # every colour pixel whose covering depth pixel is valid has a sample (no holes at 2:1)
    assert torch.isfinite(zs).float().mean() > 0.85
    moved = np.eye(4)
    moved[0, 3] = 0.03  # sensors 3 cm apart: no gather, the scatter is needed
    assert C.coincident_color_to_depth(Kd, Kc, np.eye(4), moved, (64, 48), (130, 97)) is None


# ---------------------------------------------------------------- a hand-built scene with known geometry

WALL_Z, BOX_Z = 2.1, 1.1
DEPTH_CAM = dict(size=(40, 30), fx=30.0, cx=19.5, cy=14.5)
# 2x the depth resolution, each depth pixel covering 2x2 colour pixels; the principal point is shifted by 0.3 colour
# pixels so that no point projects onto a colour pixel boundary (regular grids of voxel means otherwise do)
COLOR_CAM = dict(size=(80, 60), fx=60.0, cx=39.8, cy=29.8)
# box edges project to depth pixel boundaries (half-integer coordinates) in frame 0's depth image
BOX = dict(x0=(10 - 19) * BOX_Z / 30, x1=(34 - 19) * BOX_Z / 30, y0=(6 - 14) * BOX_Z / 30, y1=(22 - 14) * BOX_Z / 30)
CENTRES = [np.array([0.0, 0.0, 0.0]), np.array([0.2, 0.0, 0.0])]  # both inside the box's x/y range: no side faces


def surface_depth(centre: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """z of the first surface along rays centre + t * dirs (dirs[:, 2] == 1): the box front or the wall."""
    p = centre + BOX_Z * dirs
    on_box = (p[:, 0] >= BOX["x0"]) & (p[:, 0] <= BOX["x1"]) & (p[:, 1] >= BOX["y0"]) & (p[:, 1] <= BOX["y1"])
    return np.where(on_box, BOX_Z, WALL_Z)


def pixel_dirs(cam: dict) -> np.ndarray:
    w, h = cam["size"]
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    return np.stack([(u - cam["cx"]) / cam["fx"], (v - cam["cy"]) / cam["fx"], np.ones(u.shape)], -1).reshape(-1, 3)


def write_box_scene(root: Path) -> Scene:
    d = root / "box_scene"
    for sub in ("color", "depth", "pose", "intrinsic"):
        (d / sub).mkdir(parents=True)
    for name, cam in (("intrinsic_color", COLOR_CAM), ("intrinsic_depth", DEPTH_CAM)):
        write_matrix(d / "intrinsic" / f"{name}.txt", K4(cam["fx"], cam["fx"], cam["cx"], cam["cy"]))
    write_matrix(d / "intrinsic" / "extrinsic_color.txt", np.eye(4))
    write_matrix(d / "intrinsic" / "extrinsic_depth.txt", np.eye(4))
    for i, c in enumerate(CENTRES):
        pose = np.eye(4)
        pose[:3, 3] = c
        write_matrix(d / "pose" / f"{i}.txt", pose)
        z = surface_depth(c, pixel_dirs(DEPTH_CAM)).reshape(30, 40)
        write_image(d / "depth" / f"{i}.png", np.round(z * 1000).astype(np.uint16))
        zc = surface_depth(c, pixel_dirs(COLOR_CAM)).reshape(60, 80)
        rgb = np.where((zc == BOX_Z)[..., None], [200, 30, 30], [120, 120, 120]).astype(np.uint8)
        write_image(d / "color" / f"{i}.jpg", rgb, quality=100)
    write_json(d / "scene.json", {"scene_id": "box_scene", "num_frames": 2, "color_size": [80, 60],
                                  "depth_size": [40, 30], "depth_shift": 1000.0})
    return Scene(d)


BOX_CFG = dict(frame_skip=1, voxel_size=0.2, overlap_threshold=0.3, depth_tolerance=0.05, min_valid_depth=0.1)


def expected_voxel_points(frame: int) -> np.ndarray:
    """Independent numpy voxel means of a frame's back-projected depth (analytic depth)."""
    dirs = pixel_dirs(DEPTH_CAM)
    p = CENTRES[frame] + dirs * surface_depth(CENTRES[frame], dirs)[:, None]
    cell = p / BOX_CFG["voxel_size"]
    assert np.abs(cell - np.round(cell)).min() > 1e-3  # no point on a voxel boundary: keys are unambiguous
    keys, inv = np.unique(np.floor(cell).astype(np.int64), axis=0, return_inverse=True)
    sums = np.zeros((len(keys), 3))
    np.add.at(sums, inv.ravel(), p)
    return sums / np.bincount(inv.ravel())[:, None]


def sort_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(np.round(a, 3).T[::-1])]


def expected_matches(a: int, points_b: np.ndarray, tol: float) -> tuple[set, np.ndarray]:
    """Brute force: project into a's colour camera, compare with the analytic surface at that pixel's centre."""
    cam = points_b - CENTRES[a]  # identity rotations
    uv = COLOR_CAM["fx"] * cam[:, :2] / cam[:, 2:] + [COLOR_CAM["cx"], COLOR_CAM["cy"]]
    frac = uv + 0.5 - np.floor(uv + 0.5)
    assert np.minimum(frac, 1 - frac).min() > 1e-3  # no projection on a pixel boundary: rounding is unambiguous
    ui = np.floor(uv + 0.5).astype(int)
    inside = (ui[:, 0] >= 0) & (ui[:, 0] < 80) & (ui[:, 1] >= 0) & (ui[:, 1] < 60)
    out, visible = set(), np.zeros(len(points_b), bool)
    for k in np.nonzero(inside)[0]:
        u, v = ui[k]
        d = np.array([[(u - COLOR_CAM["cx"]) / COLOR_CAM["fx"], (v - COLOR_CAM["cy"]) / COLOR_CAM["fx"], 1.0]])
        surf = surface_depth(CENTRES[a], d)[0]
        assert abs(cam[k, 2] - surf) < 1e-4 or abs(cam[k, 2] - surf) > 0.5  # the depth test is unambiguous
        if abs(cam[k, 2] - surf) <= tol:
            out.add((int(v * 80 + u), k))
            visible[k] = True
    return out, inside & ~visible


def test_hand_built_scene_gives_exactly_the_expected_correspondences(tmp_path):
    scene = write_box_scene(tmp_path)
    r = C.process_scene(scene, BOX_CFG, CPU)
    st = r["stats"]
    assert st["frames_kept"] == 2 and sum(st["skipped"].values()) == 0
    assert r["frames"].tolist() == [0, 1]
    assert r["pairs"].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert r["overlap"][0] == 1.0 and r["overlap"][3] == 1.0 and r["overlap"][1] == r["overlap"][2] >= 0.3
    assert st["pairs"] == 1

    po = r["point_offsets"]
    for f in (0, 1):
        got = r["points"][po[f]:po[f + 1]].astype(np.float64)
        assert np.allclose(sort_rows(got), sort_rows(expected_voxel_points(f)), atol=1e-4)
        # every voxel point lies on one of the two surfaces; colours come from the colour image
        on_box = np.abs(got[:, 2] - BOX_Z) < 1e-4
        assert (on_box | (np.abs(got[:, 2] - WALL_Z) < 1e-4)).all()
        col = r["colors"][po[f]:po[f + 1]].astype(int)
        assert (np.abs(col[on_box] - [200, 30, 30]).max(1) < 40).mean() > 0.9

    hidden_checked = 0
    for q, (a, b) in enumerate(r["pairs"].tolist()):
        m = r["matches"][r["match_offsets"][q]:r["match_offsets"][q + 1]]
        pts_b = r["points"][po[b]:po[b + 1]].astype(np.float64)
        got = {(int(p), int(i) - int(po[b])) for p, i in m}
        assert ((m[:, 1] >= po[b]) & (m[:, 1] < po[b + 1])).all()
        want, hidden = expected_matches(a, pts_b, BOX_CFG["depth_tolerance"])
        assert got == want, f"pair {(a, b)}: {len(got ^ want)} differ"
        assert len(got) == len(m)  # no duplicates
        if a != b:
            # wall points of b that a sees the box in front of: inside a's image, never matched
            wall_hidden = hidden & (np.abs(pts_b[:, 2] - WALL_Z) < 1e-4)
            assert wall_hidden.sum() >= 1
            assert not (set(np.nonzero(wall_hidden)[0].tolist()) & {i for _, i in got})
            hidden_checked += int(wall_hidden.sum())
        else:
            assert len(got) == len(pts_b)  # a frame sees all of its own points here
    assert hidden_checked >= 2


def test_scatter_z_buffer_path_gives_the_same_correspondences(tmp_path, monkeypatch):
    """Sensors with different poses take the general scatter z-buffer; on this scene it equals the gather."""
    scene = write_box_scene(tmp_path)
    fast = C.process_scene(scene, BOX_CFG, CPU)
    monkeypatch.setattr(C, "coincident_color_to_depth", lambda *a, **k: None)
    general = C.process_scene(scene, BOX_CFG, CPU)
    for name in ("points", "pairs", "matches", "match_offsets", "colors"):
        assert np.array_equal(fast[name], general[name]), name


# ---------------------------------------------------------------- labels on the tiny world


def _self_label_agreement(scene: Scene, r: dict, labels_of) -> list[float]:
    out = []
    for q, (a, b) in enumerate(r["pairs"].tolist()):
        if a != b:
            continue
        m = r["matches"][r["match_offsets"][q]:r["match_offsets"][q + 1]]
        assert len(m) > 50
        pixel_inst = scene.instance(int(r["frames"][a])).reshape(-1)[m[:, 0]]
        out.append(float(np.mean(pixel_inst == labels_of(r["points"][m[:, 1]]))))
    return out


def test_self_matches_land_on_the_instance_of_their_point(tmp_path_factory, tiny_params):
    """Each frame's matches with itself: the colour pixel's instance equals the instance of the scene point
    nearest to the matched voxel point (world labels are used here only). The tiny world's scene cloud
    (60 points / m^2, ~13 cm apart) is too sparse for its nearest point to name the surface a 10 cm voxel
    mean lies on, so this uses the tiny world's config with a denser cloud (2000 / m^2)."""
    from scipy.spatial import cKDTree

    from text4point.world.generate import generate_world

    root = tmp_path_factory.mktemp("dense") / "world"
    generate_world(root, dict(tiny_params["data"]["world"], point_density=2000), tiny_params["seed"], progress=False)
    ds = Dataset(root)
    for sid in ds.split("train") + ds.split("val"):
        scene = ds.scene(sid)
        r = C.process_scene(scene, tiny_params["correspondences"], CPU)
        pts = scene.points()
        tree = cKDTree(pts["xyz"])
        agree = _self_label_agreement(scene, r, lambda p: pts["instance"][tree.query(p)[1]])
        assert len(agree) == r["stats"]["frames_kept"] >= 3
        assert min(agree) >= 0.95, (sid, agree)


def test_self_matches_land_on_the_instance_of_their_surface(tiny_world, tiny_params):
    """The same on the tiny world itself, labelled by the nearest mesh face (the exact surface labels)."""
    import trimesh

    ds = Dataset(tiny_world)
    for sid in ds.split("train") + ds.split("val"):
        scene = ds.scene(sid)
        r = C.process_scene(scene, tiny_params["correspondences"], CPU)
        mesh = scene.mesh()
        tm = trimesh.Trimesh(mesh["vertices"], mesh["faces"], process=False)
        agree = _self_label_agreement(scene, r, lambda p: mesh["instance"][trimesh.proximity.closest_point(tm, p)[2]])
        assert min(agree) >= 0.95, (sid, agree)


# ---------------------------------------------------------------- bad input


def test_bad_frames_are_skipped_and_counted(tiny_world, tiny_params, tmp_path):
    src = Dataset(tiny_world).scene(Dataset(tiny_world).split("train")[0])
    d = tmp_path / src.id
    shutil.copytree(src.path, d)
    scene = Scene(d)
    cfg = tiny_params["correspondences"]
    frames = sampled_frames(scene.num_frames, cfg["frame_skip"])
    assert len(frames) == 6
    base = C.process_scene(scene, cfg, CPU)["stats"]
    already = base["skipped"]["invalid_pose"]  # the tiny world loses tracking on some frames
    ok = [int(i) for i in C.process_scene(scene, cfg, CPU)["frames"]]
    assert already >= 1 and len(ok) == 6 - already >= 4
    f_pose, f_color, f_depth, f_gone = ok[:4]
    pose = np.loadtxt(d / "pose" / f"{f_pose}.txt")
    pose[1, 2] = np.nan
    write_matrix(d / "pose" / f"{f_pose}.txt", pose)
    (d / "color" / f"{f_color}.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    write_image(d / "depth" / f"{f_depth}.png", np.zeros((48, 64), np.uint16))
    (d / "depth" / f"{f_gone}.png").unlink()  # 6 colour frames, 5 depth frames

    r = C.process_scene(scene, cfg, CPU)
    st = r["stats"]
    assert st["skipped"] == {"missing_pose": 0, "invalid_pose": already + 1, "missing_image": 1, "corrupt_image": 1,
                             "bad_image_size": 0, "too_little_depth": 1, "color_depth_mismatch": 1}
    assert st["frames_total"] == 6 and st["frames_kept"] == 6 - already - 4
    assert set(r["frames"].tolist()) == set(ok[4:])
    assert len(r["point_offsets"]) == st["frames_kept"] + 1

    # a colour image of the wrong size
    write_image(d / "color" / f"{ok[4]}.jpg", np.zeros((10, 10, 3), np.uint8))
    assert C.process_scene(scene, cfg, CPU)["stats"]["skipped"]["bad_image_size"] == 1


def test_scene_without_usable_frames(tiny_world, tiny_params, tmp_path):
    src = Dataset(tiny_world).scene(Dataset(tiny_world).split("val")[0])
    shutil.copytree(src.path, tmp_path / src.id)
    for p in (tmp_path / src.id / "pose").iterdir():
        write_matrix(p, np.full((4, 4), -np.inf))
    scene = Scene(tmp_path / src.id)
    r = C.process_scene(scene, tiny_params["correspondences"], CPU)
    assert r["stats"]["frames_kept"] == 0 and r["stats"]["skipped"]["invalid_pose"] == 6
    corrfiles.write_scene_correspondences(r, tmp_path / "out")
    arrs = corrfiles.load_scene_correspondences(tmp_path / "out")
    assert len(arrs["points"]) == len(arrs["pairs"]) == len(arrs["matches"]) == 0
    assert arrs["point_offsets"].tolist() == [0] and arrs["match_offsets"].tolist() == [0]
    corrfiles.check_matches_scene(tmp_path / "out", scene)


def test_correspondences_that_do_not_match_their_scan_are_refused(tiny_world, tiny_params, tmp_path):
    ds = Dataset(tiny_world)
    a, b = ds.scene(ds.split("train")[0]), ds.scene(ds.split("train")[1])
    out = tmp_path / a.id
    corrfiles.write_scene_correspondences(C.process_scene(a, tiny_params["correspondences"], CPU), out)
    corrfiles.check_matches_scene(out, a)  # its own scan: fine

    def refused(corr_dir, scene, *words):
        with pytest.raises(InputError) as e:
            corrfiles.check_matches_scene(corr_dir, scene)
        msg = str(e.value)
        assert "\n" not in msg and all(w in msg for w in words), msg

    refused(out, b, str(out), "scene id")
    # the same scene id, but a scan with other images / fewer frames
    other = tmp_path / "other" / a.id
    shutil.copytree(a.path, other)
    meta = json.loads((other / "scene.json").read_text())
    write_json(other / "scene.json", dict(meta, color_size=[48, 36]))
    refused(out, Scene(other), "colour size")
    write_json(other / "scene.json", dict(meta, num_frames=2))
    refused(out, Scene(other), "frame ids")
    # damaged storage: a missing or inconsistent file is named
    np.save(out / "overlap.npy", np.zeros(1, np.float32))
    with pytest.raises(InputError, match="overlap.npy"):
        corrfiles.load_scene_correspondences(out)
    (out / "pairs.npy").unlink()
    with pytest.raises(InputError, match="pairs.npy: file not found"):
        corrfiles.load_scene_correspondences(out)


# ---------------------------------------------------------------- the stage and its storage


def test_run_stage_storage_round_trip(tiny_world, tiny_params, tmp_path):
    out = tmp_path / "corr"
    out.mkdir()
    metrics = C.run_stage(tiny_params, tiny_world, out, CPU, progress=False)
    ds = Dataset(tiny_world)
    ids = ds.split("train") + ds.split("val")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["scenes"] == ids and manifest["params"] == tiny_params["correspondences"]
    assert manifest["totals"]["scenes"] == len(ids) == metrics["scenes"]
    assert not any(s in ids for s in ds.split("clip"))
    assert sorted(p.name for p in out.iterdir()) == sorted(ids + ["manifest.json"])
    assert metrics["frames_total"] == metrics["frames_kept"] + metrics["frames_skipped"]
    assert metrics["skipped_invalid_pose"] >= 1 and metrics["matches"] > 0 and metrics["pairs"] >= 1
    assert len(metrics["per_scene"]) == len(ids)
    thr = tiny_params["correspondences"]["overlap_threshold"]
    for sid in ids:
        arrs = corrfiles.load_scene_correspondences(out / sid)
        corrfiles.check_matches_scene(out / sid, ds.scene(sid))
        assert all(isinstance(a, np.memmap) for a in arrs.values())
        assert arrs["frames"].dtype == np.int32 and arrs["pairs"].dtype == np.int32
        assert arrs["matches"].dtype == np.int32 and arrs["points"].dtype == np.float32
        assert arrs["colors"].dtype == np.uint8 and arrs["overlap"].dtype == np.float32
        assert arrs["point_offsets"].dtype == np.int64 and arrs["match_offsets"].dtype == np.int64
        F, po, mo = len(arrs["frames"]), arrs["point_offsets"], arrs["match_offsets"]
        pairs, ov = np.asarray(arrs["pairs"]), np.asarray(arrs["overlap"])
        assert po[-1] == len(arrs["points"]) and mo[-1] == len(arrs["matches"]) and len(mo) == len(pairs) + 1
        self_pairs = pairs[:, 0] == pairs[:, 1]
        assert sorted(pairs[self_pairs, 0].tolist()) == list(range(F))
        assert (ov[~self_pairs] >= thr).all() and (ov[self_pairs] == 1).all()
        assert {tuple(p) for p in pairs[~self_pairs]} == {(b, a) for a, b in pairs[~self_pairs]}  # both directions
        assert (np.lexsort(pairs.T[::-1]) == np.arange(len(pairs))).all()  # sorted
        W, H = json.loads((out / sid / "scene_stats.json").read_text())["color_size"]
        for q, (a, b) in enumerate(pairs):
            m = arrs["matches"][mo[q]:mo[q + 1]]
            assert ((m[:, 1] >= po[b]) & (m[:, 1] < po[b + 1])).all()
            assert ((m[:, 0] >= 0) & (m[:, 0] < W * H)).all()
        stats = next(s for s in metrics["per_scene"] if s["scene_id"] == sid)
        assert stats["pairs"] == int((~self_pairs).sum()) // 2 and stats["points"] == len(arrs["points"])
