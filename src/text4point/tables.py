"""The ``tables`` stage: the paper's comparison rebuilt from the fine-tuning and pre-training jobs' metrics.

Reads ``results/finetune/<task>/<init>/seed<s>-frac<f>/metrics.json`` for exactly the jobs that params name, the
variations' jobs under ``results/variations/<name>/finetune/`` and ``results/metrics/pretrain/<variant>.json``
(a missing one is a one-line error), and writes ``<out>/<table>.{md,csv}`` for :func:`table_names`. Every CSV is
tidy and numeric (one observation per row, values in %), for pandas; the Markdown prints ``mean ± std``:

- one table per task (``semseg``, ``insseg``, ``det``): a row per init × label fraction × metric with the mean,
  sample std, number of seeds and 95 % t-interval over the seeds, the seeds, MLflow run ids and params hashes;
- ``efficiency``: the same for the primary metric of every task × init × label fraction (CSC's data-efficient
  protocol);
- ``ablation``: what pre-training and language add, as **paired** differences of the primary metric over the
  seeds (A(s) − B(s), 95 % t-interval; ``*`` where it excludes 0). At one seed the two jobs share the train
  scenes (the label fraction's subset comes from the data seed), their order and augmentation, and the head's
  initialisation; they differ in the initialisation of the backbone (and, for text4point, its language modules);
- ``paper_ablation`` (variations with ``table: paper_ablation``): default − variation, paired, per task × init ×
  label fraction: what the component the variation removes is worth;
- ``convergence`` (``table: convergence``): the default schedule against a longer one, paired;
- ``teacher`` (``table: teacher``): how much the 2D teacher matters. A row per teacher (the default params' and
  each variation's) × task × init: its dense val mIoU (``clip_bootstrap``), the 3D zero-shot mIoU after
  pre-training with it next to its ceiling on the points it sees, and the fine-tuning gain of the init over the
  *default* scratch jobs, paired over seeds, at every label fraction;
- ``zeroshot``: the pre-training variants' zero-shot mIoU on val next to the untrained network's, the constant
  labelling and the 2D teacher's own (with its coverage);
- ``reference``: published numbers on *real ScanNet* (CSC's model-zoo tables), clearly other data, for scale.
"""

from __future__ import annotations

import math
from pathlib import Path

from . import dag, faults, tasks
from .names import SCRATCH
from .fsutil import atomic_path, write_text
from .runs import collect_seeds, read_metrics
from .stats import Summary, interval, mean_std, paired, summarize

FIXED_TABLES = ("efficiency", "ablation", "zeroshot", "reference")
STUDY_TABLES = ("paper_ablation", "convergence", "teacher")
TABLE_NAMES = ("semseg", "insseg", "det") + FIXED_TABLES + STUDY_TABLES  # with the default params

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
# Comparisons of initialisations: (a, b, what a − b isolates).
COMPARISONS = [("image_contrast", "scratch", "image pre-training"),
               ("text4point", "image_contrast", "text (TQM + prompts)"),
               ("text4point", "scratch", "Text4Point overall"),
               ("text4point", "pointcontrast", "Text4Point vs PointContrast"),
               ("pointcontrast", "scratch", "PointContrast")]
SUMMARY = ["mean", "std", "n", "ci95_low", "ci95_high"]
ZEROSHOT = [("zeroshot_miou", "zero-shot mIoU"), ("zeroshot_accuracy", "zero-shot accuracy"),
            ("zeroshot_miou_random", "untrained network mIoU"), ("zeroshot_accuracy_random", "untrained accuracy"),
            ("zeroshot_miou_majority_constant", "every point = most frequent class, mIoU"),
            ("zeroshot_miou_teacher", "2D teacher mIoU (points it sees)"),
            ("zeroshot_miou_covered", "network mIoU on the points the teacher sees"),
            ("zeroshot_teacher_agreement", "network = teacher there"),
            ("zeroshot_teacher_coverage", "2D teacher coverage of the labelled points")]


def table_names(cfg: dict) -> list[str]:
    """The tables the stage writes for ``cfg``: one per task, the fixed ones, and those the variations ask for."""
    studies = {v["table"] for v in cfg["variations"].values()}
    return list(cfg["finetune"]["tasks"]) + list(FIXED_TABLES) + [t for t in STUDY_TABLES if t in studies]


def _cells(s: Summary) -> list:
    return [round(x, 4) if isinstance(x, float) and not math.isnan(x) else x for x in
            (s.mean, s.std, s.n, s.ci95_low, s.ci95_high)]


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


def _values(jobs: dict, key: str) -> dict[int, float]:
    """``{seed: 100 · metric}`` of one cell's jobs."""
    return {s: 100.0 * float(m[key]) for s, m in jobs.items()}


