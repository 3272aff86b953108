"""A catalogue of bad input, stage by stage.

Each kind either stops its stage with one line that names the file (or the params key), the field and what
was expected, with nothing under the final name of any output (``ERRORS``), or - where real data is known to
hold such defects - is skipped and counted, the count checked (``COUNTED``). Stages run in-process: the CLI's
``main([...])`` (exit status 2 and one ``error: ...`` line on stderr) or a stage's ``run_stage``/importer.
"""

from __future__ import annotations

import copy
import re
import shutil
import socket
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml

from text4point.errors import InputError

import spec_files as spec
from conftest import ROOT, TINY, data_section, load_yaml

pytestmark = pytest.mark.usefixtures("one_thread")

KNOWN_CORRESPONDENCES_KEYS = sorted(yaml.safe_load((ROOT / "workflow/schemas/params.schema.yaml").read_text())
                                    ["properties"]["correspondences"]["properties"])
_TINY = load_yaml(TINY)["pretrain"]
BACKBONE = {"name": "pointnet2", "width": _TINY["width"], "bottleneck_dim": _TINY["bottleneck_dim"],
            "out_dim": _TINY["out_dim"]}  # tests/configs/tiny.yaml's


# ================================================================ fixtures and helpers


@pytest.fixture(scope="module")
def checkpoints(one_epoch_checkpoints, tmp_path_factory) -> dict:
    """One-epoch pre-training checkpoints (pointcontrast, text4point) of the tiny world and a second random CLIP."""
    from text4point.clip.load import build_model

    root = tmp_path_factory.mktemp("bad_input_ck")
    out = dict(one_epoch_checkpoints["ckpts"])
    out["other_clip"] = root / "other_clip.pt"
    with torch.random.fork_rng():
        torch.manual_seed(123)
        torch.save({"state_dict": build_model("t4p-tiny").state_dict()}, out["other_clip"])
    return out


@dataclass
class Ctx:
    """What a case builds its bad input from: a fresh directory, the tiny world's stage outputs, checkpoints."""

    tmp: Path
    pt: dict
    ck: dict
    monkeypatch: pytest.MonkeyPatch

    @property
    def world(self) -> Path:  # shared, read-only: copy it (``world_copy``) to damage it
        return self.pt["world"]

    def params(self, mutate: Callable[[dict], None] | None = None, name: str = "params.yaml") -> Path:
        cfg = copy.deepcopy(self.pt["cfg"])
        if mutate:
            mutate(cfg)
        p = self.tmp / name
        p.write_text(yaml.safe_dump(cfg))
        return p

    def world_copy(self, train=("train_0000",), val=("val_0000",)) -> Path:
        """A writable copy of the tiny world holding only these scenes (empty clip split)."""
        root = self.tmp / "world"
        root.mkdir()
        shutil.copy(self.world / "dataset.json", root / "dataset.json")
        (root / "splits").mkdir()
        for split, ids in (("clip", ()), ("train", train), ("val", val)):
            (root / "splits" / f"{split}.txt").write_text("".join(f"{s}\n" for s in ids))
            for sid in ids:
                shutil.copytree(self.world / "scenes" / sid, root / "scenes" / sid)
        return root

    def cli(self, *args) -> Callable[[], None]:
        from text4point.cli import main

        quiet = [] if args[0] in ("figures", "show") else ["--quiet"]  # the commands that draw have no progress bars
        return lambda: main([str(a) for a in args] + quiet)

    def finetune(self, params: Path, init: str = "scratch", ck: Path | None = None, data: Path | None = None,
                 fraction: str = "1.0") -> tuple[Callable[[], None], tuple[Path, Path]]:
        out, pred = self.tmp / "ft" / "metrics.json", self.tmp / "ft" / "predictions.npz"
        args = ["finetune", "--params", params, "--task", "semseg", "--init", init, "--seed", "0", "--label-fraction",
                fraction, "--data", data or self.world, "--out", out, "--predictions", pred]
        if ck is not None:
            args += ["--init-checkpoint", ck]
        return self.cli(*args), (out, pred)

    def pretrain(self, params: Path, variant: str = "pointcontrast", data: Path | None = None,
                 corr: Path | None = None, features: bool = False) -> tuple[Callable[[], None], tuple[Path, Path]]:
        out, metrics = self.tmp / "pt" / "final.pt", self.tmp / "pt.json"
        args = ["pretrain", "--params", params, "--variant", variant, "--data", data or self.world, "--corr",
                corr or self.pt["corr"], "--out", out, "--metrics", metrics]
        if features:
            args += ["--features", self.pt["feat"]]
        return self.cli(*args), (out, metrics)

    def data(self, params: Path) -> tuple[Callable[[], None], tuple[Path, Path]]:
        out, metrics = self.tmp / "data" / "dataset", self.tmp / "data.json"
        return (self.cli("data", "--params", params, "--out", out, "--metrics", metrics, "--downloads",
                         self.tmp / "downloads"), (out, metrics))

    def correspondences(self, params: Path, data: Path | None = None, out: Path | None = None,
                        metrics: Path | None = None) -> tuple[Callable[[], None], tuple[Path, Path]]:
        out, metrics = out or self.tmp / "corr", metrics or self.tmp / "corr.json"
        return (self.cli("correspondences", "--params", params, "--data", data or self.world, "--out", out,
                         "--metrics", metrics), (out, metrics))


