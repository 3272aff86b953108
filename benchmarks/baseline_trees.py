"""The untuned baseline the fine-tuned networks must beat: a per-voxel gradient-boosted-tree classifier on
hand features, semantic segmentation on the same train scenes (every label fraction of the params) and the
same val scenes, scored like the ``semseg`` jobs (every val point gets its voxel's class; ScanNet-style
confusion, mIoU over the classes present).

    python benchmarks/baseline_trees.py [--params params.yaml] [--data data/world] [--seeds 0 1 2]

Features per voxel (``correspondences.voxel_size``, as fine-tuning): colour, height above the room's floor,
absolute normal and the covariance eigenvalue features of 16 and of 64 neighbours
(:mod:`text4point.point_features`), and the horizontal distance to the room's walls (the scene's bounding box
in x and y). scikit-learn's ``HistGradientBoostingClassifier`` with its defaults (early stopping off, 200
iterations); nothing was tuned on val. Writes ``results/baselines/semseg_trees.{json,md}``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from text4point import params as P  # noqa: E402
from text4point.finetune.data import label_fraction_scenes, load_scene  # noqa: E402
from text4point.fsutil import write_json, write_text  # noqa: E402
from text4point.metrics.semantic import confusion_matrix, semantic_metrics  # noqa: E402
from text4point.scene import Dataset  # noqa: E402

CHANNELS = ("rgb", "height", "normal", "shape", "shape64")


def features(cloud) -> np.ndarray:
    g = cloud.geometry
    lo, hi = cloud.pos[:, :2].min(0), cloud.pos[:, :2].max(0)
    wall = np.minimum(cloud.pos[:, :2] - lo, hi - cloud.pos[:, :2])  # [V, 2] distance to the x and y walls
    return np.concatenate([cloud.rgb, g["height"][:, None], np.abs(g["normal"]), g["shape"], g["shape64"],
                           wall, wall.min(1, keepdims=True)], 1).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--data", default=str(ROOT / "data" / "world"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(ROOT / "results" / "baselines"))
    args = ap.parse_args()
    from sklearn.ensemble import HistGradientBoostingClassifier

    cfg = P.load(args.params)
    ds = Dataset(Path(args.data))
    names = list(ds.label_set.classes)
    voxel = float(cfg["correspondences"]["voxel_size"])
    clouds = {s: load_scene(ds, s, voxel, CHANNELS) for s in ds.split("train", nonempty=True) + ds.split("val")}
    val = [clouds[s] for s in ds.split("val")]
    rows = []
    for fraction in cfg["finetune"]["label_fractions"]:
        train = [clouds[s] for s in label_fraction_scenes(ds.split("train", nonempty=True), fraction,
                                                          int(cfg["seed"]))]
        x = np.concatenate([features(c) for c in train])
        y = np.concatenate([c.semantic for c in train])
        keep = y < len(names)
        for seed in args.seeds:
            t0 = time.perf_counter()
            clf = HistGradientBoostingClassifier(max_iter=200, early_stopping=False, random_state=seed)
            clf.fit(x[keep], y[keep])
            conf = np.zeros((len(names), len(names)), np.int64)
            for c in val:
                pred = clf.predict(features(c)).astype(np.int64)[c.point_voxel]
                conf += confusion_matrix(pred, c.point_semantic, len(names))
            m = semantic_metrics(conf, names)
            rows.append({"label_fraction": fraction, "seed": seed, "train_scenes": len(train),
                         "train_voxels": int(keep.sum()), "miou": round(100 * m["miou"], 2),
                         "accuracy": round(100 * m["accuracy"], 2), "seconds": round(time.perf_counter() - t0, 1),
                         "per_class_iou": {k: (None if v is None else round(100 * v, 1)) for k, v in m["iou"].items()}})
            print(f"fraction {fraction} seed {seed}: mIoU {rows[-1]['miou']} OA {rows[-1]['accuracy']} "
                  f"({rows[-1]['seconds']} s)", flush=True)
    summary = {}
    for fraction in cfg["finetune"]["label_fractions"]:
        r = [x for x in rows if x["label_fraction"] == fraction]
        summary[str(fraction)] = {"miou_median": statistics.median(x["miou"] for x in r),
                                  "accuracy_median": statistics.median(x["accuracy"] for x in r), "runs": len(r)}
    out = Path(args.out)
    result = {"command": "python benchmarks/baseline_trees.py " + " ".join(sys.argv[1:]),
              "model": "sklearn HistGradientBoostingClassifier(max_iter=200, early_stopping=False)",
              "features": "rgb, height, |normal|, shape (k=16), shape (k=64), distance to the x/y walls and min",
              "voxel_size": voxel, "host": platform.node(), "summary": summary, "runs": rows}
    write_json(out / "semseg_trees.json", result)
    lines = ["# Semantic segmentation: per-voxel gradient-boosted trees on hand features (untuned baseline)", "",
             f"`{result['command']}`; val scenes {len(val)}; {result['features']}.", "",
             "| label fraction | mIoU % (median) | OA % (median) | runs |", "|---|---|---|---|"]
    for f, s in summary.items():
        lines.append(f"| {f} | {s['miou_median']:.1f} | {s['accuracy_median']:.1f} | {s['runs']} |")
    write_text(out / "semseg_trees.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
