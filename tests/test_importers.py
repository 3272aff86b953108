"""Tests of the real-data importers against small files written from the published formats (spec_files)."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import spec_files as spec  # noqa: E402

from text4point.errors import InputError  # noqa: E402
from text4point.importers import fetch  # noqa: E402
from text4point.importers.fetch import MARKER, resolve_source  # noqa: E402
from text4point.importers.s3dis import import_s3dis  # noqa: E402
from text4point.importers.scannet import import_scannet  # noqa: E402
from text4point.importers.sens import SensFile  # noqa: E402
from text4point.labels import IGNORE_LABEL, S3DIS13, SCANNET20  # noqa: E402
from text4point.scene import Dataset, read_image, read_matrix  # noqa: E402


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


def scannet_cfg(path, **kw) -> dict:
    return {"path": str(path), "url": None, "sha256": None, "frame_skip": 3, "max_scenes": None, **kw}


def s3dis_cfg(path, **kw) -> dict:
    return {"path": str(path), "url": None, "sha256": None, "val_area": 5, "max_rooms": None, **kw}


def expected_box(xyz: np.ndarray) -> tuple[list[float], list[float]]:
    lo, hi = xyz.min(0).astype(np.float64), xyz.max(0).astype(np.float64)
    return list((lo + hi) / 2), list(hi - lo)


# ================================================================ .sens

def test_sens_header_and_frames(tmp_path):
    frames = spec.make_frames(5, seed=3, invalid=(2,))
    header = spec.write_sens(tmp_path / "a.sens", frames, sensor_name="StructureSensor", depth_shift=1000.0)
    with SensFile(tmp_path / "a.sens") as s:
        assert s.version == 4 and s.sensor_name == "StructureSensor"
        for key in ("intrinsic_color", "extrinsic_color", "intrinsic_depth", "extrinsic_depth"):
            assert getattr(s, key).dtype == np.float32
            np.testing.assert_array_equal(getattr(s, key), header[key].astype(np.float32))
        for key in ("color_compression_type", "depth_compression_type", "color_width", "color_height",
                    "depth_width", "depth_height", "num_frames"):
            assert getattr(s, key) == header[key], key
        assert s.depth_shift == 1000.0 and len(s) == 5
        assert s.color_size == spec.COLOR_SIZE and s.depth_size == spec.DEPTH_SIZE
        got = list(s)
        assert [f.index for f in got] == list(range(5))
        # read the payloads out of order, after iteration finished: access is by offset
        for fr, want in reversed(list(zip(got, frames))):
            np.testing.assert_array_equal(fr.camera_to_world, want["pose"])
            assert fr.timestamp_color == want["timestamp_color"]
            assert fr.timestamp_depth == want["timestamp_depth"]
            assert fr.color_bytes() == want["color_jpeg"]
            assert fr.color_size_bytes == len(want["color_jpeg"])
            depth = fr.depth()
            assert depth.dtype == np.uint16 and depth.shape == (12, 16)
            np.testing.assert_array_equal(depth, want["depth"])
            color = fr.color()
            assert color.shape == (24, 32, 3) and color.dtype == np.uint8
        assert np.isneginf(got[2].camera_to_world).all()


def test_sens_wrong_version(tmp_path):
    spec.write_sens(tmp_path / "v3.sens", spec.make_frames(1), version=3)
    with pytest.raises(InputError) as e:
        SensFile(tmp_path / "v3.sens")
    assert one_line(e) == f"{tmp_path / 'v3.sens'}: version: expected 4, got 3"


def test_sens_truncated_frame(tmp_path):
    frames = spec.make_frames(3)
    spec.write_sens(tmp_path / "t.sens", frames, truncate=10)
    with SensFile(tmp_path / "t.sens") as s:
        it = iter(s)
        next(it), next(it)
        with pytest.raises(InputError) as e:
            next(it)
    msg = one_line(e)
    assert msg.startswith(f"{tmp_path / 't.sens'}: frame 2: truncated")
    depth_len = len(zlib.compress(frames[2]["depth"].astype("<u2").tobytes()))
    need = 96 + len(frames[2]["color_jpeg"]) + depth_len
    assert f"expected {need} bytes" in msg and f"only {need - 10} bytes left" in msg
    # a header cut inside a frame header
    spec.write_sens(tmp_path / "h.sens", frames[:1], truncate=len(frames[0]["color_jpeg"]) + depth_len + 50)
    with SensFile(tmp_path / "h.sens") as s, pytest.raises(InputError) as e:
        list(s)
    assert "frame 0: truncated: expected 96 bytes" in one_line(e) and "only 46 bytes left" in str(e.value)


@pytest.mark.parametrize("kw,field", [({"color_compression": 7}, "color_compression_type"),
                                      ({"depth_compression": 2}, "depth_compression_type")])
def test_sens_unknown_compression(tmp_path, kw, field):
    spec.write_sens(tmp_path / "c.sens", spec.make_frames(1), **kw)
    with pytest.raises(InputError) as e:
        SensFile(tmp_path / "c.sens")
    msg = one_line(e)
    assert msg.startswith(f"{tmp_path / 'c.sens'}: {field}: expected")
    assert msg.endswith(f"got {list(kw.values())[0]}")


# ================================================================ ScanNet

# hand-derived labels of spec.scannet_scene(): segments 5 chair, 7 wall, 9+13 kitchen counter (-> counter),
# 11 "mystery thing" (not in the tsv), 15 ceiling (not a benchmark class), 20 unannotated
CHAIR, WALL, COUNTER = SCANNET20.index("chair"), SCANNET20.index("wall"), SCANNET20.index("counter")
IGN = IGNORE_LABEL
VERTEX_SEM = [CHAIR] * 3 + [WALL] * 3 + [COUNTER, COUNTER, IGN, IGN, IGN, IGN]
VERTEX_INST = [1, 1, 1, 2, 2, 2, 3, 3, 5, 6, 0, 0]
# faces [0,1,2] [2,3,4] [0,3,6] [3,4,5] [6,7,8] [9,10,11]: majority of 3, all-different -> first vertex
FACE_SEM = [CHAIR, WALL, CHAIR, WALL, COUNTER, IGN]
FACE_INST = [1, 2, 1, 2, 3, 0]
# NYU40 labels a labels.ply would hold, with vertex 11 disagreeing (chair instead of unannotated)
LABELS_PLY = np.array([5, 5, 5, 1, 1, 1, 12, 12, 0, 22, 0, 5])


def aligned(xyz: np.ndarray, align: np.ndarray) -> np.ndarray:
    """ScanNet's axis alignment as VoteNet applies it: [x y z 1] @ A^T, computed in float64."""
    h = np.concatenate([xyz.astype(np.float64), np.ones((len(xyz), 1))], 1)
    return (h @ np.asarray(align).T)[:, :3].astype(np.float32)


