"""The `text4point` command: the data stage end to end (world and a spec-written ScanNet release),
MLflow records, previews, fail-fast tracking, unbuilt stages, and bad frames skipped and counted."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from text4point.errors import InputError
from text4point.scene import Dataset, FrameDefect, Scene, read_points, write_points

import spec_files as spec
from conftest import TINY


def cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "text4point.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd)


def _env(**kw):
    return dict(os.environ, **{k: str(v) for k, v in kw.items()})


def test_data_stage_writes_world_metrics_and_an_mlflow_run(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out, metrics = tmp_path / "data" / "world", tmp_path / "m.json"
    r = cli("data", "--params", TINY, "--out", out, "--metrics", metrics, "--scene-stats", tmp_path / "s.csv",
            "--quiet", env=_env(MLFLOW_TRACKING_URI=uri))
    assert r.returncode == 0, r.stderr
    m = json.loads(metrics.read_text())
    assert m["source"] == "world" and m["scenes"] == {"clip": 1, "train": 2, "val": 1}
    assert m["frames"] == 4 * 6 and m["invalid_poses"] == 4 * round(0.2 * 6)
    assert Dataset(out).split("val") == ["val_0000"]
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]  # no temporaries left
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0].startswith("scene_id,split,room_type") and len(lines) == 1 + 4
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("text4point-test/data")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["data.world.frames_per_scene"] == "6"
    assert run.data.metrics["frames"] == 24.0
    assert run.data.tags["params_hash"] == m["params_hash"]


def test_unreachable_tracking_server_stops_the_stage_before_any_work(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "world"
    r = cli("data", "--params", TINY, "--out", out, "--metrics", tmp_path / "m.json", "--quiet",
            env=_env(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}"))
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: MLflow tracking server http://127.0.0.1:{port} is unreachable")
    assert r.stderr.count("\n") == 1
    assert not out.exists() and not (tmp_path / "m.json").exists()


def test_finetune_without_its_pretraining_checkpoint_is_one_line_and_writes_nothing(tiny_world, tmp_path):
    r = cli("finetune", "--params", TINY, "--task", "semseg", "--init", "text4point", "--seed", "0",
            "--label-fraction", "1.0", "--data", tiny_world, "--out", tmp_path / "m.json",
            env=_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert r.returncode == 2
    assert r.stderr.strip() == "error: finetune init text4point: needs its pre-training checkpoint"
    assert not (tmp_path / "m.json").exists()


def test_an_unknown_option_is_refused_by_the_parser(tmp_path):
    r = cli("tables", "--params", TINY, "--no-such-option", "1")
    assert r.returncode == 2
    assert r.stderr.strip().endswith("error: unrecognized arguments: --no-such-option 1")
    assert "Traceback" not in r.stderr


def test_show_writes_scene_and_frame_previews(tiny_world, tmp_path):
    r = cli("show", "--data", tiny_world, "--out-dir", tmp_path / "fig", "--scenes", "1")
    assert r.returncode == 0, r.stderr
    scene_png, frame_png = tmp_path / "fig/val_0000_scene.png", tmp_path / "fig/val_0000_frame.png"
    for p in (scene_png, frame_png):
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 600
    with Image.open(frame_png) as im:  # colour, depth and labels side by side: a wide image
        assert im.size[0] > 2 * im.size[1]


def test_data_stage_imports_a_scannet_release(tmp_path):
    root = tmp_path / "release"
    scenes = {"scene0000_00": spec.scannet_scene(seed=0), "scene0001_00": spec.scannet_scene(seed=1)}
    spec.write_scannet_release(root, scenes, train=["scene0000_00"], val=["scene0001_00"])
    params = yaml.safe_load(TINY.read_text())
    params["data"] = {"source": "scannet", "scannet": {"path": str(root), "frame_skip": 2}}
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(params))
    out = tmp_path / "data" / "scannet"
    r = cli("data", "--params", p, "--out", out, "--metrics", tmp_path / "m.json", "--quiet",
            env=_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert r.returncode == 0, r.stderr
    ds = Dataset(out)
    assert ds.split("train") == ["scene0000_00"] and ds.split("val") == ["scene0001_00"]
    sc = ds.scene("scene0000_00")
    assert sc.num_frames == 4  # 7 recorded frames, every 2nd
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["source"] == "scannet" and m["defects"]["invalid_pose"] >= 1


def test_nothing_configured_for_real_data_is_one_line(tmp_path):
    params = yaml.safe_load(TINY.read_text())
    params["data"] = {"source": "s3dis", "pretrain_source": "world"}
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(params))
    r = cli("data", "--params", p, "--out", tmp_path / "s3dis", "--metrics", tmp_path / "m.json",
            env=_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: data.s3dis.path is not set: set data.s3dis.path")
    assert not (tmp_path / "s3dis").exists()


# ---------------------------------------------------------------- bad frames and scenes

@pytest.fixture()
def scene_copy(tiny_world, tmp_path):
    import shutil

    dst = tmp_path / "scene"
    shutil.copytree(tiny_world / "scenes" / "train_0000", dst)
    return Scene(dst)


def test_truncated_colour_image_is_a_frame_defect(scene_copy):
    p = scene_copy.frame_path("color", 0)
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3])
    with pytest.raises(FrameDefect) as e:
        scene_copy.color(0)
    assert e.value.reason == "corrupt_image" and str(p) in str(e.value)


def test_unreadable_depth_image_is_a_frame_defect(scene_copy):
    p = scene_copy.frame_path("depth", 1)
    p.write_bytes(b"not a png at all")
    with pytest.raises(FrameDefect) as e:
        scene_copy.depth(1)
    assert e.value.reason == "corrupt_image"


def test_depth_of_the_wrong_size_is_a_frame_defect(scene_copy):
    p = scene_copy.frame_path("depth", 1)
    Image.fromarray(np.zeros((10, 10), np.uint16)).save(p)
    with pytest.raises(FrameDefect, match="expected 64x48 depth"):
        scene_copy.depth(1)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_pose_is_a_frame_defect(scene_copy, value):
    p = scene_copy.frame_path("pose", 0)
    rows = p.read_text().splitlines()
    rows[0] = f"{value} 0 0 0"
    p.write_text("\n".join(rows) + "\n")
    with pytest.raises(FrameDefect) as e:
        scene_copy.pose(0)
    assert e.value.reason == "invalid_pose"


def test_pose_with_too_few_numbers_is_a_one_line_error(scene_copy):
    p = scene_copy.frame_path("pose", 0)
    p.write_text("1 0 0\n")
    with pytest.raises(InputError, match=r"pose/0.txt: matrix: expected 16 numbers .*, got 3$"):
        scene_copy.pose(0)


def test_missing_intrinsics_file_is_a_one_line_error(scene_copy):
    (scene_copy.path / "intrinsic" / "intrinsic_depth.txt").unlink()
    with pytest.raises(InputError) as e:
        scene_copy.cameras()
    assert str(e.value).startswith(f"{scene_copy.path / 'intrinsic' / 'intrinsic_depth.txt'}: file not found")
    assert "\n" not in str(e.value)


def test_empty_scene_is_a_one_line_error(tmp_path):
    p = tmp_path / "points.ply"
    write_points(p, np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0))
    with pytest.raises(InputError, match=r"points.ply: vertex: expected at least one point .empty scene., got 0"):
        read_points(p)


def test_scene_directory_without_metadata_is_a_one_line_error(tmp_path):
    with pytest.raises(InputError, match="scene.json: file not found"):
        Scene(tmp_path)