def _provenance(jobs: dict) -> list[str]:
    return [" ".join(str(s) for s in sorted(jobs)), " ".join(str(jobs[s].get("mlflow_run_id")) for s in sorted(jobs)),
            " ".join(sorted({str(m.get("params_hash")) for m in jobs.values()}))]


def _task_tables(out_dir: Path, ft: dict, runs: dict, where: str) -> None:
    prov = ["seeds", "mlflow_runs", "params_hashes"]
    eff_rows, eff_md = [], []
    for task in ft["tasks"]:
        spec = tasks.get(task)
        rows, md = [], []
        for init in ft["inits"]:
            for f in ft["label_fractions"]:
                jobs = runs[(task, init, float(f))]
                cells = []
                for metric, name in spec.metrics.items():
                    s = summarize(list(_values(jobs, metric).values()))
                    rows.append([task, init, float(f), name] + _cells(s) + _provenance(jobs))
                    cells.append(mean_std(s))
                    if metric == spec.primary:
                        eff_rows.append(rows[-1])
                md.append([init, f, len(jobs)] + cells + _provenance(jobs)[1:])
        header = ["init", "label fraction", "seeds"] + list(spec.metrics.values()) + ["mlflow runs", "params hashes"]
        _write(out_dir, task, _markdown(f"{task}: {spec.title} by initialisation", where, header, md),
               ["task", "init", "label_fraction", "metric"] + SUMMARY + prov, rows)
    for task in ft["tasks"]:
        spec = tasks.get(task)
        for init in ft["inits"]:
            eff_md.append([task, spec.metrics[spec.primary], init] + [
                mean_std(summarize(list(_values(runs[(task, init, float(f))], spec.primary).values())))
                for f in ft["label_fractions"]])
    header = ["task", "metric", "init"] + [f"{f:g} of train scenes" for f in ft["label_fractions"]]
    _write(out_dir, "efficiency", _markdown("Data efficiency (CSC's limited-scene protocol)", where, header, eff_md),
           ["task", "init", "label_fraction", "metric"] + SUMMARY + prov, eff_rows)


def _paired_row(a: dict, b: dict, key: str) -> tuple[Summary, list[int]]:
    return paired(_values(a, key), _values(b, key))


def _ablation(out_dir: Path, ft: dict, runs: dict, where: str) -> None:
    rows, md = [], []
    for task in ft["tasks"]:
        spec = tasks.get(task)
        name = spec.metrics[spec.primary]
        for f in ft["label_fractions"]:
            for a, b, what in COMPARISONS:
                if a in ft["inits"] and b in ft["inits"]:
                    s, seeds = _paired_row(runs[(task, a, float(f))], runs[(task, b, float(f))], spec.primary)
                    rows.append([task, float(f), name, a, b, what] + _cells(s) + [s.excludes_zero,
                                                                                  " ".join(map(str, seeds))])
                    md.append([task, name, f, f"{a} − {b}", what, f"{s.mean:+.1f}", interval(s), s.n])
    note = where + (" Paired over seeds: A(s) − B(s) for each seed s, then the mean and its 95 % t-interval; `*` "
                    "marks an interval that excludes 0. One seed fixes the train scenes, their order and "
                    "augmentation and the head's initialisation for both initialisations.")
    _write(out_dir, "ablation", _markdown("Ablation: paired differences between initialisations", note,
                                          ["task", "metric", "label fraction", "comparison", "what it isolates",
                                           "difference (points)", "95 % CI", "seeds"], md),
           ["task", "label_fraction", "metric", "a", "b", "isolates"] + SUMMARY + ["excludes_zero", "seeds"], rows)


def _variation_runs(var_root: Path, cfg: dict, name: str) -> dict:
    v = cfg["variations"][name]
    fracs = v["label_fractions"] or cfg["finetune"]["label_fractions"]
    return collect_seeds(Path(var_root) / name / "finetune", v["tasks"], v["inits"], fracs, cfg["finetune"]["seeds"])