@pytest.fixture(scope="module")
def scannet_import(tmp_path_factory):
    root = tmp_path_factory.mktemp("scannet_release")
    scenes = {"scene0000_00": spec.scannet_scene(seed=0), "scene0001_00": spec.scannet_scene(seed=1)}
    spec.write_scannet_release(root, scenes, train=["scene0000_00", "scene0002_00"], val=["scene0001_00"],
                               labels_ply={"scene0000_00": LABELS_PLY})
    out = tmp_path_factory.mktemp("scannet_out")
    stats = import_scannet(scannet_cfg(root), out, tmp_path_factory.mktemp("dl"), progress=False)
    return scenes, out, stats


def test_scannet_dataset_and_stats(scannet_import):
    scenes, out, stats = scannet_import
    recorded = {"scenes": {"clip": 0, "train": 1, "val": 1}, "frames": 6,
                "defects": {"invalid_pose": 2, "labels_ply_disagreement": 1, "missing_scene": 1,
                            "unknown_label": 2, "unknown_segment": 2}}  # segment 99 of each scene's counter
    assert stats == {**recorded, "scenes_imported": 2, "scenes_reused": 0}
    ds = Dataset(out)
    assert ds.label_set is SCANNET20 and ds.meta["source"] == "scannet"
    assert ds.split("train") == ["scene0000_00"] and ds.split("val") == ["scene0001_00"] and ds.split("clip") == []
    assert ds.meta["import"] == recorded and ds.meta["frame_skip"] == 3
    assert not list((out / "scenes").glob(".*")), "no temporary directories left"


