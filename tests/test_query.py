"""`text4point query`: free-text scores of every point of a scene through a pre-trained ĥ3D."""

import subprocess
import sys

import numpy as np
import pytest
import yaml

from text4point.errors import InputError


@pytest.fixture(scope="module")
def checkpoints(pt_inputs, one_epoch_checkpoints):
    return {**pt_inputs, **one_epoch_checkpoints}


def test_query_scores_every_point_by_the_zero_shot_protocol(checkpoints, tmp_path):
    from text4point.checkpoints import load_checkpoint
    from text4point.clip.load import load_clip
    from text4point.pretrain.zeroshot import predict_points
    from text4point.pretrain.query import _model, query
    from text4point.scene import Dataset

    c = checkpoints
    ds = Dataset(c["world"])
    classes = list(ds.label_set.classes)
    prompts = [f"point cloud of a {k}" for k in classes]
    npz, png = query(c["cfg"], c["ckpts"]["text4point"], c["world"], "val_0000", prompts, tmp_path, None, "cpu")
    cloud = ds.scene("val_0000").points()
    with np.load(npz) as f:
        scores, queries, xyz = f["scores"], list(f["queries"]), f["xyz"]
    assert scores.shape == (len(prompts), len(cloud["xyz"])) and scores.dtype == np.float32
    assert queries == prompts and np.array_equal(xyz, np.asarray(cloud["xyz"], np.float32))
    assert np.all(np.abs(scores) <= 1.0 + 1e-5) and scores.std() > 0
    # the argmax over the class prompts is the zero-shot evaluation's label of every point
    model, channels = _model(c["cfg"], load_checkpoint(c["ckpts"]["text4point"]), c["ckpts"]["text4point"])
    text = load_clip(c["cfg"]["clip"], "cpu").encode_text(prompts)
    want = predict_points(model, cloud["xyz"], cloud["rgb"], text, float(c["cfg"]["correspondences"]["voxel_size"]),
                          "cpu", channels)
    assert np.array_equal(scores.argmax(0), want)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val_0000.npz", "val_0000.png"]


def test_query_refuses_what_it_cannot_answer_in_one_line(checkpoints, tmp_path):
    from text4point.pretrain.query import score_scene

    c = checkpoints
    pc = c["ckpts"]["pointcontrast"]
    with pytest.raises(InputError, match=rf"^{pc}: pre-training variant 'pointcontrast' has no CLIP-space head"):
        score_scene(c["cfg"], pc, c["world"], "val_0000", ["a chair"], None, "cpu")
    with pytest.raises(InputError, match=r"scene 'nope' not found"):
        score_scene(c["cfg"], c["ckpts"]["text4point"], c["world"], "nope", ["a chair"], None, "cpu")
    with pytest.raises(InputError, match=r"not found"):
        score_scene(c["cfg"], tmp_path / "missing.pt", c["world"], "val_0000", ["a chair"], None, "cpu")
    # through the CLI: exit 2, one line
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(c["cfg"]))
    r = subprocess.run([sys.executable, "-m", "text4point.cli", "query", "--params", str(params), "--checkpoint",
                        str(pc), "--scene", "val_0000", "--data", str(c["world"]), "--out-dir", str(tmp_path / "q"),
                        "a red chair"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "has no CLIP-space head" in r.stderr
    assert not (tmp_path / "q").exists()
