"""Tests of the real-data importers against small files written from the published formats (spec_files)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from text4point.errors import InputError  # noqa: E402
from text4point.importers import fetch  # noqa: E402
from text4point.importers.fetch import MARKER, resolve_source  # noqa: E402
from text4point.importers.s3dis import import_s3dis  # noqa: E402
from text4point.importers.scannet import import_scannet  # noqa: E402
from text4point.importers.sens import SensFile  # noqa: E402
from text4point.importers.sunrgbd import import_sunrgbd  # noqa: E402
from text4point.labels import IGNORE_LABEL, S3DIS13, SCANNET20, SUNRGBD10  # noqa: E402
from text4point.scene import Dataset, read_image, read_matrix  # noqa: E402

import spec_files as spec  # noqa: E402
from conftest import data_section  # noqa: E402


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


def scannet_cfg(path, **kw) -> dict:
    return data_section("scannet", **{"path": str(path), "frame_skip": 3, **kw})


def s3dis_cfg(path, **kw) -> dict:
    return data_section("s3dis", **{"path": str(path), **kw})


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
    cfg = data_section("scannet")
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
        import_s3dis(data_section("s3dis"),
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
    assert resolve_source({"path": str(tmp_path), "url": None, "sha256": None}, "scannet", tmp_path / "dl") == tmp_path
    assert not (tmp_path / "dl").exists()


def test_fetch_missing_path(tmp_path):
    with pytest.raises(InputError) as e:
        resolve_source({"path": str(tmp_path / "nope"), "url": None, "sha256": None}, "s3dis", tmp_path / "dl")
    assert one_line(e) == (f"data.s3dis.path: expected an existing directory or archive (.zip, .tar, .tar.gz, "
                           f".tgz), got '{tmp_path / 'nope'}'")


def test_fetch_zip_extracted_once(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "rel.zip", {"release/a.txt": b"a", "release/sub/b.txt": b"bb"})
    root = resolve_source({"path": str(archive), "url": None, "sha256": None}, "scannet", tmp_path / "dl",
                          progress=False)
    assert root == tmp_path / "dl" / "scannet" / "release"
    assert (root / "a.txt").read_bytes() == b"a" and (root / "sub" / "b.txt").read_bytes() == b"bb"
    assert json.loads((tmp_path / "dl" / "scannet" / MARKER).read_text())["size"] == archive.stat().st_size

    def boom(*a, **k):
        raise AssertionError("extracted again")

    monkeypatch.setattr(fetch, "_extract_zip", boom)
    assert resolve_source({"path": str(archive), "url": None, "sha256": None}, "scannet", tmp_path / "dl") == root


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
        resolve_source({"path": str(archive), "url": None, "sha256": None}, "scannet", tmp_path / "dl", progress=False)
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
        resolve_source({"path": str(archive), "url": None, "sha256": None}, "scannet", tmp_path / "dl", progress=False)
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


# ================================================================ ScanNet: defects of real releases

def one_scene_release(tmp_path: Path, scene: dict, **kw) -> Path:
    return spec.write_scannet_release(tmp_path / "rel", {"scene0000_00": scene}, train=["scene0000_00"],
                                      val=["scene0000_00"], **kw)


def test_scannet_colour_frames_are_decode_checked(tmp_path):
    """A truncated JPEG, one without its end marker and one with a zeroed header: not exported, counted."""
    scene = spec.scannet_scene(n_frames=6, invalid=())
    fr = scene["frames"]
    fr[1]["color_jpeg"] = fr[1]["color_jpeg"][: len(fr[1]["color_jpeg"]) // 2]
    fr[2]["color_jpeg"] = fr[2]["color_jpeg"][:-2]
    fr[4]["color_jpeg"] = b"\0" * 32 + fr[4]["color_jpeg"][32:]
    fr[5]["color_jpeg"] = spec.jpeg_bytes(np.zeros((12, 32, 3), np.uint8))  # decodes, but not 32x24
    root = one_scene_release(tmp_path, scene)
    stats = import_scannet(scannet_cfg(root, frame_skip=1), tmp_path / "out", tmp_path / "dl", progress=False)
    assert stats["defects"]["corrupt_frame"] == 4 and stats["frames"] == 2
    sc = Dataset(tmp_path / "out").scene("scene0000_00")
    assert sc.frame_ids == [0, 3] and sorted(p.name for p in (sc.path / "color").iterdir()) == ["0.jpg", "3.jpg"]
    assert sc.frame_path("color", 3).read_bytes() == fr[3]["color_jpeg"]


def test_scannet_without_axis_alignment(tmp_path):
    """No <scene>.txt, or one without the axisAlignment line: imported as recorded, counted; a malformed line
    is a one-line error."""
    for case in ("no_file", "no_line"):
        scene = spec.scannet_scene(n_frames=2, invalid=())
        if case == "no_file":
            del scene["axis_alignment"]
        else:
            scene["axis_alignment"] = None
        root = one_scene_release(tmp_path / case, scene)
        stats = import_scannet(scannet_cfg(root), tmp_path / case / "out", tmp_path / "dl", progress=False)
        assert stats["defects"]["missing_axis_alignment"] == 1
        sc = Dataset(tmp_path / case / "out").scene("scene0000_00")
        assert sc.meta["axis_alignment"] is None
        np.testing.assert_array_equal(sc.points()["xyz"], scene["xyz"])
        np.testing.assert_allclose(sc.pose(0), scene["frames"][0]["pose"], rtol=1e-7, atol=0)
    txt = root / "scans" / "scene0000_00" / "scene0000_00.txt"
    txt.write_text("axisAlignment = 1 0 0 0 0 1 0 0 0 0 1\nsceneType = Apartment\n")
    with pytest.raises(InputError) as e:
        import_scannet(scannet_cfg(root), tmp_path / "bad", tmp_path / "dl", progress=False)
    assert one_line(e) == (f"{txt}: line 1 (axisAlignment): expected 16 finite numbers (a 4x4 matrix, row by row), "
                           f"got '1 0 0 0 0 1 0 0 0 0 1'")
    assert not (tmp_path / "bad").exists()


def overlap_scene(groups: list[dict], seg: list[int]) -> dict:
    scene = spec.scannet_scene(n_frames=1, invalid=())
    n = len(seg)
    scene.update(xyz=scene["xyz"][:n], rgb=scene["rgb"][:n], seg=np.array(seg), groups=groups,
                 faces=np.zeros((0, 3), np.int64))
    return scene


@pytest.mark.parametrize("groups,want_sem,want_inst,empty", [
    # segment 7 listed by a table (object 1) and a later chair (object 2): labels in first-appearance order
    # (chair, table), so the table's label wins; objectIds in order, so the chair's instance (3) wins
    ([{"objectId": 0, "label": "chair", "segments": [5]}, {"objectId": 1, "label": "table", "segments": [7]},
      {"objectId": 2, "label": "chair", "segments": [7]}], ["chair", "chair", "table", "table"], [1, 1, 3, 3], 1),
    # (the table, object 1, so owns no vertex: empty_object)
    # objectId 0 repeated: it keeps its first position and takes the later group's segments (11); the sofa label's
    # list is its first group's (object 1), which so also holds segment 11 and wins it; object 0 is left empty
    ([{"objectId": 0, "label": "chair", "segments": [5]}, {"objectId": 1, "label": "sofa", "segments": [9]},
      {"objectId": 0, "label": "sofa", "segments": [11]}], ["chair", "chair", "sofa", "sofa"], [0, 0, 2, 2], 1),
], ids=["label-vs-object-order", "repeated-objectId"])
def test_scannet_overlapping_groups_follow_scannets_export(tmp_path, groups, want_sem, want_inst, empty):
    seg = [5, 5, 7, 7] if groups[1]["segments"] == [7] else [5, 5, 9, 11]
    rows = spec.TSV_ROWS + [("sofa", 6)]
    root = one_scene_release(tmp_path, overlap_scene(groups, seg), tsv_rows=rows)
    stats = import_scannet(scannet_cfg(root), tmp_path / "out", tmp_path / "dl", progress=False)
    pts = Dataset(tmp_path / "out").scene("scene0000_00").points()
    assert pts["semantic"].tolist() == [SCANNET20.index(c) for c in want_sem]
    assert pts["instance"].tolist() == want_inst
    assert stats["defects"]["empty_object"] == empty  # object 1 (the table) / object 0 own no vertex


def test_scannet_unknown_segments_and_empty_objects_are_counted(tmp_path):
    groups = [{"objectId": 0, "label": "chair", "segments": [5, 42]},      # 42: not in segIndices
              {"objectId": 1, "label": "table", "segments": [43, 44]},     # no segment of it exists
              {"objectId": 2, "label": "wall", "segments": [7]}]
    root = one_scene_release(tmp_path, overlap_scene(groups, [5, 5, 7, 7]))
    stats = import_scannet(scannet_cfg(root), tmp_path / "out", tmp_path / "dl", progress=False)
    assert stats["defects"]["unknown_segment"] == 3 and stats["defects"]["empty_object"] == 1
    pts = Dataset(tmp_path / "out").scene("scene0000_00").points()
    assert pts["instance"].tolist() == [1, 1, 3, 3]


def test_scannet_damaged_labels_ply_is_skipped_and_counted(tmp_path):
    root = one_scene_release(tmp_path, spec.scannet_scene(n_frames=2, invalid=()), labels_ply={"scene0000_00":
                                                                                                 LABELS_PLY})
    p = root / "scans" / "scene0000_00" / "scene0000_00_vh_clean_2.labels.ply"
    p.write_bytes(p.read_bytes()[:300])
    stats = import_scannet(scannet_cfg(root), tmp_path / "out", tmp_path / "dl", progress=False)
    assert stats["defects"]["bad_labels_ply"] == 1 and "labels_ply_disagreement" not in stats["defects"]
    assert Dataset(tmp_path / "out").scene("scene0000_00").points()["semantic"].tolist() == VERTEX_SEM


@pytest.mark.parametrize("imu", [0, 3])
def test_sens_header_claims_more_frames_than_the_file_holds(tmp_path, imu):
    frames = spec.make_frames(4)
    spec.write_sens(tmp_path / "s.sens", frames, imu=imu, num_frames=6)
    with SensFile(tmp_path / "s.sens") as s, pytest.raises(InputError) as e:
        assert [f.index for f in s.frames()] == [0, 1, 2, 3]
    assert one_line(e) == f"{tmp_path / 's.sens'}: header: 6 frames, file: 4"
    spec.write_sens(tmp_path / "ok.sens", frames, imu=imu)  # a complete recording with its IMU block reads
    with SensFile(tmp_path / "ok.sens") as s:
        assert [f.index for f in s] == [0, 1, 2, 3]


def test_frames_with_source_ids_feed_the_correspondences(scannet_import, tiny_params):
    """The correspondences stage enumerates an imported scene's frames by their ids (0, 3, 6), not 0..n-1."""
    from text4point.correspondences import process_scene

    _, out, _ = scannet_import
    sc = Dataset(out).scene("scene0000_00")
    cfg = dict(tiny_params["correspondences"], frame_skip=1, min_valid_depth=0.0)
    result = process_scene(sc, cfg, "cpu")
    assert result["stats"]["frames_total"] == 3
    assert result["stats"]["skipped"]["invalid_pose"] == 1  # frame 3
    assert np.asarray(result["frames"]).tolist() == [0, 6] and result["stats"]["frames_kept"] == 2


