"""The tables: summaries over seeds (mean, std, 95 % t-interval), paired differences, tidy numeric CSVs, the
variations' studies (paper ablations, convergence), and one-line errors for missing jobs."""

import json
import math

import pandas as pd
import pytest

from text4point.errors import InputError
from text4point.stats import paired, summarize

INITS = ["scratch", "pointcontrast", "image_contrast", "text4point"]


def test_summary_and_t_interval_by_hand():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, sample std sqrt(5/3), t(0.975, 3) = 3.182446: half-width 3.182446 * 1.290994 / 2 = 2.054260
    assert s.mean == 2.5 and s.n == 4 and s.std == pytest.approx(math.sqrt(5 / 3))
    assert (s.ci95_low, s.ci95_high) == pytest.approx((2.5 - 2.054260, 2.5 + 2.054260), abs=1e-6)
    one = summarize([7.0])
    assert one.mean == 7.0 and math.isnan(one.std) and math.isnan(one.ci95_low) and not one.excludes_zero


def test_paired_differences_use_common_seeds_only():
    d, seeds = paired({0: 10.0, 1: 12.0, 2: 11.0, 3: 99.0}, {0: 8.0, 1: 11.0, 2: 10.0})
    # differences 2, 1, 1: mean 4/3, std 0.57735, t(0.975, 2) = 4.302653 -> half-width 1.434218
    assert seeds == [0, 1, 2] and d.mean == pytest.approx(4 / 3)
    assert (d.ci95_low, d.ci95_high) == pytest.approx((4 / 3 - 1.434218, 4 / 3 + 1.434218), abs=1e-6)
    assert not d.excludes_zero
    assert paired({0: 5.0, 1: 5.5, 2: 6.0}, {0: 1.0, 1: 1.4, 2: 2.1})[0].excludes_zero
    with pytest.raises(ValueError, match="expected runs with common seeds"):
        paired({0: 1.0}, {1: 1.0})


def _write_runs(root, task, inits, seeds, fracs, value):
    from text4point.fsutil import write_json
    from text4point.runs import run_path

    for init in inits:
        for seed in seeds:
            for frac in fracs:
                miou = value(init, seed, frac)
                write_json(run_path(root, task, init, seed, frac),
                           {"miou": miou, "accuracy": 0.9, "mean_class_accuracy": 0.8, "dataset": "scannet20",
                            "split": "val", "steps": 300, "mlflow_run_id": f"run-{init}-{seed}-{frac}",
                            "params_hash": "abc"})


@pytest.fixture()
def table_inputs(tmp_path):
    from text4point import params
    from text4point.fsutil import write_json

    seeds, fracs = [0, 1, 2], [0.1, 1.0]
    base = {"scratch": 0.40, "pointcontrast": 0.42, "image_contrast": 0.45, "text4point": 0.50}
    noise = {0: 0.0, 1: 0.02, 2: -0.01}  # shared by every init at a seed: the paired differences are exact
    _write_runs(tmp_path / "ft", "semseg", INITS, seeds, fracs, lambda i, s, f: (base[i] + noise[s]) * f)
    # variations: without the TQM the text4point jobs lose 3 points at every seed; the longer schedule adds 0.5
    _write_runs(tmp_path / "var/no_tqm/finetune", "semseg", ["text4point"], seeds, fracs,
                lambda i, s, f: (base[i] + noise[s]) * f - 0.03)
    _write_runs(tmp_path / "var/long/finetune", "semseg", ["scratch"], seeds, [1.0],
                lambda i, s, f: base[i] + noise[s] + 0.005 * (s + 1))
    for variant in ("text4point", "image_contrast", "pointcontrast"):
        write_json(tmp_path / "pt" / f"{variant}.json", {"zeroshot_miou": 0.1, "zeroshot_miou_random": 0.01,
                                                         "params_hash": "p"})
    cfg = params.validate({"seed": 0, "data": {"source": "world"}, "clip": {"model": "t4p-tiny",
                                                                             "pretrained": "bootstrap"},
                           "finetune": {"tasks": ["semseg"], "inits": INITS, "seeds": seeds,
                                        "label_fractions": fracs},
                           "variations": {"no_tqm": {"table": "paper_ablation", "description": "the TQM",
                                                     "set": {"finetune": {"tqm": False}}},
                                          "long": {"table": "convergence", "scale": {"finetune.steps": 3},
                                                   "inits": ["scratch"], "label_fractions": [1.0]}}})
    return cfg, tmp_path