@pytest.mark.parametrize("sid", ["scene0000_00", "scene0001_00"])
def test_scannet_scene_points_mesh_boxes(scannet_import, sid):
    scenes, out, _ = scannet_import
    want = scenes[sid]
    xyz = aligned(want["xyz"], want["axis_alignment"])
    sc = Dataset(out).scene(sid)
    assert sc.meta["axis_alignment"] == want["axis_alignment"].tolist()
    pts = sc.points()
    np.testing.assert_array_equal(pts["xyz"], xyz)
    np.testing.assert_array_equal(pts["rgb"], want["rgb"])
    assert pts["semantic"].tolist() == VERTEX_SEM
    assert pts["instance"].tolist() == VERTEX_INST
    mesh = sc.mesh()
    np.testing.assert_array_equal(mesh["vertices"], xyz)
    np.testing.assert_array_equal(mesh["colors"], want["rgb"])
    np.testing.assert_array_equal(mesh["faces"], want["faces"])
    assert mesh["semantic"].tolist() == FACE_SEM and mesh["instance"].tolist() == FACE_INST
    boxes = sc.boxes()
    # thing instances: chair (1, vertices 0-2) and counter (3, vertices 6-7); wall and ignored ones have none
    assert [(b["instance"], b["semantic"], b["class"]) for b in boxes] == [(1, CHAIR, "chair"),
                                                                            (3, COUNTER, "counter")]
    for b, rows in zip(boxes, ([0, 1, 2], [6, 7])):  # boxes of the aligned points
        center, size = expected_box(xyz[rows])
        assert b["center"] == pytest.approx(center, abs=1e-5) and b["size"] == pytest.approx(size, abs=1e-5)


@pytest.mark.parametrize("sid", ["scene0000_00", "scene0001_00"])
def test_scannet_scene_frames(scannet_import, sid):
    scenes, out, _ = scannet_import
    frames, align = scenes[sid]["frames"], scenes[sid]["axis_alignment"]
    sc = Dataset(out).scene(sid)
    assert {k: sc.meta[k] for k in ("scene_id", "num_frames", "frame_ids", "color_size", "depth_size",
                                    "depth_shift", "source", "has_mesh", "source_num_frames")} == {
        "scene_id": sid, "num_frames": 3, "frame_ids": [0, 3, 6], "color_size": [32, 24],
        "depth_size": [16, 12], "depth_shift": 1000.0, "source": "scannet", "has_mesh": True,
        "source_num_frames": 7}
    assert sc.frame_ids == [0, 3, 6] and sc.sampled_frames(2) == [0, 6]
    cam = spec.default_camera()
    for name in ("intrinsic_color", "intrinsic_depth", "extrinsic_color", "extrinsic_depth"):
        np.testing.assert_allclose(read_matrix(sc.path / "intrinsic" / f"{name}.txt"), cam[name], rtol=1e-7)
    color_cam, depth_cam = sc.cameras()
    assert (color_cam.width, color_cam.height, depth_cam.width, depth_cam.height) == (32, 24, 16, 12)
    for src in [0, 3, 6]:  # files named by their index in the .sens, as SensReader names them
        assert sc.frame_path("color", src).read_bytes() == frames[src]["color_jpeg"]  # not re-encoded
        depth = read_image(sc.frame_path("depth", src), dtype=np.uint16)
        np.testing.assert_array_equal(depth, frames[src]["depth"])
        pose = read_matrix(sc.frame_path("pose", src))
        if src == 3:  # lost tracking: the -inf pose is kept as written
            assert np.isneginf(pose).all()
            assert sc.frame_path("pose", src).read_text().split() == ["-inf"] * 16
        else:  # camera-to-world in the aligned frame
            np.testing.assert_allclose(pose, align @ frames[src]["pose"].astype(np.float64), rtol=1e-12, atol=0)
    assert sorted(p.name for p in (sc.path / "color").iterdir()) == ["0.jpg", "3.jpg", "6.jpg"]
    assert sorted(p.name for p in (sc.path / "depth").iterdir()) == ["0.png", "3.png", "6.png"]
    assert sorted(p.name for p in (sc.path / "pose").iterdir()) == ["0.txt", "3.txt", "6.txt"]