def _studies(out_dir: Path, cfg: dict, runs: dict, var_root: Path, where: str) -> list[str]:
    written = []
    for table in ("paper_ablation", "convergence"):
        names = [n for n, v in cfg["variations"].items() if v["table"] == table]
        if not names:
            continue
        rows, md = [], []
        for name in names:
            v = cfg["variations"][name]
            for (task, init, f), jobs in _variation_runs(var_root, cfg, name).items():
                spec = tasks.get(task)
                base = runs[(task, init, f)]  # params checked that the default jobs include it
                d0, dv = summarize(list(_values(base, spec.primary).values())), summarize(
                    list(_values(jobs, spec.primary).values()))
                metric = spec.metrics[spec.primary]
                if table == "paper_ablation":  # what the removed component is worth: default − variation
                    s, seeds = _paired_row(base, jobs, spec.primary)
                    rows.append([name, v["description"], task, init, f, metric, d0.mean, dv.mean] + _cells(s)
                                + [s.excludes_zero, " ".join(map(str, seeds))])
                    md.append([name, v["description"], task, init, f, metric, mean_std(d0), mean_std(dv),
                               f"{s.mean:+.1f}", interval(s)])
                else:  # convergence: the longer schedule − the default one
                    s, seeds = _paired_row(jobs, base, spec.primary)
                    steps = (_steps(base), _steps(jobs))
                    within = abs(s.mean) <= 2.0
                    rows.append([name, task, init, f, metric, *steps, d0.mean, dv.mean] + _cells(s)
                                + [within, " ".join(map(str, seeds))])
                    md.append([task, init, f, metric, f"{steps[0]}: {mean_std(d0)}", f"{steps[1]}: {mean_std(dv)}",
                               f"{s.mean:+.1f}", interval(s), "yes" if within else "**no**"])
        if table == "paper_ablation":
            header = ["variation", "what it removes", "task", "init", "label fraction", "metric", "default",
                      "variation", "default − variation (points)", "95 % CI"]
            tidy = (["variation", "description", "task", "init", "label_fraction", "metric", "default_mean",
                     "variation_mean"] + SUMMARY + ["excludes_zero", "seeds"])
            title = "The paper's ablations: what each component is worth (paired over seeds)"
        else:
            header = ["task", "init", "label fraction", "metric", "default (steps: value)", "longer (steps: value)",
                      "longer − default (points)", "95 % CI", "within 2 points"]
            tidy = (["variation", "task", "init", "label_fraction", "metric", "steps_default", "steps_variation",
                     "default_mean", "variation_mean"] + SUMMARY + ["within_2_points", "seeds"])
            title = "Convergence: the default schedule against a longer one (paired over seeds)"
        _write(out_dir, table, _markdown(title, where + " `*`: the 95 % interval excludes 0.", header, md), tidy, rows)
        written.append(table)
    return written


def _steps(jobs: dict) -> int:
    steps = {int(m["steps"]) for m in jobs.values()}
    return steps.pop() if len(steps) == 1 else max(steps)


TEACHER_KEYS = [("dense_miou", "dense val mIoU"), ("dense_pixel_accuracy", "dense val pixel accuracy")]
PRETRAIN_KEYS = [("zeroshot_miou_teacher", "teacher ceiling mIoU"), ("zeroshot_teacher_coverage", "ceiling coverage"),
                 ("zeroshot_miou", "3D zero-shot mIoU")]


def _percent(m: dict, key: str) -> float:
    value = m.get(key)
    return math.nan if value is None else 100.0 * float(value)


def _teacher(out_dir: Path, cfg: dict, runs: dict, pretrain_root: Path, var_root: Path, where: str) -> bool:
    """The ``teacher`` table (module docstring); False when no variation asks for it. The default teacher's metrics
    are ``<pretrain_root>/../clip_bootstrap.json`` and ``<pretrain_root>/<init>.json``, a variation's under
    ``<var_root>/<name>/metrics/`` for the stages it reruns."""
    names = [n for n, v in cfg["variations"].items() if v["table"] == "teacher"]
    if not names:
        return False
    bootstrap = cfg["clip"]["pretrained"] == "bootstrap"
    fracs = [float(f) for f in cfg["finetune"]["label_fractions"]]
    cells = sorted({(t, i) for n in names for t in cfg["variations"][n]["tasks"] for i in cfg["variations"][n]["inits"]
                    if i != SCRATCH})
    rows, md = [], []
    for name in ["default"] + names:
        v = cfg["variations"].get(name, {"description": "the default params' teacher"})
        varied = dag.varied_rules(cfg, name) if name != "default" else set()
        own = Path(var_root) / name / "metrics"
        boot_json = own / "clip_bootstrap.json" if "clip_bootstrap" in varied else Path(pretrain_root).parent / \
            "clip_bootstrap.json"
        pre_dir = own / "pretrain" if "pretrain" in varied else Path(pretrain_root)
        boot = read_metrics(boot_json) if bootstrap else {}
        jobs = runs if name == "default" else _variation_runs(var_root, cfg, name)
        for task, init in cells:
            spec = tasks.get(task)
            pre = read_metrics(pre_dir / f"{init}.json")
            head = [_percent(boot, k) for k, _ in TEACHER_KEYS] + [_percent(pre, k) for k, _ in PRETRAIN_KEYS]
            gains = []
            for f in fracs:
                if (task, init, f) not in jobs:
                    gains.append("")
                    continue
                a, b = jobs[(task, init, f)], runs[(task, SCRATCH, f)]
                s, seeds = _paired_row(a, b, spec.primary)
                mean_a = summarize(list(_values(a, spec.primary).values())).mean
                mean_b = summarize(list(_values(b, spec.primary).values())).mean
                rows.append([name, v["description"]] + [round(x, 4) for x in head]
                            + [task, init, f, spec.metrics[spec.primary], mean_a, mean_b] + _cells(s)
                            + [s.excludes_zero, " ".join(map(str, seeds))])
                gains.append(f"{s.mean:+.1f} {interval(s)}")
            md.append([name, v["description"]] + ["n/a" if math.isnan(x) else f"{x:.1f}" for x in head]
                      + [task, init] + gains)
    header = ["teacher", "what it is"] + [n for _, n in TEACHER_KEYS + PRETRAIN_KEYS] + ["task", "init"] + [
        f"init − scratch at {f:g} (points, 95 % CI)" for f in fracs]
    tidy = (["teacher", "description"] + [k for k, _ in TEACHER_KEYS + PRETRAIN_KEYS]
            + ["task", "init", "label_fraction", "metric", "init_mean", "scratch_mean"] + SUMMARY
            + ["excludes_zero", "seeds"])
    note = (where + " Dense val mIoU: the teacher's own dense zero-shot labelling of the val frames (clip_bootstrap); "
            "the ceiling: the same labelling carried to the val points it sees, with the share of labelled points it "
            "sees; 3D zero-shot: the pre-trained network's labelling of every labelled val point. The gains are the "
            "init's fine-tuning metric minus the default scratch jobs' of the same seed (primary metric, points), "
            "with the 95 % t-interval; `*`: it excludes 0.")
    _write(out_dir, "teacher", _markdown("How much the 2D teacher matters", note, header, md), tidy, rows)
    return True