# ================================================================ resumable, parallel import

FOUR = [f"scene000{k}_00" for k in range(4)]


def four_scene_release(root: Path) -> Path:
    scenes = {sid: spec.scannet_scene(seed=k, n_frames=7) for k, sid in enumerate(FOUR)}
    return spec.write_scannet_release(root, scenes, train=FOUR[:3], val=FOUR[3:])


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def stamps(root: Path, ids) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of each scene's scene.json: unchanged when the scene was not rewritten."""
    out = {}
    for sid in ids:
        st = (root / "scenes" / sid / "scene.json").stat()
        out[sid] = (st.st_ino, st.st_mtime_ns)
    return out


def _cli_env(tmp_path: Path, **extra) -> dict:
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1] / "src"), env.get("PYTHONPATH", "")])
    return env


def test_scannet_import_killed_mid_scene_resumes_and_equals_an_uninterrupted_one(tmp_path):
    """``text4point data`` (2 workers) is SIGKILLed inside a scene; the dataset never looks complete; the rerun
    imports only the unfinished scenes and writes the same bytes as an uninterrupted serial import."""
    import yaml

    from conftest import TINY

    root = four_scene_release(tmp_path / "rel")
    params = yaml.safe_load(TINY.read_text())
    params["data"] = {"source": "scannet", "scannet": {"path": str(root), "frame_skip": 2, "workers": 2}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out, metrics, faults = tmp_path / "data" / "scannet", tmp_path / "m.json", tmp_path / "faults"
    cmd = [sys.executable, "-m", "text4point.cli", "data", "--params", str(tmp_path / "params.yaml"), "--out",
           str(out), "--metrics", str(metrics), "--quiet"]
    env = _cli_env(tmp_path, TEXT4POINT_FAULT="import.frame@scene=scene0002_00", TEXT4POINT_FAULT_DIR=str(faults))
    p = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    while not (faults / "import.frame").exists():
        assert p.poll() is None, f"the import ended ({p.returncode}) before the fault point:\n{p.stdout.read()}"
        assert time.monotonic() - t0 < 300, "fault point not reached"
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)  # the CLI and its spawned workers (one process group)
    p.wait()
    while True:  # until no process of the group is left
        try:
            os.killpg(p.pid, 0)
            time.sleep(0.05)
        except ProcessLookupError:
            break
    assert p.returncode == -signal.SIGKILL
    assert not (out / "dataset.json").exists() and not metrics.exists()
    assert list((out / "scenes").glob(".scene0002_00.*.tmp")), "killed inside scene0002_00's temporary directory"
    done = sorted(d.name for d in (out / "scenes").iterdir() if not d.name.startswith("."))
    assert "scene0002_00" not in done and done, done
    before = stamps(out, done)

    r = subprocess.run(cmd, env=_cli_env(tmp_path), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = json.loads(metrics.read_text())
    assert m["scenes_imported"] == 4 - len(done) and m["scenes_reused"] == len(done)
    assert stamps(out, done) == before, "finished scenes are not rewritten"
    assert not [q for q in out.rglob("*") if q.name.endswith(".tmp")]

    ref = tmp_path / "ref"
    stats = import_scannet(scannet_cfg(root, frame_skip=2, workers=1), ref, tmp_path / "dl", progress=False)
    assert stats["scenes_imported"] == 4
    assert tree_bytes(out) == tree_bytes(ref)


def test_scannet_rerun_reuses_what_is_made_from_the_same_input(tmp_path):
    root = four_scene_release(tmp_path / "rel")
    out = tmp_path / "out"
    first = import_scannet(scannet_cfg(root, workers=2), out, tmp_path / "dl", progress=False)
    assert (first["scenes_imported"], first["scenes_reused"]) == (4, 0)
    snapshot, t = tree_bytes(out), stamps(out, FOUR)
    again = import_scannet(scannet_cfg(root, workers=2), out, tmp_path / "dl", progress=False)
    assert (again["scenes_imported"], again["scenes_reused"]) == (0, 4)
    assert tree_bytes(out) == snapshot and stamps(out, FOUR) == t
    assert {k: v for k, v in again.items() if not k.startswith("scenes_")} == \
        {k: v for k, v in first.items() if not k.startswith("scenes_")}

    agg = root / "scans" / "scene0001_00" / "scene0001_00.aggregation.json"
    agg.write_text(agg.read_text() + "\n")  # another file (size): that scene only is redone
    changed = import_scannet(scannet_cfg(root, workers=2), out, tmp_path / "dl", progress=False)
    assert changed["scenes_imported"] == 1 and stamps(out, FOUR)["scene0001_00"] != t["scene0001_00"]
    assert {s: v for s, v in stamps(out, FOUR).items() if s != "scene0001_00"} == \
        {s: v for s, v in t.items() if s != "scene0001_00"}

    skip = import_scannet(scannet_cfg(root, frame_skip=2), out, tmp_path / "dl", progress=False)
    assert skip["scenes_imported"] == 4  # another frame_skip: every scene is made again
    fewer = import_scannet(scannet_cfg(root, frame_skip=2, max_scenes=1), out, tmp_path / "dl", progress=False)
    assert fewer["scenes_reused"] == 2 and fewer["scenes_imported"] == 0
    assert sorted(d.name for d in (out / "scenes").iterdir()) == ["scene0000_00", "scene0003_00"]


def test_scannet_parallel_import_stops_on_a_bad_scene_and_keeps_the_finished_ones(tmp_path):
    root = four_scene_release(tmp_path / "rel")
    sens = root / "scans" / "scene0003_00" / "scene0003_00.sens"
    spec.write_sens(sens, spec.make_frames(2), version=3)
    out = tmp_path / "out"
    with pytest.raises(InputError) as e:
        import_scannet(scannet_cfg(root, workers=2), out, tmp_path / "dl", progress=False)
    assert one_line(e) == f"{sens}: version: expected 4, got 3"
    assert not (out / "dataset.json").exists()
    assert not [q for q in (out / "scenes").iterdir() if q.name.startswith(".")], "no temporaries left"
    spec.write_sens(sens, spec.scannet_scene(seed=3, n_frames=7)["frames"])  # repaired: the rest is reused
    stats = import_scannet(scannet_cfg(root, workers=2), out, tmp_path / "dl", progress=False)
    assert stats["scenes_imported"] + stats["scenes_reused"] == 4 and stats["scenes_imported"] >= 1
    assert Dataset(out).split("val") == ["scene0003_00"]


# ================================================================ SUN RGB-D

SUN_SEQ = ["SUNRGBD/kv1/NYUdata/NYU0001", "SUNRGBD/kv2/kinect2data/000002_2014-05-26_14-23-37_rgbf000103-resize",
           "SUNRGBD/realsense/lg/2014_10_24-15_28_00-1311000073", "SUNRGBD/xtion/xtion_align_data/2015-08-27_x",
           "SUNRGBD/kv1/b3dodata/img_0063"]


def sun_world_point(fr: dict, v: int, u: int) -> np.ndarray:
    """The upright-depth point of pixel (v, u), as the toolbox's read3dPoints builds it (0-based pixels)."""
    K, z = fr["K"], min(int(fr["depth_mm"][v, u]), 8000) / 1000.0
    x, y = (u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1]
    return fr["Rtilt"] @ np.array([x, z, -y])


def votenet_corners(box: dict) -> np.ndarray:
    """VoteNet's sunrgbd_utils.compute_box_3d, from its label fields (w, l, h = |coeffs|; heading from orientation)."""
    w, l, h = np.abs(box["coeffs"])  # noqa: E741  (VoteNet's names)
    heading = -np.arctan2(box["orientation"][1], box["orientation"][0])
    t = -heading
    R = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    xs, ys, zs = [-l, l, l, -l, -l, l, l, -l], [w, w, -w, -w, w, w, -w, -w], [h, h, h, h, -h, -h, -h, -h]
    return (R @ np.array([xs, ys, zs])).T + box["centroid"]


@pytest.fixture(scope="module")
def sun_import(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sun")
    frames = [spec.sunrgbd_frame(k, seq) for k, seq in enumerate(SUN_SEQ)]
    f0 = frames[0]
    f0["depth_mm"][5:9, 6:11] = 2500  # a chair-sized patch of depth
    chair_at = sun_world_point(f0, 7, 8)
    f0["boxes"] = [spec.sun_box("lamp", chair_at, [0.5, 0.5, 0.5], 0.0),  # not one of the ten classes: dropped
                   spec.sun_box("chair", chair_at, [0.2, 0.3, 0.25], 0.7),
                   spec.sun_box("night_stand", chair_at + [0.1, 0, 0], [0.3, 0.3, 0.3], -2.0),
                   spec.sun_box("bed", [5.0, 5.0, 5.0], [1.0, 0.9, 0.4], 1.2)]
    root = spec.write_sunrgbd_release(tmp / "rel", frames, train=[SUN_SEQ[0], SUN_SEQ[2], SUN_SEQ[3]],
                                      val=[SUN_SEQ[1]], missing=(SUN_SEQ[3],))  # SUN_SEQ[4]: in no split
    out = tmp / "out"
    stats = import_sunrgbd(data_section("sunrgbd", path=str(root)), out, tmp / "dl",
                           progress=False)
    return frames, out, stats


def test_sunrgbd_splits_and_stats(sun_import):
    frames, out, stats = sun_import
    ds = Dataset(out)
    assert ds.label_set is SUNRGBD10 and ds.meta["source"] == "sunrgbd"
    assert SUNRGBD10.classes == ("bed", "table", "sofa", "chair", "toilet", "desk", "dresser", "night_stand",
                                 "bookshelf", "bathtub")
    assert ds.split("train") == ["000001", "000003"] and ds.split("val") == ["000002"] and ds.split("clip") == []
    assert stats["scenes"] == {"clip": 0, "train": 2, "val": 1} and stats["metadata"] == "v1"
    assert stats["defects"] == {"missing_scene": 1, "not_in_split": 1, "no_benchmark_box": 2}
    assert stats["boxes"] == 3
    assert ds.meta["import"] == {k: v for k, v in stats.items() if not k.startswith("scenes_")}


def test_sunrgbd_depth_after_the_shift_and_the_frame(sun_import):
    frames, out, _ = sun_import
    for sid, fr in (("000001", frames[0]), ("000002", frames[1])):
        sc = Dataset(out).scene(sid)
        h, w = fr["depth_mm"].shape
        assert sc.frame_ids == [0] and sc.meta["color_size"] == [w, h] and sc.meta["depth_size"] == [w, h]
        want = np.minimum(fr["depth_mm"], 8000).astype(np.float32) / 1000.0
        np.testing.assert_array_equal(sc.depth(0), want)
        assert sc.depth(0)[0, 0] == np.float32(8.0)  # 9.5 m clipped as the toolbox clips
        ccam, dcam = sc.cameras()
        np.testing.assert_array_equal(ccam.K, fr["K"])
        np.testing.assert_array_equal(dcam.K, fr["K"])
        np.testing.assert_array_equal(ccam.extrinsic, np.eye(4))
        rel = fr["sequence"] + "/image/" + fr["sequence"].rsplit("/", 1)[1] + ".jpg"
        assert sc.frame_path("color", 0).read_bytes() == (out.parent / "rel" / rel).read_bytes()
        pose = sc.pose(0)
        np.testing.assert_allclose(pose[:3, :3], fr["Rtilt"] @ np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]]),
                                   atol=1e-15)
        np.testing.assert_array_equal(pose[:3, 3], 0)
        np.testing.assert_array_equal(pose[3], [0, 0, 0, 1])