def test_scannet_aligned_points_project_as_the_recorded_ones(scannet_import):
    """A vertex seen from a frame's camera: the same camera coordinates before and after the alignment."""
    scenes, out, _ = scannet_import
    want = scenes["scene0000_00"]
    sc = Dataset(out).scene("scene0000_00")
    pts = sc.points()["xyz"].astype(np.float64)
    raw = want["xyz"].astype(np.float64)
    for src in (0, 6):
        in_cam_raw = np.linalg.solve(want["frames"][src]["pose"].astype(np.float64),
                                     np.concatenate([raw, np.ones((12, 1))], 1).T)
        in_cam = np.linalg.solve(sc.pose(src), np.concatenate([pts, np.ones((12, 1))], 1).T)
        np.testing.assert_allclose(in_cam, in_cam_raw, atol=2e-5)


def test_scannet_splits_subdir_max_scenes_frame_skip(tmp_path):
    scenes = {s: spec.scannet_scene(seed=k, n_frames=4, invalid=()) for k, s in
              enumerate(["scene0000_00", "scene0000_01", "scene0001_00"])}
    root = spec.write_scannet_release(tmp_path / "rel", scenes, train=["scene0000_01", "scene0000_00"],
                                      val=["scene0001_00"], splits_subdir=True)
    stats = import_scannet(scannet_cfg(root, frame_skip=1, max_scenes=1), tmp_path / "out", tmp_path / "dl",
                           progress=False)
    assert stats["scenes"] == {"clip": 0, "train": 1, "val": 1} and stats["frames"] == 8
    ds = Dataset(tmp_path / "out")
    assert ds.split("train") == ["scene0000_01"]
    assert ds.scene("scene0000_01").meta["frame_ids"] == [0, 1, 2, 3]
    assert "invalid_pose" not in stats["defects"]


def test_scannet_label_id_outside_mapping(tmp_path):
    tsv_rows = spec.TSV_ROWS + [("lamp", 99)]
    root = spec.write_scannet_release(tmp_path / "rel", {"scene0000_00": spec.scannet_scene()},
                                      train=["scene0000_00"], val=["scene0000_00"], tsv_rows=tsv_rows)
    with pytest.raises(InputError) as e:
        import_scannet(scannet_cfg(root), tmp_path / "out", tmp_path / "dl", progress=False)
    tsv = root / "scannetv2-labels.combined.tsv"
    assert one_line(e) == f"{tsv}: row 7 (raw_category 'lamp'): nyu40id: expected an integer in 0..40, got '99'"
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_scannet_missing_split_lists(tmp_path):
    root = spec.write_scannet_release(tmp_path / "rel", {"scene0000_00": spec.scannet_scene()},
                                      train=["scene0000_00"], val=["scene0000_00"])
    (root / "scannetv2_train.txt").unlink()
    with pytest.raises(InputError) as e:
        import_scannet(scannet_cfg(root), tmp_path / "out", tmp_path / "dl", progress=False)
    msg = one_line(e)
    assert msg.startswith(f"{root / 'scannetv2_train.txt'}: file not found")
    assert "splits" in msg