@pytest.fixture()
def ctx(tmp_path, pt_inputs, checkpoints, mlflow_sqlite, monkeypatch) -> Ctx:
    return Ctx(tmp_path, pt_inputs, checkpoints, monkeypatch)


def scannet_params(c: Ctx, root: Path) -> Path:
    def mutate(cfg):
        cfg["data"]["source"] = "scannet"
        cfg["data"]["scannet"].update(path=str(root), frame_skip=1)

    return c.params(mutate)


def scannet_release(c: Ctx, scene: dict | None = None, **kw) -> Path:
    return spec.write_scannet_release(c.tmp / "release", {"scene0000_00": scene or spec.scannet_scene(n_frames=3)},
                                      train=["scene0000_00"], val=["scene0000_00"], **kw)


def kept_frame(c: Ctx, sid: str = "train_0000") -> int:
    """A frame that the correspondences stage kept (valid pose, depth and colour) in the undamaged world."""
    return int(np.load(c.pt["corr"] / sid / "frames.npy")[0])


def sha12(path: Path) -> str:
    from text4point.fsutil import sha256_file

    return sha256_file(path)[:12]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_not_written(path: Path) -> None:
    """Nothing under the final name, and no temporary of it (``.<name>.*.tmp``) beside it."""
    assert not path.exists(), f"{path} was left behind"
    if path.parent.is_dir():
        left = [p.name for p in path.parent.glob(f".{path.name}.*.tmp")]
        assert not left, f"temporaries of {path} were left behind: {left}"


# ================================================================ the catalogue: one-line errors


@dataclass
class Bad:
    """A stage call on bad input, the regular expression its one-line message must match in full, and the final
    outputs that must not exist afterwards."""

    call: Callable[[], object]
    message: str
    outputs: tuple[Path, ...] = ()
    error: type[Exception] = InputError  # what an in-process library call raises (the CLI exits with status 2)


ERRORS: list = []  # pytest.param(make), make(ctx) -> Bad; the id is "<stage>:<kind>"


def register(table: list, kind: str, stage: str):
    def add(make):
        table.append(pytest.param(make, id=f"{stage.split()[0]}:{re.sub(r'[^a-z0-9]+', '-', kind.lower()).strip('-')}"))
        return make

    return add


def fails(kind: str, stage: str):
    """Register a one-line-error entry of the catalogue: ``make(ctx) -> Bad``."""
    return register(ERRORS, kind, stage)


E = re.escape


# ---------------------------------------------------------------- params, tracking, output paths


@fails("params typo (unknown key)", "correspondences (CLI)")
def _(c: Ctx) -> Bad:
    p = c.params(lambda cfg: cfg["correspondences"].update(voxel_sise=0.05))
    call, outputs = c.correspondences(p)
    return Bad(call, E(f"{p}: correspondences.voxel_sise: unknown key; expected one of the known keys "
                       f"{KNOWN_CORRESPONDENCES_KEYS}"), outputs)


@fails("out-of-range param", "correspondences (CLI)")
def _(c: Ctx) -> Bad:
    p = c.params(lambda cfg: cfg["correspondences"].update(overlap_threshold=1.5))
    call, outputs = c.correspondences(p)
    return Bad(call, E(f"{p}: correspondences.overlap_threshold: expected a value >= 0.0 and <= 1.0, got 1.5"),
               outputs)


@fails("tracking server down", "data (CLI)")
def _(c: Ctx) -> Bad:
    uri = f"http://127.0.0.1:{free_port()}"
    c.monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    call, outputs = c.data(c.params())
    return Bad(call, E(f"MLflow tracking server {uri} is unreachable (") + r"\[Errno \d+\] Connection refused"
               + E("); start it or set MLFLOW_TRACKING_URI"), outputs)


def _blocker(c: Ctx) -> Path:
    """A regular file where an output's directory should be."""
    blocker = c.tmp / "a_file"
    blocker.write_text("not a directory\n")
    return blocker


def _not_writable(path: Path, blocker: Path) -> str:
    return E(f"{path}: output path: expected a location in a writable directory, got {blocker} (not a directory)")


@fails("output path not writable (--out under a regular file)", "correspondences (CLI)")
def _(c: Ctx) -> Bad:
    blocker = _blocker(c)
    out = blocker / "corr"
    call, (_, metrics) = c.correspondences(c.params(), out=out)
    return Bad(call, _not_writable(out, blocker), (out, metrics))


@fails("metrics path not writable: the stage stops before writing its main output", "correspondences (CLI)")
def _(c: Ctx) -> Bad:
    blocker = _blocker(c)
    metrics = blocker / "sub" / "corr.json"
    call, (out, _) = c.correspondences(c.params(), metrics=metrics)
    return Bad(call, _not_writable(metrics, blocker), (out, metrics))


@fails("atomic write under a regular file", "fsutil (every writer)")
def _(c: Ctx) -> Bad:
    from text4point.fsutil import write_json

    blocker = _blocker(c)
    target = blocker / "stats.json"
    return Bad(lambda: write_json(target, {}), _not_writable(target, blocker), (target,))


# ---------------------------------------------------------------- real-data import


@fails("wrong .sens version", "data (ScanNet import, CLI)")
def _(c: Ctx) -> Bad:
    root = scannet_release(c)
    sens = root / "scans" / "scene0000_00" / "scene0000_00.sens"
    spec.write_sens(sens, spec.make_frames(2), version=3)
    call, outputs = c.data(scannet_params(c, root))
    return Bad(call, E(f"{sens}: version: expected 4, got 3"), outputs)