def _zeroshot(out_dir: Path, cfg: dict, pretrain_root: Path, where: str) -> None:
    rows, md = [], []
    for v in cfg["pretrain"]["variants"]:
        m = read_metrics(Path(pretrain_root) / f"{v}.json")
        cells = []
        for key, name in ZEROSHOT:
            value = m.get(key)
            value = None if value is None else 100.0 * float(value)
            rows.append([v, key, value, m.get("params_hash")])
            cells.append("n/a" if value is None else f"{value:.1f}")
        md.append([v] + cells + [m.get("params_hash")])
    header = ["variant"] + [name for _, name in ZEROSHOT] + ["params hash"]
    _write(out_dir, "zeroshot", _markdown("Zero-shot segmentation after pre-training (val)", where + " pointcontrast "
                                          "has no CLIP-space head (n/a).", header, md),
           ["variant", "quantity", "value", "params_hash"], rows)


def build_tables(cfg: dict, ft_root: Path, pretrain_root: Path, out_dir: Path,
                 var_root: Path | None = None) -> dict:
    """Write every table of :func:`table_names` (see the module docstring); returns a summary for the log."""
    ft = cfg["finetune"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = collect_seeds(Path(ft_root), ft["tasks"], ft["inits"], ft["label_fractions"], ft["seeds"])
    any_run = next(iter(next(iter(runs.values())).values()))
    dataset, split = any_run["dataset"], any_run["split"]
    where = (f"Dataset: {dataset} (the offline world unless data.source says otherwise), evaluated on the {split} "
             f"split; {len(ft['seeds'])} seed(s) {list(ft['seeds'])}; numbers in %.")
    _task_tables(out_dir, ft, runs, where + " Mean ± sample std over the seeds.")
    _ablation(out_dir, ft, runs, where)
    var_root = Path(var_root) if var_root else Path(ft_root).parent / "variations"
    studies = _studies(out_dir, cfg, runs, var_root, where)
    if _teacher(out_dir, cfg, runs, Path(pretrain_root), var_root, where):
        studies.append("teacher")
    _zeroshot(out_dir, cfg, pretrain_root, where)
    header = ["method", "task", "metric", "label_fraction", "value"]
    rows = [[r["method"], r["task"], r["metric"], r["label_fraction"], r["value"]] for r in REFERENCE]
    note = ("**Other data.** Published results on real ScanNet v2 (val) with other, much larger networks; they are "
            f"not comparable with the tables above and are listed for scale only. Source: {REFERENCE_SOURCE}. "
            "Published scratch and PointContrast numbers were not verified here and are not listed. Values in %.")
    _write(out_dir, "reference", _markdown("Reference: published numbers (real ScanNet)", note, header, rows),
           header, rows)
    return {"jobs": sum(len(v) for v in runs.values()), "tables": table_names(cfg), "studies": studies,
            "dataset": dataset}


__all__ = ["COMPARISONS", "REFERENCE", "TABLE_NAMES", "build_tables", "table_names"]