def test_scannet_missing_scene_file(tmp_path):
    root = spec.write_scannet_release(tmp_path / "rel", {"scene0000_00": spec.scannet_scene()},
                                      train=["scene0000_00"], val=["scene0000_00"])
    segs = root / "scans" / "scene0000_00" / "scene0000_00_vh_clean_2.0.010000.segs.json"
    segs.write_text(json.dumps({"segIndices": [1, 2, 3]}))
    with pytest.raises(InputError) as e:
        import_scannet(scannet_cfg(root), tmp_path / "out", tmp_path / "dl", progress=False)
    assert one_line(e) == f"{segs}: segIndices: expected 12 entries (one per vertex of the mesh), got '3 entries'"
    segs.unlink()
    with pytest.raises(InputError) as e:
        import_scannet(scannet_cfg(root), tmp_path / "out", tmp_path / "dl", progress=False)
    assert one_line(e).startswith(f"{segs}: file not found")
    assert not (tmp_path / "out" / "scenes" / "scene0000_00").exists()


def test_scannet_nothing_configured(tmp_path):
    cfg = {"path": None, "url": None, "sha256": None, "frame_skip": 10, "max_scenes": None}
    with pytest.raises(InputError) as e:
        import_scannet(cfg, tmp_path / "out", tmp_path / "dl", progress=False)
    assert one_line(e) == ("data.scannet.path is not set: set data.scannet.path to your local copy of ScanNet v2 "
                           "(or data.scannet.url to the URL you were given after accepting its licence)")


# ================================================================ S3DIS

ROOM_OBJECTS = [("wall", 1, 7), ("chair", 2, 5), ("table", 1, 6), ("chair", 1, 4), ("stairs", 1, 3)]
# imported order: (class, k) with stairs -> clutter: chair_1, chair_2, stairs_1 (clutter), table_1, wall_1
ROOM_ORDER = [("chair", 1), ("chair", 2), ("stairs", 1), ("table", 1), ("wall", 1)]


def s3dis_release(root: Path) -> dict:
    objs = {(c, k): spec.s3dis_points(n, seed=10 * k + n) for c, k, n in ROOM_OBJECTS}
    for room in ("office_1", "office_10", "office_2"):
        spec.write_s3dis_room(root, 1, room, [(c, k, objs[c, k]) for c, k, _ in ROOM_OBJECTS])
    spec.write_s3dis_room(root, 2, "WC_1", [("floor", 1, objs["chair", 1])])
    hallway = [("ceiling", 1, spec.s3dis_points(6, seed=1)), ("door", 1, spec.s3dis_points(5, seed=2))]
    spec.write_s3dis_room(root, 5, "hallway_6", hallway,
                          bad_lines={"ceiling_1.txt": [(2, "-1.234 2.345 1.111 185 187 1\x1082"), (4, "1.0 2.0")]})
    return {"objs": objs, "hallway": hallway}


@pytest.fixture(scope="module")
def s3dis_import(tmp_path_factory):
    src = tmp_path_factory.mktemp("s3dis_src")
    written = s3dis_release(src / "Stanford3dDataset_v1.2_Aligned_Version")
    archive = src / "s3dis.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / "Stanford3dDataset_v1.2_Aligned_Version", arcname="Stanford3dDataset_v1.2_Aligned_Version")
    out, dl = tmp_path_factory.mktemp("s3dis_out"), tmp_path_factory.mktemp("dl")
    stats = import_s3dis(s3dis_cfg(archive), out, dl, progress=False)
    return written, out, stats, dl