@fails("truncated .sens frame", "data (ScanNet import, CLI)")
def _(c: Ctx) -> Bad:
    root = scannet_release(c)
    sens = root / "scans" / "scene0000_00" / "scene0000_00.sens"
    frames = spec.make_frames(3)
    spec.write_sens(sens, frames, truncate=10)
    need = 96 + len(frames[2]["color_jpeg"]) + len(zlib.compress(frames[2]["depth"].astype("<u2").tobytes()))
    call, outputs = c.data(scannet_params(c, root))
    return Bad(call, E(f"{sens}: frame 2: truncated: expected {need} bytes (header + colour + depth), only "
                       f"{need - 10} bytes left in the file"), outputs)


@fails("label id outside the mapping (label table nyu40id 99)", "data (ScanNet import, CLI)")
def _(c: Ctx) -> Bad:
    root = scannet_release(c, tsv_rows=spec.TSV_ROWS + [("lamp", 99)])
    call, outputs = c.data(scannet_params(c, root))
    return Bad(call, E(f"{root / 'scannetv2-labels.combined.tsv'}: row 7 (raw_category 'lamp'): nyu40id: expected "
                       f"an integer in 0..40, got '99'"), outputs)


@fails("empty scene (ScanNet mesh without vertices)", "data (ScanNet import, CLI)")
def _(c: Ctx) -> Bad:
    scene = spec.scannet_scene(n_frames=2)
    scene.update(xyz=scene["xyz"][:0], rgb=scene["rgb"][:0], seg=scene["seg"][:0], faces=scene["faces"][:0])
    root = scannet_release(c, scene)
    call, outputs = c.data(scannet_params(c, root))
    mesh = root / "scans" / "scene0000_00" / "scene0000_00_vh_clean_2.ply"
    return Bad(call, E(f"{mesh}: vertex: expected at least one vertex (empty scene), got 0"), outputs)


@fails("empty scene (S3DIS room whose annotation files hold no point)", "data (S3DIS import, CLI)")
def _(c: Ctx) -> Bad:
    rel = c.tmp / "s3dis"
    spec.write_s3dis_room(rel, 1, "office_1", [("chair", 1, spec.s3dis_points(20, 0))])
    ann = spec.write_s3dis_room(rel, 5, "office_1", [("chair", 1, spec.s3dis_points(20, 1))])
    (ann / "chair_1.txt").write_text("")

    def mutate(cfg):
        cfg["data"]["source"] = "s3dis"
        cfg["data"]["pretrain_source"] = "world"     # S3DIS has no RGB-D frames
        cfg["data"]["s3dis"]["path"] = str(rel)

    call, (out, metrics) = c.data(c.params(mutate))
    # the train room before it is imported and kept for a rerun (importers.runner); the dataset is not complete
    return Bad(call, E(f"{ann}: points: expected at least one point in its annotation files (empty scene), got 0"),
               (out / "dataset.json", metrics))


@fails(".sens header claiming more frames than it holds (the IMU block follows)", "data (ScanNet import, CLI)")
def _(c: Ctx) -> Bad:
    root = scannet_release(c)
    sens = root / "scans" / "scene0000_00" / "scene0000_00.sens"
    spec.write_sens(sens, spec.make_frames(3), imu=4, num_frames=5)
    call, outputs = c.data(scannet_params(c, root))
    return Bad(call, E(f"{sens}: header: 5 frames, file: 3"), outputs)


@fails("malformed axisAlignment in <scene>.txt", "data (ScanNet import, CLI)")
def _(c: Ctx) -> Bad:
    root = scannet_release(c)
    txt = root / "scans" / "scene0000_00" / "scene0000_00.txt"
    txt.write_text("axisAlignment = 1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 x\n")
    call, outputs = c.data(scannet_params(c, root))
    return Bad(call, E(f"{txt}: line 1 (axisAlignment): expected 16 finite numbers (a 4x4 matrix, row by row), "
                       f"got '1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 x'"), outputs)


def sunrgbd_release(c: Ctx) -> Path:
    seqs = ["SUNRGBD/kv1/NYUdata/NYU0001", "SUNRGBD/kv2/kinect2data/000002_x"]
    frames = [spec.sunrgbd_frame(k, s) for k, s in enumerate(seqs)]
    return spec.write_sunrgbd_release(c.tmp / "sunrgbd", frames, train=seqs[:1], val=seqs[1:])


def sunrgbd_params(c: Ctx, root: Path) -> Path:
    def mutate(cfg):
        cfg["data"]["source"] = "sunrgbd"
        cfg["data"]["sunrgbd"]["path"] = str(root)

    return c.params(mutate)


@fails("SUN RGB-D without its metadata (SUNRGBDMeta.mat)", "data (SUN RGB-D import, CLI)")
def _(c: Ctx) -> Bad:
    root = sunrgbd_release(c)
    meta = root / "SUNRGBDtoolbox" / "Metadata" / "SUNRGBDMeta.mat"
    meta.unlink()
    call, outputs = c.data(sunrgbd_params(c, root))
    return Bad(call, E(f"{meta}: file not found (SUN RGB-D's metadata; or {root / 'SUNRGBDMeta3DBB_v2.mat'})"),
               outputs)


