"""Pre-training (text4point.pretrain): data, model, engine (checkpoints, resume, DDP, failures), zero-shot."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from text4point.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(pt_inputs, **pretrain) -> dict:
    cfg = copy.deepcopy(pt_inputs["cfg"])
    cfg["pretrain"].update(pretrain)
    return cfg


def _run(pt_inputs, out: Path, variant: str = "text4point", cfg: dict | None = None, **kw) -> dict:
    from text4point.pretrain import PretrainJob, run_stage

    kw.setdefault("zeroshot_eval", False)
    kw.setdefault("track", False)
    job = PretrainJob(cfg or pt_inputs["cfg"], pt_inputs["world"], pt_inputs["corr"], pt_inputs["feat"], variant,
                      out / "final.pt", progress=False, **kw)
    return run_stage(job, "cpu")


def _batch(pt_inputs, variant: str):
    from text4point.clip.cache import load_features
    from text4point.pretrain.data import build_dataset, collate_for
    from text4point.pretrain.engine import clip_identity
    from text4point.scene import Dataset

    cfg = pt_inputs["cfg"]
    fc = load_features(pt_inputs["feat"], clip_identity(cfg, pt_inputs["feat"], None))
    ds = build_dataset(variant, pt_inputs["corr"], pt_inputs["world"], fc, Dataset(pt_inputs["world"]).split("train"),
                       {**cfg["pretrain"], "cross_frame": True}, 0)
    collate = collate_for(variant)
    text = torch.as_tensor(fc.text()["scannet20"]["prompt_embeddings"]).float()
    return collate([ds[(0, i)] for i in range(min(3, len(ds)))]), text


def _model(cfg, variant, text):
    from text4point.pretrain.engine import build_model

    return build_model(cfg, variant, int(text.shape[1]), text if variant == "text4point" else None)


# ---------------------------------------------------------------- model


@pytest.mark.parametrize("variant", ["text4point", "image_contrast", "pointcontrast"])
def test_shapes_and_overfit_one_batch(pt_inputs, variant):
    torch.manual_seed(0)
    cfg = pt_inputs["cfg"]
    batch, text = _batch(pt_inputs, variant)
    model = _model(cfg, variant, text)
    feats = model.features(batch.x, batch.pos, batch.batch)
    n, nb = batch.pos.shape[0], feats["encoded"].pos_b.shape[0]
    assert feats["h"].shape == (nb, 32) and feats["z"].shape == (n, 16)
    if variant != "pointcontrast":
        assert feats["h_hat"].shape == (nb, text.shape[1])
        assert batch.h2d.shape == (batch.m_point.shape[0], text.shape[1]) and batch.m_point.max() < n
    if variant == "text4point":
        assert feats["h_text"].shape == (nb, text.shape[1]) and feats["attn"].shape == (nb, text.shape[0])
        assert feats["h_aggr"].shape == (nb, 32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        out = model(batch)
        assert all(torch.isfinite(v) for v in out.values())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_the_cosine_distillation_term_is_one_minus_the_mean_cosine_of_the_matches(pt_inputs):
    """``pretrain.loss_weights.cosine`` adds ``L_c = mean(1 - cos(ĥ3D[bottleneck of the match], h2D))`` to the
    loss; at 0 (the default, the paper's loss) the term is absent."""
    cfg = copy.deepcopy(pt_inputs["cfg"])
    batch, text = _batch(pt_inputs, "text4point")
    torch.manual_seed(0)
    plain = _model(cfg, "text4point", text)
    assert "L_c" not in plain(batch)
    cfg["pretrain"]["loss_weights"] = {**cfg["pretrain"]["loss_weights"], "cosine": 2.0}
    model = _model(cfg, "text4point", text)
    model.load_state_dict(plain.state_dict())
    out = model(batch)
    feats = model.features(batch.x, batch.pos, batch.batch)
    h_hat = feats["h_hat"][feats["encoded"].bottleneck_index()[batch.m_point]]
    cos = torch.nn.functional.normalize(h_hat, dim=1) @ torch.nn.functional.normalize(batch.h2d.float(), dim=1).T
    expected = float((1 - cos.diagonal()).mean())
    assert float(out["L_c"]) == pytest.approx(expected, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(out["L_e"] + out["L_d"]) + 2.0 * expected, rel=1e-5)


def test_tqm_without_text_refused(pt_inputs):
    from text4point.pretrain.engine import build_model

    with pytest.raises(InputError, match="Text Querying Module needs the class-name text embeddings") as e:
        build_model(pt_inputs["cfg"], "text4point", 128, None)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- data


def test_data_errors(pt_inputs, tmp_path):
    from text4point.pretrain.data import collate_frames
    from text4point.pretrain.pairs import PairDataset

    # a correspondence directory made from another scan
    bad = tmp_path / "corr"
    shutil.copytree(pt_inputs["corr"], bad)
    shutil.rmtree(bad / "train_0000")
    shutil.copytree(pt_inputs["corr"] / "train_0001", bad / "train_0000")
    with pytest.raises(InputError, match="correspondences do not match scan") as e:
        PairDataset(bad, pt_inputs["world"], ["train_0000"], 1000, 64, 0)
    assert "\n" not in str(e.value)
    # a batch whose frames have no match left
    empty = {"pos": np.zeros((4, 3), np.float32), "x": np.zeros((4, 3), np.float32),
             "m_point": np.zeros(0, np.int64), "m_cell": np.zeros(0, np.int64), "m_image": np.zeros(0, np.int64),
             "h2d": np.zeros((0, 8), np.float16), "name": "train_0000/frame 3", "cells": 36}
    with pytest.raises(InputError, match="train_0000/frame 3: no pixel-point matches"):
        collate_frames([empty])


def test_pair_matches_share_voxels(pt_inputs):
    from text4point.pretrain.pairs import PairDataset

    ds = PairDataset(pt_inputs["corr"], pt_inputs["world"], ["train_0000", "train_0001"], 100000, 100000, 0,
                     rotate=False)
    item = ds[(0, 0)]
    assert len(item["m_a"]) > 0
    va = np.floor(item["pos_a"][item["m_a"]] / ds.voxel_size)
    vb = np.floor(item["pos_b"][item["m_b"]] / ds.voxel_size)
    np.testing.assert_array_equal(va, vb)


# ---------------------------------------------------------------- engine


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_resume_is_exact(pt_inputs, tmp_path, monkeypatch):
    from text4point import training

    full = _run(pt_inputs, tmp_path / "full")
    assert full["steps"] == 2 * full["steps_per_epoch"]

    original = training.EpochSampler.set_epoch

    def killed_after_first_epoch(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt("killed")
        original(self, epoch)

    monkeypatch.setattr(training.EpochSampler, "set_epoch", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        _run(pt_inputs, tmp_path / "cut")
    assert sorted(p.name for p in (tmp_path / "cut" / "epochs").iterdir()) == ["epoch_0001.pt"]
    assert not (tmp_path / "cut" / "final.pt").exists()
    monkeypatch.setattr(training.EpochSampler, "set_epoch", original)
    resumed = _run(pt_inputs, tmp_path / "cut")
    assert resumed["resumed_from"].endswith("epoch_0001.pt")
    a, b = _state(tmp_path / "full" / "final.pt"), _state(tmp_path / "cut" / "final.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full["weights_sha256"] == resumed["weights_sha256"]

    ck = torch.load(tmp_path / "cut" / "epochs" / "epoch_0002.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "scaler", "epoch", "global_step", "rng", "params", "git_commit",
            "backbone", "clip_identity"} <= set(ck)
    assert ck["epoch"] == 2 and set(ck["rng"]) >= {"python", "numpy", "torch", "cuda", "loader"}
    meta = torch.load(tmp_path / "cut" / "final.pt", map_location="cpu", weights_only=True)["meta"]
    assert meta["weights_sha256"] == resumed["weights_sha256"] and meta["backbone"]["name"] == "pointnet2"

    # checkpoints of another backbone / another CLIP are refused in one line
    other = _cfg(pt_inputs, backbone="point_transformer")
    with pytest.raises(InputError, match=r"checkpoint .*epoch_0002.pt was made with backbone pointnet2 \(width 8\) "
                                         r"/ CLIP .*, but params ask for backbone point_transformer") as e:
        _run(pt_inputs, tmp_path / "cut", cfg=other)
    assert "\n" not in str(e.value)
    path = tmp_path / "cut" / "epochs" / "epoch_0002.pt"
    ck["clip_identity"] = dict(ck["clip_identity"], weights_sha256="0" * 64, model="ViT-B-16")
    torch.save(ck, path)
    with pytest.raises(InputError, match=r"was made with backbone pointnet2 \(width 8\) / CLIP ViT-B-16 .*but params "
                                         r"ask for backbone pointnet2 \(width 8\) / CLIP t4p-tiny"):
        _run(pt_inputs, tmp_path / "cut")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(pt_inputs, tmp_path, monkeypatch):
    from text4point.pretrain import model as model_mod

    calls = {"n": 0}
    original = model_mod.Text4PointModel.forward
    steps_per_epoch = 3  # 10 tiny train frames, batches of 4

    def poisoned(self, batch):
        calls["n"] += 1  # one forward per step
        out = original(self, batch)
        return {k: v * float("nan") for k, v in out.items()} if calls["n"] == steps_per_epoch + 2 else out

    monkeypatch.setattr(model_mod.Text4PointModel, "forward", poisoned)
    with pytest.raises(InputError, match=rf"pretrain text4point: non-finite loss at step {steps_per_epoch + 2} "
                                         r"\(epoch 2\): loss=nan, L_e=nan, L_d=nan; stopped") as e:
        _run(pt_inputs, tmp_path / "nan", log_every=2)
    assert "\n" not in str(e.value)
    names = sorted(p.name for p in (tmp_path / "nan" / "epochs").iterdir())
    assert names == ["epoch_0001.pt"]
    assert not (tmp_path / "nan" / "final.pt").exists()
    good = torch.load(tmp_path / "nan" / "epochs" / "epoch_0001.pt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


def test_tracked_run_with_zeroshot(pt_inputs, tmp_path, mlflow_sqlite):
    import mlflow

    cfg = _cfg(pt_inputs, epochs=1)
    m = _run(pt_inputs, tmp_path / "ic", variant="image_contrast", cfg=cfg, zeroshot_eval=True, track=True,
             log_every=1)
    for key in ("zeroshot_miou", "zeroshot_miou_random", "zeroshot_miou_teacher", "zeroshot_accuracy_teacher",
                "zeroshot_miou_covered", "zeroshot_accuracy_covered", "zeroshot_teacher_agreement"):
        assert 0.0 <= m[key] <= 1.0
    assert 0.0 < m["zeroshot_teacher_coverage"] <= 1.0  # the teacher sees part of every val scene's points
    run = mlflow.get_run(mlflow.search_runs(experiment_names=["text4point-test/pretrain"], output_format="list",
                                            max_results=1)[0].info.run_id)
    assert run.data.tags["variant"] == "image_contrast" and run.data.tags["backbone"] == "pointnet2"
    assert {"loss", "L_e", "L_d", "lr", "epoch_loss", "zeroshot_miou"} <= set(run.data.metrics)
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert len(history) == m["steps"]
    meta = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                               artifact_path="checkpoint_meta.json",
                                                               dst_path=str(tmp_path))).read_text())
    assert meta["weights_sha256"] == m["weights_sha256"] and meta["clip_identity"]["model"] == "t4p-tiny"

    p = _run(pt_inputs, tmp_path / "pc", variant="pointcontrast", cfg=cfg, zeroshot_eval=True)
    assert "zeroshot_miou" not in p and 0.0 <= p["zeroshot_miou_random"] <= 1.0
    assert "random network" in p["zeroshot_note"]


DDP_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from text4point.pretrain import PretrainJob, run_stage
a = json.loads(Path(sys.argv[1]).read_text())
torch.set_num_threads(1)
m = run_stage(PretrainJob(a["cfg"], a["world"], a["corr"], a["feat"], "text4point", a["out"], progress=False,
                          zeroshot_eval=False, track=False), "cpu")
import os
if os.environ["RANK"] == "0":
    Path(a["metrics"]).write_text(json.dumps(m))
"""


def test_ddp_two_processes(pt_inputs, tmp_path):
    cfg = _cfg(pt_inputs, epochs=1, batch_size=2)
    args = {"cfg": cfg, "world": str(pt_inputs["world"]), "corr": str(pt_inputs["corr"]),
            "feat": str(pt_inputs["feat"]), "out": str(tmp_path / "ddp" / "final.pt"),
            "metrics": str(tmp_path / "metrics.json")}
    (tmp_path / "args.json").write_text(json.dumps(args))
    (tmp_path / "ddp_job.py").write_text(DDP_SCRIPT)
    torchrun = Path(sys.executable).parent / "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(tmp_path / "ddp_job.py"),
                        str(tmp_path / "args.json")], capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["world_size"] == 2 and len(m["rank_weights_sha256"]) == 2
    assert m["ranks_identical"], m["rank_weights_sha256"]
    # 10 frames sharded over 2 ranks in batches of 2: 3 steps per rank
    assert m["steps"] == 3
    assert (tmp_path / "ddp" / "final.pt").exists() and (tmp_path / "ddp" / "epochs" / "epoch_0001.pt").exists()


# ---------------------------------------------------------------- zero-shot


def test_miou_hand_computed():
    from text4point.pretrain.zeroshot import confusion_matrix, iou_from_confusion

    gt = np.array([0, 0, 0, 1, 1, 2, 255, 255])
    pred = np.array([0, 0, 1, 1, 3, 2, 0, 3])
    conf = confusion_matrix(pred, gt, 5)
    miou, ious = iou_from_confusion(conf)
    # class 0: TP 2, FP 0, FN 1 -> 2/3; class 1: TP 1, FP 1, FN 1 -> 1/3; class 2: 1/1;
    # class 3: predicted once, never true -> 0; class 4: absent from both -> excluded
    assert ious == pytest.approx([2 / 3, 1 / 3, 1.0, 0.0, None])
    assert miou == pytest.approx((2 / 3 + 1 / 3 + 1.0 + 0.0) / 4)


def test_zeroshot_evaluate_tiny_world(pt_inputs):
    from text4point.pretrain import zeroshot
    from text4point.scene import Dataset

    batch, text = _batch(pt_inputs, "image_contrast")
    model = _model(pt_inputs["cfg"], "image_contrast", text)
    val = Dataset(pt_inputs["world"]).split("val")
    channels = tuple(pt_inputs["cfg"]["pretrain"]["channels"])
    r = zeroshot.evaluate(model, pt_inputs["world"], val, text, 0.1, "cpu", channels)
    assert 0.0 <= r["miou"] <= 1.0 and 0.0 <= r["accuracy"] <= 1.0 and r["points"] > 0
    # the same numbers by hand from the per-point predictions
    preds, gts = [], []
    for sid in val:
        cloud = Dataset(pt_inputs["world"]).scene(sid).points()
        preds.append(zeroshot.predict_points(model.eval(), cloud["xyz"], cloud["rgb"], text, 0.1, "cpu", channels))
        gts.append(cloud["semantic"].astype(np.int64))
    pred, gt = np.concatenate(preds), np.concatenate(gts)
    keep = gt != 255
    ious = []
    for c in range(20):
        tp = np.sum((pred == c) & (gt == c) & keep)
        union = np.sum(((pred == c) | (gt == c)) & keep)
        if union:
            ious.append(tp / union)
    assert r["miou"] == pytest.approx(float(np.mean(ious)))
    assert r["accuracy"] == pytest.approx(float(np.mean(pred[keep] == gt[keep])))


def test_zeroshot_against_the_teacher_scores_both_on_the_points_the_teacher_sees(pt_inputs):
    """evaluate(teacher=...): the network's scores restricted to the points the 2D teacher sees, the teacher's own
    (what teacher_ceiling reports) and their agreement, equal to the same numbers computed by hand."""
    import torch.nn.functional as F

    from text4point.clip.cache import load_features
    from text4point.metrics import confusion_matrix, iou_from_confusion
    from text4point.pretrain import zeroshot
    from text4point.pretrain.engine import clip_identity
    from text4point.scene import Dataset

    cfg = pt_inputs["cfg"]
    fc = load_features(pt_inputs["feat"], clip_identity(cfg, pt_inputs["feat"], None))
    _, text = _batch(pt_inputs, "image_contrast")
    model = _model(cfg, "image_contrast", text)
    ds = Dataset(pt_inputs["world"])
    val = ds.split("val")
    channels = tuple(cfg["pretrain"]["channels"])
    r = zeroshot.evaluate(model, pt_inputs["world"], val, text, 0.1, "cpu", channels, teacher=(fc, 0.05))
    assert r["teacher"] == zeroshot.teacher_ceiling(pt_inputs["world"], fc, val, text, 0.05)
    plain = zeroshot.evaluate(model, pt_inputs["world"], val, text, 0.1, "cpu", channels)
    assert r["miou"] == plain["miou"] and r["accuracy"] == plain["accuracy"]
    conf_net, conf_teacher = np.zeros((20, 20), np.int64), np.zeros((20, 20), np.int64)
    agree = seen_labelled = labelled = 0
    for sid in val:
        scene = ds.scene(sid)
        cloud = scene.points()
        gt = cloud["semantic"].astype(np.int64)
        pred = zeroshot.predict_points(model.eval(), cloud["xyz"], cloud["rgb"], text, 0.1, "cpu", channels)
        votes, seen = zeroshot.teacher_votes(scene, fc, sid, torch.as_tensor(cloud["xyz"], dtype=torch.float32),
                                             F.normalize(text.float(), dim=1), 0.05)
        seen = seen.numpy()
        by_teacher = votes.argmax(1).numpy()
        conf_net += confusion_matrix(pred[seen], gt[seen], 20)
        conf_teacher += confusion_matrix(by_teacher[seen], gt[seen], 20)
        keep = seen & (gt != 255)
        agree += int((pred[keep] == by_teacher[keep]).sum())
        seen_labelled += int(keep.sum())
        labelled += int((gt != 255).sum())
    assert 0 < seen_labelled < labelled  # the teacher sees part of the labelled points, not all
    assert r["covered"]["miou"] == pytest.approx(iou_from_confusion(conf_net)[0])
    assert r["covered"]["accuracy"] == pytest.approx(np.trace(conf_net) / conf_net.sum())
    assert r["teacher"]["miou"] == pytest.approx(iou_from_confusion(conf_teacher)[0])
    assert r["teacher"]["coverage"] == pytest.approx(seen_labelled / labelled)
    assert r["agreement"] == pytest.approx(agree / seen_labelled)


def test_cross_frame_param_adds_the_overlapping_frames_images_as_match_sources(pt_inputs):
    """pretrain.cross_frame: a frame's points are also matched with the images of the frames that overlap it."""
    from text4point.clip.cache import load_features
    from text4point.pretrain.data import build_dataset
    from text4point.pretrain.engine import clip_identity
    from text4point.scene import Dataset

    cfg = pt_inputs["cfg"]
    fc = load_features(pt_inputs["feat"], clip_identity(cfg, pt_inputs["feat"], None))
    ids = Dataset(pt_inputs["world"]).split("train")
    own, cross = (build_dataset("text4point", pt_inputs["corr"], pt_inputs["world"], fc, ids,
                                {**cfg["pretrain"], "cross_frame": on}, 0) for on in (False, True))
    n_own = sum(len(q) for src in own.sources for q in src.values())
    n_cross = sum(len(q) for src in cross.sources for q in src.values())
    assert n_own == sum(len(src) for src in own.sources)    # one source per frame: its own image
    assert n_cross > n_own