def test_s3dis_splits_and_stats(s3dis_import):
    _, out, stats, dl = s3dis_import
    assert (dl / "s3dis" / MARKER).is_file()
    ds = Dataset(out)
    assert ds.label_set is S3DIS13 and ds.meta["source"] == "s3dis"
    assert ds.split("train") == ["Area_1_office_1", "Area_1_office_2", "Area_1_office_10", "Area_2_WC_1"]
    assert ds.split("val") == ["Area_5_hallway_6"] and ds.split("clip") == []
    assert stats["scenes"] == {"clip": 0, "train": 4, "val": 1}
    assert stats["defects"] == {"bad_lines": 2}
    assert stats["bad_line_files"] == {"Area_5/hallway_6/Annotations/ceiling_1.txt": 2}
    assert stats["points"] == 3 * 25 + 4 + 11


def test_s3dis_room_points_labels_instances_boxes(s3dis_import):
    written, out, _, _ = s3dis_import
    sc = Dataset(out).scene("Area_1_office_10")
    meta = dict(sc.meta)
    record = meta.pop("import")
    assert meta == {"scene_id": "Area_1_office_10", "num_frames": 0, "frame_ids": [], "source": "s3dis",
                    "has_mesh": False, "area": 1, "room": "office_10"}
    assert record["stats"] == {"points": 25, "bad_line_files": {}}
    assert sorted(record["key"]["files"]) == sorted(f"{c}_{k}.txt" for c, k, _ in ROOM_OBJECTS) and sc.frame_ids == []
    want = np.concatenate([written["objs"][o] for o in ROOM_ORDER])
    pts = sc.points()
    np.testing.assert_array_equal(pts["xyz"], want[:, :3].astype(np.float32))
    np.testing.assert_array_equal(pts["rgb"], want[:, 3:].astype(np.uint8))
    sizes = [len(written["objs"][o]) for o in ROOM_ORDER]
    sem = [S3DIS13.index(c) for c in ("chair", "chair", "clutter", "table", "wall")]
    assert pts["semantic"].tolist() == np.repeat(sem, sizes).tolist()
    assert pts["instance"].tolist() == np.repeat([1, 2, 3, 4, 5], sizes).tolist()
    boxes = sc.boxes()
    # wall is not a thing class
    assert [(b["instance"], b["class"]) for b in boxes] == [(1, "chair"), (2, "chair"), (3, "clutter"),
                                                            (4, "table")]
    for b, o in zip(boxes, ROOM_ORDER):
        center, size = expected_box(written["objs"][o][:, :3].astype(np.float32))
        assert b["center"] == pytest.approx(center, abs=1e-5) and b["size"] == pytest.approx(size, abs=1e-5)


def test_s3dis_bad_lines_skipped(s3dis_import):
    written, out, _, _ = s3dis_import
    pts = Dataset(out).scene("Area_5_hallway_6").points()
    ceiling, door = written["hallway"][0][2], written["hallway"][1][2]
    want = np.concatenate([ceiling, door])  # (class, k) order: ceiling_1, door_1; bad lines dropped
    np.testing.assert_array_equal(pts["xyz"], want[:, :3].astype(np.float32))
    np.testing.assert_array_equal(pts["rgb"], want[:, 3:].astype(np.uint8))
    assert pts["semantic"].tolist() == [S3DIS13.index("ceiling")] * 6 + [S3DIS13.index("door")] * 5
    assert pts["instance"].tolist() == [1] * 6 + [2] * 5


def test_s3dis_unknown_class(tmp_path):
    root = tmp_path / "s3dis"
    spec.write_s3dis_room(root, 1, "office_1", [("chair", 1, spec.s3dis_points(3, 0))])
    ann = spec.write_s3dis_room(root, 5, "office_1", [("lamp", 1, spec.s3dis_points(3, 0))])
    with pytest.raises(InputError) as e:
        import_s3dis(s3dis_cfg(root), tmp_path / "out", tmp_path / "dl", progress=False)
    msg = one_line(e)
    assert msg.startswith(f"{ann / 'lamp_1.txt'}: class: expected one of ceiling, floor,") and msg.endswith(
        "got 'lamp'")