@fails("SUN RGB-D depth image that is not 16-bit", "data (SUN RGB-D import, CLI)")
def _(c: Ctx) -> Bad:
    from PIL import Image

    root = sunrgbd_release(c)
    depth = root / "SUNRGBD/kv1/NYUdata/NYU0001/depth/NYU0001.png"
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(depth)
    call, outputs = c.data(sunrgbd_params(c, root))
    return Bad(call, E(f"{depth}: depth: expected a single-channel 16-bit PNG, got 'uint8 of shape (12, 16)'"),
               outputs)


@fails("archive member with dot-dot (../) in its path", "data (ScanNet archive, CLI)")
def _(c: Ctx) -> Bad:
    archive = c.tmp / "release.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("release/scannetv2_train.txt", "scene0000_00\n")
        zf.writestr("release/../../evil.txt", "escaped\n")
    call, outputs = c.data(scannet_params(c, archive))
    return Bad(call, E(f"{archive}: member 'release/../../evil.txt': expected a relative path inside the archive, "
                       f"got a path outside it (nothing was extracted)"),
               outputs + (c.tmp / "downloads" / "scannet", c.tmp / "evil.txt", c.tmp.parent / "evil.txt"))


# ---------------------------------------------------------------- scans: correspondences


@fails("missing intrinsics", "correspondences (CLI)")
def _(c: Ctx) -> Bad:
    world = c.world_copy()
    missing = world / "scenes" / "train_0000" / "intrinsic" / "intrinsic_depth.txt"
    missing.unlink()
    call, outputs = c.correspondences(c.params(), data=world)
    return Bad(call, E(f"{missing}: file not found (each scene needs intrinsic_color.txt, intrinsic_depth.txt, "
                       f"extrinsic_color.txt, extrinsic_depth.txt)"), outputs)


# ---------------------------------------------------------------- CLIP


@fails("clip-split label image of another size than its colour image", "clip_bootstrap crops (library)")
def _(c: Ctx) -> Bad:
    from PIL import Image

    from text4point.clip.crops import frame_crops
    from text4point.scene import Dataset

    world = c.world_copy()
    label = world / "scenes" / "train_0000" / "label" / "0.png"
    img = Image.open(label)
    img.resize((img.width // 2, img.height // 2), Image.NEAREST).save(label)
    ds = Dataset(world)
    scene = ds.scene("train_0000")
    cw, ch = scene.meta["color_size"]
    return Bad(lambda: frame_crops(scene, 0, ds.label_set, 32, 20, 4, None),
               E(f"{label}: expected {cw}x{ch} (the colour image's size), got {cw // 2}x{ch // 2}"))


@fails("unknown CLIP model", "clip_features (CLI)")
def _(c: Ctx) -> Bad:
    from text4point.clip.load import model_names_hint

    out, metrics = c.tmp / "feat", c.tmp / "feat.json"
    call = c.cli("clip-features", "--params", c.params(lambda cfg: cfg["clip"].update(model="ViT-Q-99")), "--data",
                 c.world, "--out", out, "--metrics", metrics)
    return Bad(call, E(f"clip.model: expected one of open_clip's models (e.g. {model_names_hint()}), got 'ViT-Q-99'"),
               (out, metrics))


@fails("unavailable pretrained tag (offline)", "clip_features (CLI)")
def _(c: Ctx) -> Bad:
    import huggingface_hub.constants

    c.monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    out, metrics = c.tmp / "feat", c.tmp / "feat.json"
    p = c.params(lambda cfg: cfg["clip"].update(model="ViT-B-32", pretrained="laion2b_s34b_b79k"))
    call = c.cli("clip-features", "--params", p, "--data", c.world, "--out", out, "--metrics", metrics)
    return Bad(call, E("clip.pretrained: cannot fetch open_clip weights 'laion2b_s34b_b79k' of model ViT-B-32 "
                       "(offline? ") + r"[^\n]+" + E("); set clip.pretrained to a local checkpoint path instead"),
               (out, metrics))


@fails("unknown pretrained tag", "clip_features (CLI)")
def _(c: Ctx) -> Bad:
    out, metrics = c.tmp / "feat", c.tmp / "feat.json"
    p = c.params(lambda cfg: cfg["clip"].update(pretrained="no-such-tag"))
    call = c.cli("clip-features", "--params", p, "--data", c.world, "--out", out, "--metrics", metrics)
    return Bad(call, E("clip.pretrained: 'no-such-tag' is neither 'bootstrap', an existing checkpoint file, nor an "
                       "open_clip pretrained tag of model t4p-tiny (open_clip has no pretrained tags for it)"),
               (out, metrics))


# ---------------------------------------------------------------- pre-training


@fails("empty split (train)", "pretrain (CLI)")
def _(c: Ctx) -> Bad:
    world = c.world_copy(train=())
    call, outputs = c.pretrain(c.params(), data=world)
    return Bad(call, E(f"{world / 'splits' / 'train.txt'}: scene ids: expected at least one (split 'train' is "
                       f"empty)"), outputs)


@fails("correspondences of another scan", "pretrain (CLI)")
def _(c: Ctx) -> Bad:
    corr = c.tmp / "corr"
    shutil.copytree(c.pt["corr"], corr)
    shutil.rmtree(corr / "train_0000")
    shutil.copytree(c.pt["corr"] / "train_0001", corr / "train_0000")
    call, outputs = c.pretrain(c.params(), corr=corr)
    return Bad(call, E(f"{corr / 'train_0000'}: correspondences do not match scan {c.world / 'scenes' / 'train_0000'}"
                       f": scene id 'train_0001', the scan is 'train_0000'"), outputs)


@fails("CLIP features of another CLIP", "pretrain (CLI)")
def _(c: Ctx) -> Bad:
    import json

    other = c.ck["other_clip"]
    made = json.loads((c.pt["feat"] / "manifest.json").read_text())["identity"]
    call, outputs = c.pretrain(c.params(lambda cfg: cfg["clip"].update(pretrained=str(other))), variant="text4point",
                               features=True)
    return Bad(call, E(f"{c.pt['feat'] / 'manifest.json'}: CLIP features were made with model 't4p-tiny' "
                       f"({made['pretrained']}, weights sha256 {made['weights_sha256'][:12]}...), expected model "
                       f"'t4p-tiny' ({other}, weights sha256 {sha12(other)}...) (rerun the clip_features stage)"),
               outputs)


@fails("resume from an epoch checkpoint of another backbone", "pretrain (CLI)")
def _(c: Ctx) -> Bad:
    epoch = c.tmp / "pt" / "epochs" / "epoch_0001.pt"
    epoch.parent.mkdir(parents=True)
    shutil.copy(c.ck["pointcontrast"].parent / "epochs" / "epoch_0001.pt", epoch)
    clip = Path(c.pt["cfg"]["clip"]["pretrained"])  # the checkpoint's job had the features (its zero-shot baseline)
    call, outputs = c.pretrain(c.params(lambda cfg: cfg["pretrain"].update(backbone="point_transformer")))
    return Bad(call, E(f"checkpoint {epoch} was made with backbone pointnet2 (width 8) / CLIP t4p-tiny ({clip}, "
                       f"sha256 {sha12(clip)}), but params ask for backbone point_transformer (width 8) / CLIP none"),
               outputs)


@fails("truncated CLIP feature file (features.npy)", "pretrain (CLI)")
def _(c: Ctx) -> Bad:
    feat = c.tmp / "feat"
    shutil.copytree(c.pt["feat"], feat)
    npy = feat / "train_0000" / "features.npy"
    npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])
    out, metrics = c.tmp / "pt" / "final.pt", c.tmp / "pt.json"
    call = c.cli("pretrain", "--params", c.params(), "--variant", "text4point", "--data", c.world, "--corr",
                 c.pt["corr"], "--features", feat, "--out", out, "--metrics", metrics)
    return Bad(call, E(f"{npy}: not a readable .npy file (") + "mmap length is greater than file size"
               + E("); rerun the stage that writes it"), (out, metrics))