def test_sunrgbd_points_are_the_back_projected_depth(sun_import):
    frames, out, _ = sun_import
    fr = frames[0]
    sc = Dataset(out).scene("000001")
    pts = sc.points()
    v, u = np.nonzero(fr["depth_mm"])
    want = np.stack([sun_world_point(fr, a, b) for a, b in zip(v, u)])
    np.testing.assert_allclose(pts["xyz"], want.astype(np.float32), rtol=0, atol=2e-6)
    np.testing.assert_array_equal(pts["rgb"], np.asarray(Image.open(sc.frame_path("color", 0)).convert("RGB"))[v, u])
    # the frame sees its own points where they came from: camera = inverse pose, pixel = K camera
    cam = (np.linalg.inv(sc.pose(0)) @ np.concatenate([pts["xyz"], np.ones((len(v), 1))], 1).T)[:3]
    uv = (fr["K"] @ cam)[:2] / cam[2]
    np.testing.assert_allclose(uv, np.stack([u, v]), atol=1e-3)


def test_sunrgbd_boxes_axis_aligned_with_heading_and_point_labels(sun_import):
    frames, out, _ = sun_import
    sc = Dataset(out).scene("000001")
    boxes = sc.boxes()
    kept = frames[0]["boxes"][1:]  # the lamp is not a benchmark class
    assert [(b["instance"], b["semantic"], b["class"]) for b in boxes] == [(1, 3, "chair"), (2, 7, "night_stand"),
                                                                            (3, 0, "bed")]
    for b, src, heading in zip(boxes, kept, (0.7, -2.0, 1.2)):
        corners = votenet_corners(src)
        lo, hi = corners.min(0), corners.max(0)
        assert b["center"] == pytest.approx((lo + hi) / 2, abs=1e-12)
        assert b["size"] == pytest.approx(hi - lo, abs=1e-12)
        assert b["heading"] == pytest.approx(heading, abs=1e-12)
        assert b["oriented_size"] == pytest.approx(2 * np.abs(src["coeffs"])[[1, 0, 2]], abs=1e-12)
    pts = sc.points()
    xyz = pts["xyz"].astype(np.float64)
    inside = []
    for src in kept:  # a point is in a box when its box-frame coordinates are within the half sizes
        t = np.arctan2(src["orientation"][1], src["orientation"][0])
        c, s = np.cos(t), np.sin(t)
        d = xyz - src["centroid"]
        q = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], 1)
        w, l, h = np.abs(src["coeffs"])  # noqa: E741
        inside.append((np.abs(q) <= [l, w, h]).all(1))
    want_inst = np.where(inside[0], 1, np.where(inside[1], 2, np.where(inside[2], 3, 0)))
    assert inside[0].sum() > 0 and (inside[1] & ~inside[0]).sum() > 0  # the test exercises first-box-wins
    assert pts["instance"].tolist() == want_inst.tolist()
    sem = np.array([IGNORE_LABEL, 3, 7, 0])[want_inst]
    assert pts["semantic"].tolist() == sem.tolist()