def test_s3dis_bad_val_area_and_max_rooms(tmp_path):
    root = tmp_path / "s3dis"
    for room in ("office_1", "office_2"):
        spec.write_s3dis_room(root, 1, room, [("chair", 1, spec.s3dis_points(3, 0))])
    spec.write_s3dis_room(root, 5, "office_1", [("chair", 1, spec.s3dis_points(3, 0))])
    with pytest.raises(InputError) as e:
        import_s3dis(s3dis_cfg(root, val_area=3), tmp_path / "out", tmp_path / "dl", progress=False)
    assert one_line(e) == f"data.s3dis.val_area: expected one of the areas in {root} ([1, 5]), got 3"
    stats = import_s3dis(s3dis_cfg(root, max_rooms=1), tmp_path / "out", tmp_path / "dl", progress=False)
    assert stats["scenes"] == {"clip": 0, "train": 1, "val": 1} and "bad_lines" not in stats["defects"]


def test_s3dis_nothing_configured(tmp_path):
    with pytest.raises(InputError) as e:
        import_s3dis({"path": None, "url": None, "sha256": None, "val_area": 5, "max_rooms": None},
                     tmp_path / "out", tmp_path / "dl", progress=False)
    assert one_line(e) == ("data.s3dis.path is not set: set data.s3dis.path to your local copy of S3DIS "
                           "(Stanford3dDataset_v1.2_Aligned_Version) (or data.s3dis.url to the URL you were given "
                           "after accepting its licence)")


# ================================================================ fetch

def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return path


def test_fetch_directory_is_used_as_is(tmp_path):
    assert resolve_source({"path": str(tmp_path), "url": None}, "scannet", tmp_path / "dl") == tmp_path
    assert not (tmp_path / "dl").exists()


def test_fetch_missing_path(tmp_path):
    with pytest.raises(InputError) as e:
        resolve_source({"path": str(tmp_path / "nope"), "url": None}, "s3dis", tmp_path / "dl")
    assert one_line(e) == (f"data.s3dis.path: expected an existing directory or archive (.zip, .tar, .tar.gz, "
                           f".tgz), got '{tmp_path / 'nope'}'")


def test_fetch_zip_extracted_once(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "rel.zip", {"release/a.txt": b"a", "release/sub/b.txt": b"bb"})
    root = resolve_source({"path": str(archive), "url": None}, "scannet", tmp_path / "dl", progress=False)
    assert root == tmp_path / "dl" / "scannet" / "release"
    assert (root / "a.txt").read_bytes() == b"a" and (root / "sub" / "b.txt").read_bytes() == b"bb"
    assert json.loads((tmp_path / "dl" / "scannet" / MARKER).read_text())["size"] == archive.stat().st_size

    def boom(*a, **k):
        raise AssertionError("extracted again")

    monkeypatch.setattr(fetch, "_extract_zip", boom)
    assert resolve_source({"path": str(archive), "url": None}, "scannet", tmp_path / "dl") == root