@fails("an init whose pre-training variant is not run (pretrain.variants empty)", "params (CLI)")
def _(c: Ctx) -> Bad:
    def mutate(cfg):
        cfg["pretrain"]["variants"] = []
        cfg["finetune"]["inits"] = ["scratch", "text4point"]
        cfg.pop("variations", None)

    from text4point.cli import main

    p = c.params(mutate)
    return Bad(lambda: main(["validate-params", str(p)]),
               E(f"{p}: finetune.inits: 'text4point' starts from the text4point pre-training, but pretrain.variants "
                 f"[] does not run it (add it there or drop the init)"))


# ---------------------------------------------------------------- fine-tuning


@fails("empty scene (points.ply without points)", "finetune (CLI)")
def _(c: Ctx) -> Bad:
    from text4point.scene import write_points

    world = c.world_copy()
    ply = world / "scenes" / "train_0000" / "points.ply"
    write_points(ply, np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0))
    call, outputs = c.finetune(c.params(), data=world)
    return Bad(call, E(f"{ply}: vertex: expected at least one point (empty scene), got 0"), outputs)


@fails("label id outside the label set (points.ply semantic 40)", "finetune (CLI)")
def _(c: Ctx) -> Bad:
    from text4point.scene import read_points, write_points

    world = c.world_copy()
    ply = world / "scenes" / "val_0000" / "points.ply"
    pts = read_points(ply)
    pts["semantic"][3] = 40
    write_points(ply, pts["xyz"], pts["rgb"], pts["semantic"], pts["instance"])
    call, outputs = c.finetune(c.params(), data=world)
    return Bad(call, E(f"{ply}: field semantic: expected ids in [0, 20) or 255, got 40"), outputs)


@fails("empty split (val)", "finetune (CLI)")
def _(c: Ctx) -> Bad:
    world = c.world_copy(val=())
    call, outputs = c.finetune(c.params(), data=world)
    return Bad(call, E(f"{world / 'splits' / 'val.txt'}: scene ids: expected at least one (split 'val' is empty)"),
               outputs)


@fails("label fraction that leaves no scenes", "finetune (CLI)")
def _(c: Ctx) -> Bad:
    call, outputs = c.finetune(c.params(), fraction="0")
    return Bad(call, E("finetune.label_fractions: expected values in (0, 1], got 0.0"), outputs)


@fails("checkpoint from another backbone", "finetune (CLI)")
def _(c: Ctx) -> Bad:
    call, outputs = c.finetune(c.params(lambda cfg: cfg["pretrain"].update(width=16)), "pointcontrast",
                               c.ck["pointcontrast"])
    return Bad(call, E(f"checkpoint {c.ck['pointcontrast']} was made with backbone {BACKBONE}, but params ask for "
                       f"{dict(BACKBONE, width=16)}"), outputs)