def test_sunrgbd_v2_metadata_and_max_scenes(tmp_path):
    frames = [spec.sunrgbd_frame(k, seq, boxes=[spec.sun_box("desk", [0, 2, 0], [0.3, 0.2, 0.1], 0.5)])
              for k, seq in enumerate(SUN_SEQ[:3])]
    root = spec.write_sunrgbd_release(tmp_path / "rel", frames, train=SUN_SEQ[:2], val=SUN_SEQ[2:3], meta="v2")
    stats = import_sunrgbd(data_section("sunrgbd", path=str(root), max_scenes=1), tmp_path / "out", tmp_path / "dl",
                           progress=False)
    assert stats["metadata"] == "v2" and stats["scenes"] == {"clip": 0, "train": 1, "val": 1}
    assert [b["class"] for b in Dataset(tmp_path / "out").scene("000003").boxes()] == ["desk"]


def test_sunrgbd_missing_metadata_and_bad_depth(tmp_path):
    frames = [spec.sunrgbd_frame(k, seq) for k, seq in enumerate(SUN_SEQ[:2])]
    root = spec.write_sunrgbd_release(tmp_path / "rel", frames, train=SUN_SEQ[:1], val=SUN_SEQ[1:2])
    depth = root / SUN_SEQ[1] / "depth" / (SUN_SEQ[1].rsplit("/", 1)[1] + ".png")
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(depth)  # 8-bit: not SUN RGB-D's depth
    with pytest.raises(InputError) as e:
        import_sunrgbd(data_section("sunrgbd", path=str(root)), tmp_path / "out", tmp_path / "dl", progress=False)
    assert one_line(e) == f"{depth}: depth: expected a single-channel 16-bit PNG, got 'uint8 of shape (12, 16)'"
    assert not (tmp_path / "out" / "dataset.json").exists()
    meta = root / "SUNRGBDtoolbox" / "Metadata" / "SUNRGBDMeta.mat"
    meta.unlink()
    with pytest.raises(InputError) as e:
        import_sunrgbd(data_section("sunrgbd", path=str(root)), tmp_path / "out2", tmp_path / "dl", progress=False)
    assert one_line(e) == (f"{meta}: file not found (SUN RGB-D's metadata; or {root / 'SUNRGBDMeta3DBB_v2.mat'})")


