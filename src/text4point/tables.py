"""The ``tables`` stage: the paper's comparison rebuilt from the fine-tuning and pre-training jobs' metrics.

Reads ``results/finetune/<task>/<init>/seed<s>-frac<f>/metrics.json`` for exactly the jobs that params name
(tasks × inits × seeds × label fractions; a missing one is a one-line error) and
``results/metrics/pretrain/<variant>.json``, and writes ``<out>/{semseg,insseg,det,efficiency,ablation,
zeroshot,reference}.{md,csv}`` (csv with pandas):

- ``semseg``, ``insseg``, ``det``: one row per initialisation at the largest label fraction; every metric as
  mean ± sample standard deviation over the seeds, with the number of seeds, dataset and split, the MLflow
  run ids and the params hashes of the jobs;
- ``efficiency``: the primary metric of every task × init × label fraction (CSC's data-efficient protocol);
- ``ablation``: what pre-training and language add, as differences of the primary metric's seed means:
  image_contrast − scratch, text4point − image_contrast (the TQM and the text at pre- and fine-tuning time),
  text4point − scratch;
- ``zeroshot``: the pre-training variants' zero-shot mIoU on val next to the untrained network's;
- ``reference``: published numbers on *real ScanNet* (CSC's model-zoo tables), clearly other data, for scale.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import faults, tasks
from .fsutil import atomic_path, write_text
from .runs import collect, read_metrics

TABLE_NAMES = ("semseg", "insseg", "det", "efficiency", "ablation", "zeroshot", "reference")

# Published numbers on real ScanNet v2 val, from the Contrastive Scene Contexts repository's model-zoo tables
# (github.com/facebookresearch/ContrastiveSceneContexts README; Hou et al., CVPR 2021; SR-UNet backbone for
# segmentation, VoteNet with a SparseConv backbone for detection). Other data and other networks: for scale only.
REFERENCE = [
    {"method": "CSC", "task": "semseg", "metric": "mIoU", "label_fraction": 0.1, "value": 59.5},
    {"method": "CSC", "task": "semseg", "metric": "mIoU", "label_fraction": 1.0, "value": 73.8},
    {"method": "CSC", "task": "insseg", "metric": "AP50", "label_fraction": 0.1, "value": 45.3},
    {"method": "CSC", "task": "insseg", "metric": "AP50", "label_fraction": 1.0, "value": 59.4},
    {"method": "CSC", "task": "det", "metric": "mAP@0.25", "label_fraction": 0.1, "value": 24.7},
    {"method": "CSC", "task": "det", "metric": "mAP@0.5", "label_fraction": 0.1, "value": 9.9},
    {"method": "CSC", "task": "det", "metric": "mAP@0.25", "label_fraction": 1.0, "value": 59.1},
    {"method": "CSC", "task": "det", "metric": "mAP@0.5", "label_fraction": 1.0, "value": 39.3},
]
REFERENCE_SOURCE = ("Hou, Graham, Nießner, Xie: Exploring Data-Efficient 3D Scene Understanding with Contrastive "
                    "Scene Contexts, CVPR 2021; numbers from github.com/facebookresearch/ContrastiveSceneContexts "
                    "(README model zoo, ScanNet v2 val, 10% / 100% of the train scenes)")






def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _pm(mean: float, std: float, n: int) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 else f"{100 * mean:.1f}"


def _markdown(title: str, note: str, header: list[str], rows: list[list]) -> str:
    out = [f"# {title}", "", note, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _write(out_dir: Path, name: str, md: str, header: list[str], rows: list[list]) -> None:
    import pandas as pd

    write_text(out_dir / f"{name}.md", md)
    faults.point("tables.write", table=name)
    with atomic_path(out_dir / f"{name}.csv") as tmp:
        pd.DataFrame(rows, columns=header).to_csv(tmp, index=False)




def build_tables(cfg: dict, ft_root: Path, pretrain_root: Path, out_dir: Path) -> dict:
    """Write every table (see the module docstring); returns a summary for the stage's log."""
    ft = cfg["finetune"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = collect(Path(ft_root), ft)
    any_run = next(iter(runs.values()))[0]
    dataset, split = any_run.get("dataset", "?"), any_run.get("split", "val")
    full = max(float(f) for f in ft["label_fractions"])
    n_seeds = len(ft["seeds"])
    where = (f"Dataset: {dataset} (the offline world unless data.source says otherwise), evaluated on the {split} "
             f"split; mean ± sample std over {n_seeds} seed(s) {list(ft['seeds'])}; numbers in %.")

    for task in ft["tasks"]:
        spec = tasks.get(task)
        metrics = list(spec.metrics)
        header = ["init", "label fraction", "seeds"] + [spec.metrics[m] for m in metrics] + ["mlflow runs",
                                                                                             "params hashes"]
        rows = []
        for init in ft["inits"]:
            jobs = runs[(task, init, full)]
            cells = [_pm(*_mean_std([j[m] for j in jobs]), len(jobs)) for m in metrics]
            rows.append([init, full, len(jobs)] + cells + [" ".join(str(j.get("mlflow_run_id")) for j in jobs),
                                                           " ".join(sorted({str(j.get("params_hash")) for j in jobs}))])
        _write(out_dir, task, _markdown(f"{task}: fine-tuning by initialisation", where, header, rows), header, rows)

    header = ["task", "metric", "init"] + [f"{f:g} of train scenes" for f in ft["label_fractions"]]
    rows = []
    for task in ft["tasks"]:
        spec = tasks.get(task)
        for init in ft["inits"]:
            cells = [_pm(*_mean_std([j[spec.primary] for j in runs[(task, init, float(f))]]), n_seeds)
                     for f in ft["label_fractions"]]
            rows.append([task, spec.metrics[spec.primary], init] + cells)
    _write(out_dir, "efficiency", _markdown("Data efficiency (CSC's limited-scene protocol)", where, header, rows),
           header, rows)

    pairs = [("image_contrast", "scratch", "image pre-training"),
             ("text4point", "image_contrast", "text (TQM + prompts)"),
             ("text4point", "scratch", "Text4Point overall"), ("pointcontrast", "scratch", "PointContrast")]
    header = ["task", "metric", "label fraction", "comparison", "what it isolates", "difference (points)"]
    rows = []
    for task in ft["tasks"]:
        spec = tasks.get(task)
        for f in ft["label_fractions"]:
            for a, b, what in pairs:
                if a in ft["inits"] and b in ft["inits"]:
                    ma = np.mean([j[spec.primary] for j in runs[(task, a, float(f))]])
                    mb = np.mean([j[spec.primary] for j in runs[(task, b, float(f))]])
                    rows.append([task, spec.metrics[spec.primary], f, f"{a} − {b}", what, f"{100 * (ma - mb):+.1f}"])
    _write(out_dir, "ablation", _markdown("Ablation: differences of seed means", where, header, rows), header, rows)

    header = ["variant", "zero-shot mIoU", "zero-shot accuracy", "untrained network mIoU", "untrained accuracy",
              "every point = most frequent class, mIoU", "params hash"]
    rows = []
    for v in cfg["pretrain"]["variants"]:
        m = read_metrics(Path(pretrain_root) / f"{v}.json")
        pct = lambda x: "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"  # noqa: E731
        rows.append([v, pct(m.get("zeroshot_miou")), pct(m.get("zeroshot_accuracy")),
                     pct(m.get("zeroshot_miou_random")),
                     pct(m.get("zeroshot_accuracy_random")), pct(m.get("zeroshot_miou_majority_constant")),
                     m.get("params_hash")])
    _write(out_dir, "zeroshot", _markdown("Zero-shot segmentation after pre-training (val)", where + " pointcontrast "
                                          "has no CLIP-space head (n/a).", header, rows), header, rows)

    header = ["method", "task", "metric", "label fraction", "value (%)"]
    rows = [[r["method"], r["task"], r["metric"], r["label_fraction"], r["value"]] for r in REFERENCE]
    note = ("**Other data.** Published results on real ScanNet v2 (val) with other, much larger networks; they are "
            f"not comparable with the tables above and are listed for scale only. Source: {REFERENCE_SOURCE}. "
            "Published scratch and PointContrast numbers were not verified here and are not listed.")
    _write(out_dir, "reference", _markdown("Reference: published numbers (real ScanNet)", note, header, rows),
           header, rows)
    return {"jobs": sum(len(v) for v in runs.values()), "tables": list(TABLE_NAMES), "dataset": dataset}


__all__ = ["REFERENCE", "TABLE_NAMES", "build_tables"]