@fails("checkpoint from another CLIP model", "finetune (CLI)")
def _(c: Ctx) -> Bad:
    other, made = c.ck["other_clip"], Path(c.pt["cfg"]["clip"]["pretrained"])
    call, outputs = c.finetune(c.params(lambda cfg: cfg["clip"].update(pretrained=str(other))), "text4point",
                               c.ck["text4point"])
    return Bad(call, E(f"checkpoint {c.ck['text4point']} was pre-trained with CLIP t4p-tiny (sha256 {sha12(made)}), "
                       f"but params give t4p-tiny (sha256 {sha12(other)})"), outputs)


@fails("checkpoint whose weights do not fit the fine-tuning network", "finetune (CLI)")
def _(c: Ctx) -> Bad:
    from text4point.models import build_backbone

    ck = torch.load(c.ck["pointcontrast"], map_location="cpu", weights_only=True)
    wide = build_backbone("pointnet2", in_channels=3, width=16, bottleneck_dim=32, out_dim=16).state_dict()
    ck["model"] = {f"backbone.{k}": v for k, v in wide.items()}  # the metadata still says width 8
    path = c.tmp / "tampered.pt"
    torch.save(ck, path)
    call, outputs = c.finetune(c.params(), "pointcontrast", path)
    shape = r"torch\.Size\(\[\d+(, \d+)*\]\)"
    return Bad(call, E(f"checkpoint {path}: does not fit this model (size mismatch for ") + r"[\w.]+: copying a param "
               rf"with shape {shape} from checkpoint, the shape in current model is {shape}\.\)", outputs)


@fails("truncated checkpoint file", "finetune (CLI)")
def _(c: Ctx) -> Bad:
    path = c.tmp / "truncated.pt"
    data = c.ck["pointcontrast"].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    call, outputs = c.finetune(c.params(), "pointcontrast", path)
    return Bad(call, E(f"{path}: not a readable checkpoint (") + r"\w+: [^\n]+\)", outputs)


# ---------------------------------------------------------------- evaluation and figures


@fails("predictions with a class id outside the label set", "metrics (library: ValueError)")
def _(c: Ctx) -> Bad:
    from text4point.metrics import confusion_matrix

    gt = np.arange(30) % 20
    pred = gt.copy()
    pred[7] = 25
    return Bad(lambda: confusion_matrix(pred, gt, 20), E("pred: expected class ids in [0, 20), got 0..25"),
               error=ValueError)


@fails("predictions with a class id outside the label set", "figures (CLI)")
def _(c: Ctx) -> Bad:
    from text4point.fsutil import write_json
    from text4point.runs import run_path
    from text4point.scene import Dataset

    ft_dir, out = c.tmp / "finetune", c.tmp / "figures"
    metrics = run_path(ft_dir, "semseg", "scratch", 0, 1.0)
    write_json(metrics, {"loss_steps": [1, 2], "loss_history": [2.0, 1.5], "per_class": {"wall": 0.5}})
    n = len(Dataset(c.world).scene("val_0000").points()["xyz"])
    semantic = np.zeros(n, np.uint8)
    semantic[5] = 40
    npz = metrics.with_name("predictions.npz")
    np.savez_compressed(npz, **{"val_0000/semantic": semantic})

    def mutate(cfg):
        cfg["finetune"].update(tasks=["semseg"], inits=["scratch"], seeds=[0], label_fractions=[1.0])
        cfg["variations"] = {}

    call = c.cli("figures", "--params", c.params(mutate), "--data", c.world, "--finetune-dir", ft_dir, "--out-dir",
                 out, "--scenes", "1")
    return Bad(call, E(f"{npz}: val_0000/semantic: expected class ids in [0, 20) or 255, got 40"), (out,))


def one_line_error(bad: Bad, capsys) -> str:
    """Run the call: the CLI must exit with status 2 and print one ``error: ...`` line on stderr; a library call
    must raise ``bad.error`` with a one-line message. Returns the message."""
    capsys.readouterr()
    try:
        bad.call()
    except SystemExit as e:
        err = capsys.readouterr().err
        assert e.code == 2, err
        assert err.startswith("error: ") and err.count("\n") == 1 and err.endswith("\n"), err
        assert "Traceback" not in err
        return err[len("error: "):-1]
    except bad.error as e:
        msg = str(e)
        assert msg and "\n" not in msg and msg == msg.strip(), msg
        return msg
    pytest.fail("the bad input was accepted")


@pytest.mark.parametrize("make", ERRORS)
def test_bad_input_stops_in_one_line_and_leaves_no_output(make, ctx, capsys):
    bad = make(ctx)
    msg = one_line_error(bad, capsys)
    assert re.fullmatch(bad.message, msg), f"\n got: {msg}\nwant: {bad.message}"
    for p in bad.outputs:
        assert_not_written(p)


# ================================================================ the catalogue: skipped and counted


@dataclass
class Counted:
    """The counts a stage reported for the defects of one damaged input, the counts expected, and the output
    directory (complete: a manifest and no temporaries)."""

    got: dict
    want: dict
    out: Path


COUNTED: list = []  # pytest.param(make), make(ctx) -> Counted


def counted(kind: str, stage: str):
    """Register a skipped-and-counted entry of the catalogue: ``make(ctx) -> Counted``."""
    return register(COUNTED, kind, stage)