def _assert_nothing_extracted(tmp_path: Path, dl: Path) -> None:
    assert not (dl / "scannet").exists()
    assert not dl.exists() or not list(dl.iterdir()), "no temporary directory left behind"
    assert not list(tmp_path.rglob("evil*")) and not (tmp_path.parent / "evil.txt").exists()


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_fetch_rejects_dotdot_member(tmp_path, kind):
    members = {"release/ok.txt": b"ok", "release/../../evil.txt": b"x"}
    if kind == "zip":
        archive = make_zip(tmp_path / "bad.zip", members)
    else:
        archive = make_tar(tmp_path / "bad.tar.gz", list(members.items()))
    with pytest.raises(InputError) as e:
        resolve_source({"path": str(archive), "url": None}, "scannet", tmp_path / "dl", progress=False)
    assert one_line(e).startswith(f"{archive}: member 'release/../../evil.txt': expected a relative path inside "
                                  "the archive")
    _assert_nothing_extracted(tmp_path, tmp_path / "dl")


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("member,desc", [
    (("/abs/evil.txt", b"x"), "'/abs/evil.txt'"),
    (_link("release/evil_link", "../../outside", tarfile.SYMTYPE), "symlink"),
    (_link("release/evil_abs", "/etc/passwd", tarfile.SYMTYPE), "symlink"),
    (_link("release/evil_hard", "../outside", tarfile.LNKTYPE), "hard link"),
])
def test_fetch_rejects_tar_escapes(tmp_path, member, desc):
    archive = make_tar(tmp_path / "bad.tgz", [("release/ok.txt", b"ok"), member])
    with pytest.raises(InputError) as e:
        resolve_source({"path": str(archive), "url": None}, "scannet", tmp_path / "dl", progress=False)
    msg = one_line(e)
    assert msg.startswith(f"{archive}: member ") and desc in msg
    _assert_nothing_extracted(tmp_path, tmp_path / "dl")


def test_fetch_url_sha256(tmp_path):
    archive = make_zip(tmp_path / "rel.zip", {"release/a.txt": b"a"})
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    url = archive.as_uri()
    dl = tmp_path / "dl"
    with pytest.raises(InputError) as e:
        resolve_source({"path": None, "url": url, "sha256": "0" * 64}, "scannet", dl, progress=False)
    assert one_line(e) == f"data.scannet.sha256: expected {'0' * 64}, got {digest} (the file downloaded from {url})"
    assert not dl.exists() or not list(dl.iterdir()), "a download that fails its checksum is not kept"
    root = resolve_source({"path": None, "url": url, "sha256": digest.upper()}, "scannet", dl, progress=False)
    assert root == dl / "scannet" / "release" and (root / "a.txt").read_bytes() == b"a"
    assert (dl / "scannet-rel.zip").read_bytes() == archive.read_bytes()


def test_fetch_url_unreachable(tmp_path):
    url = (tmp_path / "missing.zip").as_uri()
    with pytest.raises(InputError) as e:
        resolve_source({"path": None, "url": url, "sha256": None}, "s3dis", tmp_path / "dl", progress=False)
    assert one_line(e).startswith(f"data.s3dis.url: could not download {url!r}")
    assert not list((tmp_path / "dl").iterdir())


def test_fetch_local_archive_sha256(tmp_path):
    archive = make_zip(tmp_path / "rel.zip", {"release/a.txt": b"a"})
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    with pytest.raises(InputError) as e:
        resolve_source({"path": str(archive), "url": None, "sha256": "f" * 64}, "s3dis", tmp_path / "dl",
                       progress=False)
    assert one_line(e) == f"data.s3dis.sha256: expected {'f' * 64}, got {digest} (the file {archive})"
    assert not (tmp_path / "dl" / "s3dis").exists()


def test_scannet_ascii_ply_mesh(tmp_path):
    """An ASCII _vh_clean_2.ply (plyfile returns per-face arrays) reads like the binary one."""
    from plyfile import PlyData

    scene = spec.scannet_scene(n_frames=1, invalid=())
    root = spec.write_scannet_release(tmp_path / "rel", {"scene0000_00": scene}, train=["scene0000_00"],
                                      val=["scene0000_00"])
    ply_path = root / "scans" / "scene0000_00" / "scene0000_00_vh_clean_2.ply"
    ply = PlyData.read(str(ply_path), mmap=False)  # the file is rewritten below
    ply.text = True
    ply.write(str(ply_path))
    import_scannet(scannet_cfg(root), tmp_path / "out", tmp_path / "dl", progress=False)
    mesh = Dataset(tmp_path / "out").scene("scene0000_00").mesh()
    np.testing.assert_array_equal(mesh["faces"], scene["faces"])
    assert mesh["semantic"].tolist() == FACE_SEM and mesh["instance"].tolist() == FACE_INST