def test_tables_are_tidy_numeric_and_paired(table_inputs):
    from text4point.tables import build_tables, table_names

    cfg, root = table_inputs
    out = root / "tables"
    summary = build_tables(cfg, root / "ft", root / "pt", out, root / "var")
    assert table_names(cfg) == ["semseg", "efficiency", "ablation", "zeroshot", "reference", "paper_ablation",
                                "convergence"] == summary["tables"]
    semseg = pd.read_csv(out / "semseg.csv")
    assert list(semseg.columns) == ["task", "init", "label_fraction", "metric", "mean", "std", "n", "ci95_low",
                                    "ci95_high", "seeds", "mlflow_runs", "params_hashes"]
    assert len(semseg) == 4 * 2 * 3  # inits x fractions x metrics
    row = semseg[(semseg.init == "text4point") & (semseg.label_fraction == 1.0) & (semseg.metric == "mIoU")].iloc[0]
    # 50.0, 52.0, 49.0: mean 50.333, std 1.5275
    assert row["mean"] == pytest.approx(50.3333, abs=1e-3) and row["std"] == pytest.approx(1.5275, abs=1e-3)
    assert row["n"] == 3 and row["ci95_low"] < row["mean"] < row["ci95_high"] and row["seeds"] == "0 1 2"
    assert semseg[["mean", "std", "ci95_low", "ci95_high"]].dtypes.map(pd.api.types.is_float_dtype).all()
    md = (out / "semseg.md").read_text()
    assert "| text4point | 1.0 | 3 | 50.3 ± 1.5 | 90.0 ± 0.0 | 80.0 ± 0.0 |" in md

    abl = pd.read_csv(out / "ablation.csv")
    d = abl[(abl.a == "text4point") & (abl.b == "scratch") & (abl.label_fraction == 1.0)].iloc[0]
    # the seed noise is shared, so every paired difference is 10 points: std 0, the interval is the point
    assert d["mean"] == pytest.approx(10.0) and d["std"] == pytest.approx(0.0, abs=1e-9) and bool(d["excludes_zero"])
    assert "| semseg | mIoU | 1.0 | text4point − scratch | Text4Point overall | +10.0 | [+10.0, +10.0] * | 3 |" in \
        (out / "ablation.md").read_text()
    assert set(abl.b) == {"scratch", "image_contrast", "pointcontrast"}

    paper = pd.read_csv(out / "paper_ablation.csv")
    assert len(paper) == 2 and set(paper.label_fraction) == {0.1, 1.0}
    assert paper["mean"].tolist() == pytest.approx([3.0, 3.0])  # default − variation: the TQM is worth 3 points
    conv = pd.read_csv(out / "convergence.csv").iloc[0]
    assert (conv.steps_default, conv.steps_variation) == (300, 300)  # the fake jobs say 300 for both
    assert conv["mean"] == pytest.approx(1.0) and bool(conv.within_2_points)  # 0.5, 1.0, 1.5 points longer
    eff = pd.read_csv(out / "efficiency.csv")
    assert len(eff) == 4 * 2 and set(eff.metric) == {"mIoU"}
    zs = pd.read_csv(out / "zeroshot.csv")
    assert list(zs.columns) == ["variant", "quantity", "value", "params_hash"]
    assert zs[(zs.variant == "text4point") & (zs.quantity == "zeroshot_miou")].value.iloc[0] == pytest.approx(10.0)


def test_tables_name_a_missing_job(table_inputs):
    from text4point.tables import build_tables

    cfg, root = table_inputs
    (root / "ft/semseg/image_contrast/seed2-frac0.1/metrics.json").unlink()
    with pytest.raises(InputError, match=r"semseg/image_contrast/seed2-frac0.1/metrics.json: file not found"):
        build_tables(cfg, root / "ft", root / "pt", root / "tables", root / "var")
    (root / "var/no_tqm/finetune/semseg/text4point/seed0-frac1.0/metrics.json").write_text("{not json")
    _write_runs(root / "ft", "semseg", ["image_contrast"], [2], [0.1], lambda i, s, f: 0.1)
    with pytest.raises(InputError, match=r"no_tqm/finetune/semseg/text4point/seed0-frac1.0/metrics.json: not valid "
                                         r"JSON"):
        build_tables(cfg, root / "ft", root / "pt", root / "tables", root / "var")