def correspondences_counts(c: Ctx, damage: Callable[[Path, int], None]) -> Counted:
    """Run the correspondences stage on a world copy whose train_0000 frame ``i`` (kept when undamaged) is
    damaged; the expected counts are the undamaged run's plus the change ``damage`` returns."""
    import json

    from text4point import correspondences

    world = c.world_copy()
    i = kept_frame(c)
    change = damage(world / "scenes" / "train_0000", i)
    out = c.tmp / "corr"
    out.mkdir()
    result = correspondences.run_stage(c.pt["cfg"], world, out, "cpu", progress=False)
    before = json.loads((c.pt["corr"] / "train_0000" / "scene_stats.json").read_text())
    (stats,) = [s for s in result["per_scene"] if s["scene_id"] == "train_0000"]
    want = {**before["skipped"], **{k: before["skipped"][k] + v for k, v in change.items()}}
    got = dict(stats["skipped"])
    assert stats["frames_kept"] == before["frames_kept"] - 1
    return Counted(got, want, out)


def truncated(kind: str, suffix: str, keep: float) -> Callable[[Ctx], Counted]:
    """A frame's image of ``kind`` cut to ``keep`` of its bytes: a corrupt image, skipped and counted."""
    def make(c: Ctx) -> Counted:
        def damage(scene: Path, i: int) -> dict:
            p = scene / kind / f"{i}.{suffix}"
            p.write_bytes(p.read_bytes()[: int(p.stat().st_size * keep)])
            return {"corrupt_image": 1}

        return correspondences_counts(c, damage)
    return make


counted("truncated colour image", "correspondences")(truncated("color", "jpg", 1 / 3))


