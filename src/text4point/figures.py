"""Figures of the fine-tuning results (the ``figures`` stage): what the tables summarise, drawn.

- ``semseg_per_class_iou.png``: per-class IoU of each initialisation at the largest label fraction (mean over
  seeds), grouped bars;
- ``training_curves.png``: the fine-tuning loss against the optimizer step of every job, one panel per task, one
  colour per initialisation;
- ``<task>_<scene>.png`` for the first ``scenes`` val scenes: top views of ground truth next to the predictions of
  each initialisation (seed = the first seed, the largest label fraction): classes for ``semseg``, instances
  for ``insseg``, boxes for ``det``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from . import tasks
from .errors import InputError, bad
from .labels import IGNORE_LABEL
from .plotting import class_colours, pyplot, save_png
from .runs import collect, run_path
from .scene import Dataset


def per_class_iou(runs: dict, ft: dict, classes: list[str], out: Path) -> Path:
    plt = pyplot()
    full = max(float(f) for f in ft["label_fractions"])
    inits = ft["inits"]
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(classes) * len(inits) / 2), 4.5))
    width = 0.8 / len(inits)
    x = np.arange(len(classes))
    for i, init in enumerate(inits):
        jobs = runs[("semseg", init, full)]
        iou = np.array([[np.nan if j["per_class"].get(c) is None else j["per_class"][c] for c in classes]
                        for j in jobs])
        ax.bar(x + (i - (len(inits) - 1) / 2) * width, 100 * np.nanmean(iou, 0), width, label=init)
    ax.set_xticks(x, classes, rotation=60, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_title(f"Semantic segmentation, per class (val, {full:g} of train scenes, mean over seeds)")
    ax.legend()
    path = out / "semseg_per_class_iou.png"
    save_png(fig, path)
    plt.close(fig)
    return path


def training_curves(runs: dict, ft: dict, out: Path) -> Path:
    plt = pyplot()
    tasks = ft["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, task in zip(axes[0], tasks):
        for i, init in enumerate(ft["inits"]):
            for f in ft["label_fractions"]:
                for k, j in enumerate(runs[(task, init, float(f))]):
                    ax.plot(j["loss_steps"], j["loss_history"], color=colours[i % len(colours)],
                            ls="-" if float(f) == max(map(float, ft["label_fractions"])) else "--", lw=1,
                            label=f"{init}, {float(f):g}" if k == 0 else None)
        ax.set_title(f"{task}: fine-tuning loss")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    path = out / "training_curves.png"
    save_png(fig, path)
    plt.close(fig)
    return path



def load_predictions(path: Path, task: str, scene_id: str, num_points: int, num_classes: int) -> dict:
    """One val scene's arrays of a finetune job's ``predictions.npz``, checked against the scene and the label set."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            got = {k: npz[f"{scene_id}/{k}"] for k in tasks.get(task).prediction_keys if f"{scene_id}/{k}" in npz.files}
    except FileNotFoundError:
        raise InputError(f"{path}: file not found (run the finetune job that writes it)") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise bad(path, "predictions", "a readable .npz file", f"{type(e).__name__}: {e}") from None
    for k in tasks.get(task).prediction_keys:
        if k not in got:
            raise InputError(f"{path}: {scene_id}/{k}: expected the {task} predictions of val scene {scene_id}, "
                             f"found none")
    for k in ("semantic", "instance"):
        if k in got and got[k].shape != (num_points,):
            raise bad(path, f"{scene_id}/{k}", f"one value per scene point ({num_points})", list(got[k].shape))
    for k, extra in (("semantic", (IGNORE_LABEL,)), ("box_classes", ())):
        ids = got[k].astype(np.int64) if k in got else np.zeros(0, np.int64)
        wrong = ids[((ids < 0) | (ids >= num_classes)) & ~np.isin(ids, extra)]
        if len(wrong):
            allowed = f"class ids in [0, {num_classes})" + "".join(f" or {e}" for e in extra)
            raise bad(path, f"{scene_id}/{k}", allowed, int(wrong[0]))
    return got


def scene_figure(data_root: Path, ft_root: Path, ft: dict, task: str, scene_id: str, out: Path) -> Path:
    plt = pyplot()
    ds = Dataset(data_root)
    names = list(ds.label_set.classes)
    colours = class_colours(len(names))
    scene = ds.scene(scene_id)
    pts = scene.points()
    spec = tasks.get(task)
    seed, full = ft["seeds"][0], max(float(f) for f in ft["label_fractions"])
    panels = [("ground truth", None)] + [
        (init, load_predictions(run_path(ft_root, task, init, seed, full).with_name("predictions.npz"), task,
                                scene_id, len(pts["xyz"]), len(names))) for init in ft["inits"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, (title, pred) in zip(axes[0], panels):
        spec.draw(ax, pts, pred, scene, ds.label_set, colours)
        ax.set_title(f"{scene_id} {task}: {title}", fontsize=9)
        ax.set_aspect("equal")
        ax.axis("off")
    path = out / f"{task}_{scene_id}.png"
    save_png(fig, path)
    plt.close(fig)
    return path


def make_figures(cfg: dict, data_root: Path, ft_root: Path, out: Path, scenes: int = 2) -> list[Path]:
    """Every figure of the module docstring; returns the written paths."""
    ft = cfg["finetune"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = collect(Path(ft_root), ft)
    ds = Dataset(data_root)
    written = [training_curves(runs, ft, out)]
    if "semseg" in ft["tasks"]:
        written.append(per_class_iou(runs, ft, list(ds.label_set.classes), out))
    for task in ft["tasks"]:
        for sid in ds.split("val")[:scenes]:
            written.append(scene_figure(data_root, Path(ft_root), ft, task, sid, out))
    return written


__all__ = ["load_predictions", "make_figures", "per_class_iou", "scene_figure", "training_curves"]