def test_write_mesh_writes_the_bytes_plyfile_writes(tmp_path):
    """The importer's mesh writer (faces as one packed array: ~80k-vertex ScanNet meshes) = plyfile's output."""
    from plyfile import PlyData, PlyElement

    from text4point.scene import read_mesh, write_mesh

    rng = np.random.default_rng(0)
    for n, m in ((7, 9), (300, 0)):
        V, C = rng.normal(size=(n, 3)), rng.integers(0, 256, (n, 3))
        F, S, inst = rng.integers(0, n, (m, 3)), rng.integers(0, 21, m), rng.integers(-2, 9, m)
        write_mesh(tmp_path / "fast.ply", V, C, F, S, inst)
        v = np.empty(n, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"),
                               ("blue", "u1")])
        v["x"], v["y"], v["z"] = V.astype(np.float32).T
        v["red"], v["green"], v["blue"] = C.astype(np.uint8).T
        f = np.empty(m, dtype=[("vertex_indices", "i4", (3,)), ("semantic", "u1"), ("instance", "i4")])
        f["vertex_indices"], f["semantic"], f["instance"] = F, S, inst
        PlyData([PlyElement.describe(v, "vertex"), PlyElement.describe(f, "face")],
                byte_order="<").write(str(tmp_path / "plyfile.ply"))
        assert (tmp_path / "fast.ply").read_bytes() == (tmp_path / "plyfile.ply").read_bytes()
        back = read_mesh(tmp_path / "fast.ply")
        np.testing.assert_array_equal(back["faces"], F.reshape(-1, 3))
        np.testing.assert_array_equal(back["instance"], inst)