@counted("corrupt depth image", "correspondences")
def _(c: Ctx) -> Counted:
    def damage(scene: Path, i: int) -> dict:
        (scene / "depth" / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n but not a PNG after all")
        return {"corrupt_image": 1}

    return correspondences_counts(c, damage)


counted("truncated depth image", "correspondences")(truncated("depth", "png", 1 / 2))


def non_finite_pose(value: str) -> Callable[[Ctx], Counted]:
    def make(c: Ctx) -> Counted:
        def damage(scene: Path, i: int) -> dict:
            p = scene / "pose" / f"{i}.txt"
            rows = p.read_text().splitlines()
            rows[1] = f"0 {value} 0 0"
            p.write_text("\n".join(rows) + "\n")
            return {"invalid_pose": 1}

        return correspondences_counts(c, damage)

    return make


for value in ("nan", "inf"):
    counted(f"{value.upper()} pose", "correspondences")(non_finite_pose(value))


@counted("colour/depth frame count mismatch", "correspondences")
def _(c: Ctx) -> Counted:
    def damage(scene: Path, i: int) -> dict:
        (scene / "depth" / f"{i}.png").unlink()
        return {"color_depth_mismatch": 1, "missing_image": 1}

    return correspondences_counts(c, damage)


@counted("truncated colour image", "clip_features")
def _(c: Ctx) -> Counted:
    import json

    from text4point.clip import features

    world = c.world_copy(val=())
    p = world / "scenes" / "train_0000" / "color" / "2.jpg"
    p.write_bytes(p.read_bytes()[:200])
    out = c.tmp / "feat"
    result = features.run_stage(c.pt["cfg"], world, out, "cpu", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    n = len(np.load(out / "train_0000" / "frames.npy"))
    return Counted({**result["skipped"], "frames": n, "manifest_frames": manifest["scenes"]["train_0000"]["frames"]},
                   {"corrupt_image": 1, "frames": 5, "manifest_frames": 5}, out)


@counted("undecodable .sens frame, lost poses, raw categories outside the label table", "data (ScanNet import)")
def _(c: Ctx) -> Counted:
    from text4point.importers.scannet import import_scannet

    scenes = {"scene0000_00": spec.scannet_scene(seed=0, n_frames=4, invalid=(2,)),  # each holds one object of a
              "scene0001_00": spec.scannet_scene(seed=1, n_frames=4, invalid=(0, 3))}  # category the tsv lacks
    scenes["scene0000_00"]["frames"][1]["color_jpeg"] = b"not a jpeg" * 8
    root = spec.write_scannet_release(c.tmp / "release", scenes, train=["scene0000_00"], val=["scene0001_00"])
    out = c.tmp / "out"
    stats = import_scannet(data_section("scannet", path=str(root), frame_skip=1), out, c.tmp / "downloads",
                           progress=False)
    assert stats["frames"] == 3 + 4
    return Counted(stats["defects"], {"corrupt_frame": 1, "invalid_pose": 1 + 2, "unknown_label": 2,
                                      "unknown_segment": 2}, out)  # spec.scannet_scene lists a segment 99


def scannet_counts(c: Ctx, scene_damage: Callable[[dict], None] | None = None,
                   file_damage: Callable[[Path], None] | None = None) -> tuple[dict, Path]:
    """Import a one-scene release (spec.scannet_scene, 4 frames, frame_skip 1) damaged before it is written
    (``scene_damage(scene)``) or after (``file_damage(scan_dir)``); return the counted defects less the undamaged
    scene's own (its segment 99, its raw category outside the label table)."""
    from text4point.importers.scannet import import_scannet

    scene = spec.scannet_scene(seed=0, n_frames=4, invalid=())
    if scene_damage:
        scene_damage(scene)
    root = spec.write_scannet_release(c.tmp / "release", {"scene0000_00": scene}, train=["scene0000_00"],
                                      val=["scene0000_00"])
    if file_damage:
        file_damage(root / "scans" / "scene0000_00")
    out = c.tmp / "out"
    stats = import_scannet(data_section("scannet", path=str(root), frame_skip=1), out, c.tmp / "downloads",
                           progress=False)
    got = dict(stats["defects"])
    got["unknown_segment"] -= 1
    got["unknown_label"] -= 1  # "mystery thing"
    return {k: v for k, v in got.items() if v}, out


@counted("truncated and zeroed-header JPEG colour in a .sens", "data (ScanNet import)")
def _(c: Ctx) -> Counted:
    def damage(scene: dict) -> None:
        fr = scene["frames"]
        fr[1]["color_jpeg"] = fr[1]["color_jpeg"][:-200]
        fr[2]["color_jpeg"] = b"\0" * 20 + fr[2]["color_jpeg"][20:]

    got, out = scannet_counts(c, scene_damage=damage)
    return Counted(got, {"corrupt_frame": 2}, out)


@counted("aggregation segments that segIndices lacks, objects left without a vertex", "data (ScanNet import)")
def _(c: Ctx) -> Counted:
    def damage(scene: dict) -> None:
        scene["groups"] = scene["groups"] + [{"id": 5, "objectId": 7, "label": "chair", "segments": [123, 124]},
                                             {"id": 6, "objectId": 8, "label": "table", "segments": [5]}]

    got, out = scannet_counts(c, scene_damage=damage)  # object 0 (chair, segment 5) loses its vertices to object 8
    return Counted(got, {"unknown_segment": 2, "empty_object": 2}, out)


@counted("damaged optional _vh_clean_2.labels.ply", "data (ScanNet import)")
def _(c: Ctx) -> Counted:
    def damage(scan: Path) -> None:
        (scan / "scene0000_00_vh_clean_2.labels.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\n")

    got, out = scannet_counts(c, file_damage=damage)
    return Counted(got, {"bad_labels_ply": 1}, out)


@counted("scan without axisAlignment (no <scene>.txt)", "data (ScanNet import)")
def _(c: Ctx) -> Counted:
    got, out = scannet_counts(c, file_damage=lambda scan: (scan / "scene0000_00.txt").unlink())
    return Counted(got, {"missing_axis_alignment": 1}, out)


@counted("SUN RGB-D images in no split list, images not downloaded", "data (SUN RGB-D import)")
def _(c: Ctx) -> Counted:
    from text4point.importers.sunrgbd import import_sunrgbd

    seqs = [f"SUNRGBD/kv1/NYUdata/NYU000{k}" for k in range(1, 6)]
    frames = [spec.sunrgbd_frame(k, s, boxes=[spec.sun_box("sofa", [0, 3, 0], [0.5, 0.5, 0.5], 0.1)])
              for k, s in enumerate(seqs)]
    root = spec.write_sunrgbd_release(c.tmp / "sunrgbd", frames, train=seqs[:2], val=seqs[2:4], missing=(seqs[3],))
    out = c.tmp / "out"
    stats = import_sunrgbd(data_section("sunrgbd", path=str(root)), out, c.tmp / "downloads", progress=False)
    assert stats["scenes"] == {"clip": 0, "train": 2, "val": 1}
    return Counted(stats["defects"], {"not_in_split": 1, "missing_scene": 1}, out)


@counted("malformed and non-finite annotation lines", "data (S3DIS import)")
def _(c: Ctx) -> Counted:
    from text4point.importers.s3dis import import_s3dis

    rel = c.tmp / "s3dis"
    spec.write_s3dis_room(rel, 1, "office_1", [("chair", 1, spec.s3dis_points(20, 0))],
                          bad_lines={"chair_1.txt": [(3, "1.0 2.0 3.0 4 5 6\x10"), (7, "nan 0 0 0 0 0")]})
    spec.write_s3dis_room(rel, 5, "office_1", [("table", 1, spec.s3dis_points(20, 1))])
    out = c.tmp / "out"
    stats = import_s3dis(data_section("s3dis", path=str(rel)), out, c.tmp / "downloads", progress=False)
    assert stats["points"] == 40
    return Counted({**stats["defects"], **stats["bad_line_files"]},
                   {"bad_lines": 2, "Area_1/office_1/Annotations/chair_1.txt": 2}, out)


@pytest.mark.parametrize("make", COUNTED)
def test_known_defects_are_skipped_and_counted(make, ctx):
    c = make(ctx)
    assert c.got == c.want
    assert (c.out / "manifest.json").exists() or (c.out / "dataset.json").exists()
    left = [p for p in c.out.rglob("*") if p.name.endswith(".tmp")]
    assert not left, f"temporaries left behind: {left}"


def test_a_full_disk_while_writing_a_checkpoint_is_one_line_naming_the_path(tmp_path):
    """ENOSPC during torch.save used to end in a 28-line `RuntimeError: [enforce fail at inline_container.cc:672]
    . unexpected pos ...`; every atomic write now names the final path and the cause, and leaves nothing."""
    import subprocess

    from text4point.checkpoints import save

    mnt = tmp_path / "full"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"a small tmpfs cannot be mounted here (needs root): {r.stderr.strip()[:120]}")
    try:
        target = mnt / "epochs" / "epoch_0001.pt"
        with pytest.raises(InputError) as e:
            save({"w": torch.zeros(200_000)}, target)
        assert str(e.value) == f"{target}: could not be written (No space left on device); nothing was left under " \
                               f"that name"
        assert_not_written(target)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