def test_the_teacher_table_gives_each_teachers_quality_and_its_gain_over_the_default_scratch_jobs(table_inputs):
    """A teacher variation reruns the CLIP bootstrap, the features, pre-training and the text4point jobs; its row
    reads its own bootstrap and pre-training metrics and pairs its text4point jobs with the *default* scratch
    jobs of the same seed, beside the default teacher's row."""
    from text4point import dag, params
    from text4point.fsutil import write_json
    from text4point.tables import build_tables, table_names

    cfg, root = table_inputs
    raw = {k: v for k, v in cfg.items() if k != "variations"}
    raw["variations"] = {"weak": {"table": "teacher", "description": "a crop-only teacher",
                                  "set": {"clip": {"bootstrap": {"dense_frames": 0, "dense_head_width": 0}}}}}
    # what the tables job's command gets: the rule's params as JSON (a teacher table once crashed there on a
    # KeyError 'clip', the rule passing fewer sections than the table reads)
    cfg = params.from_json(json.dumps(dag.job_params(params.validate(raw), "tables")))
    write_json(root / "clip_bootstrap.json", {"dense_miou": 0.25, "dense_pixel_accuracy": 0.73})
    write_json(root / "var/weak/metrics/clip_bootstrap.json", {"dense_miou": 0.10, "dense_pixel_accuracy": 0.41})
    write_json(root / "var/weak/metrics/pretrain/text4point.json",
               {"zeroshot_miou": 0.03, "zeroshot_miou_teacher": 0.08, "zeroshot_teacher_coverage": 0.29})
    # the weak teacher's text4point jobs: 1 point above scratch at 10 % and 2 below at 100 %, at every seed
    _write_runs(root / "var/weak/finetune", "semseg", ["text4point"], [0, 1, 2], [0.1, 1.0],
                lambda i, s, f: {0: 0.0, 1: 0.02, 2: -0.01}[s] * f + (0.04 + 0.01 if f == 0.1 else 0.40 - 0.02))
    summary = build_tables(cfg, root / "ft", root / "pt", root / "tables", root / "var")
    assert "teacher" in table_names(cfg) and "teacher" in summary["studies"]
    t = pd.read_csv(root / "tables/teacher.csv")
    assert list(t.teacher) == ["default", "default", "weak", "weak"] and set(t.init) == {"text4point"}
    weak = t[t.teacher == "weak"].set_index("label_fraction")
    assert weak.loc[0.1, "mean"] == pytest.approx(1.0) and weak.loc[1.0, "mean"] == pytest.approx(-2.0)
    assert weak.loc[1.0, "dense_miou"] == pytest.approx(10.0) and weak.loc[1.0, "zeroshot_miou"] == pytest.approx(3.0)
    assert weak.loc[1.0, "scratch_mean"] == pytest.approx(40.3333, abs=1e-3)
    default = t[t.teacher == "default"].set_index("label_fraction")
    # the default text4point jobs are 10 points above scratch at 100 % and 1 at 10 % (0.5 vs 0.4, times f)
    assert default.loc[1.0, "mean"] == pytest.approx(10.0) and default.loc[0.1, "mean"] == pytest.approx(1.0)
    assert default.loc[1.0, "dense_miou"] == pytest.approx(25.0) and default.loc[1.0, "zeroshot_miou"] == 10.0
    md = (root / "tables/teacher.md").read_text()
    assert ("| weak | a crop-only teacher | 10.0 | 41.0 | 8.0 | 29.0 | 3.0 | semseg | text4point | "
            "+1.0 [+1.0, +1.0] * | -2.0 [-2.0, -2.0] * |") in md


def test_a_teacher_variation_without_default_scratch_jobs_is_one_line():
    from pathlib import Path

    import yaml

    from text4point import params

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    raw["finetune"]["inits"] = ["text4point"]
    raw["variations"] = {"weak": {"table": "teacher", "set": {"clip": {"bootstrap": {"epochs": 2}}}}}
    with pytest.raises(InputError, match=r"^params.yaml: variations.weak: a teacher variation's gains are over the "
                                         r"default scratch jobs, but finetune.inits \['text4point'\] has no scratch$"):
        params.validate(raw)
