"""What a full run costs: each stage at three sizes of work on this machine, fitted growth, and the projected
hours and storage of a ScanNet v2 run (configs/scannet.yaml) per stage on 2 CPU cores and on N Slurm nodes.

    python benchmarks/bench_scale.py [--nodes 8] [--out results/benchmarks]

Runs the real stages through the `text4point` CLI in fresh processes (their own `seconds` figures, peak RSS from
`wait4`, bytes written) in a temporary directory:

- the frame stages (`data` = the offline world, `correspondences`, `clip-features` with the bootstrap CLIP of
  `models/clip/bootstrap.pt`) on three worlds that grow together in scenes, frames per scene and resolution;
- `pretrain` (text4point, one epoch) and `finetune` (semseg, scratch, 10 steps) with the network of
  configs/scannet.yaml (width, bottleneck and output channels) at three cloud sizes;
- an open_clip ViT-B-16 with random weights (no download): its dense forward at the input size the
  features stage uses for ScanNet's 1296x968 colour frames, and the cache size of its features.

Each stage's time is fitted over the three sizes twice: as ``a * work^k`` (least squares in log-log; ``k`` is the
growth exponent reported, distorted towards 0 where start-up dominates the small sizes) and as ``fixed +
per_unit * work``, whose marginal cost is extrapolated to ScanNet v2's work (linear growth assumed beyond the
measured sizes: an extrapolation over one to three orders of magnitude, stated per row). Peak memory is fitted
as a power law and reported with the largest measured value. The
import is projected from results/benchmarks/import.json (a real-sized scene, run by bench_import.py). No GPU was
available to this benchmark unless --gpu-json names figures measured on one; the GPU column says so.
Writes results/benchmarks/scale.json and scale.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from text4point.fsutil import write_json, write_text  # noqa: E402

# ScanNet v2 (Dai et al., CVPR 2017): 1513 scans (1201 train, 312 val), about 2.5 M RGB-D frames in all, 640x480
# depth and 1296x968 colour. Frames per scan are its mean.
SCANNET = {"scans": 1513, "train_scans": 1201, "val_scans": 312, "frames": 2_500_000,
           "depth_size": (640, 480), "color_size": (1296, 968)}
# Three worlds that grow together: (clip, train, val) scenes, frames per scene, colour and depth size.
WORLDS = [((1, 2, 1), 8, (162, 121), (80, 60)),
          ((1, 3, 1), 12, (243, 182), (120, 90)),
          ((1, 4, 1), 16, (324, 242), (160, 120))]
PRETRAIN_VOXEL = 0.05                   # frame clouds for the pre-training sizes (the default grid is 0.1)
PRETRAIN_BATCH = (2, 4, 8)              # pretrain.batch_size: frames per step
FINETUNE_POINTS = (2000, 4000, 8000)    # finetune.max_points of a whole-room view (crop 0)


def run_cli(args: list[str], cwd: Path, log: Path) -> tuple[float, float]:
    """Run ``text4point <args>``; (wall seconds, peak RSS MiB of the process). A failure is one line."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", MLFLOW_TRACKING_URI=f"sqlite:///{cwd / 'mlflow.db'}",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen([str(Path(sys.executable).parent / "text4point"), *args, "--quiet"], cwd=cwd, env=env,
                             stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"error: text4point {args[0]} failed ({log}): {tail[0]}")
    return wall, usage.ru_maxrss / 1024.0


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def fit(work: list[float], values: list[float]) -> dict:
    """``value = a * work^k`` by least squares in log-log; the fit's largest relative residual."""
    x, y = np.log(np.asarray(work, float)), np.log(np.asarray(values, float))
    k, loga = np.polyfit(x, y, 1)
    resid = float(np.max(np.abs(np.exp(y - (loga + k * x)) - 1.0)))
    return {"a": float(math.exp(loga)), "k": round(float(k), 3), "max_rel_residual": round(resid, 3)}


def fit_affine(work: list[float], values: list[float]) -> dict:
    """``value = fixed + per_unit * work`` by least squares: a stage's start-up (model load, workers) and its
    marginal cost. A slope that the noise makes <= 0 falls back to the largest size's mean rate."""
    w, v = np.asarray(work, float), np.asarray(values, float)
    per_unit, fixed = np.polyfit(w, v, 1)
    if per_unit <= 0:
        return {"fixed": 0.0, "per_unit": float(v[-1] / w[-1]), "how": "mean rate of the largest size"}
    return {"fixed": float(fixed), "per_unit": float(per_unit), "how": "least squares"}


def step_fits(rows: list[dict], work_key: str) -> dict:
    """Step time (power law and affine) and peak RSS of a network stage's sizes against ``work_key``."""
    x, t = [r[work_key] for r in rows], [r["step_seconds"] for r in rows]
    return {"time": fit(x, t), "time_affine": fit_affine(x, t), "rss": fit(x, [r["rss_mb"] for r in rows])}


def predict(f: dict, work: float) -> float:
    """Projected value: the affine fit's marginal cost (start-up once) when ``f`` has one, else the power law."""
    if "per_unit" in f:
        return max(f["fixed"], 0.0) + f["per_unit"] * work
    return f["a"] * work ** f["k"]


def merged_params(overlay: dict) -> dict:
    from text4point.params import _merge, read_file

    return _merge(read_file(ROOT / "params.yaml"), overlay)


def frame_stages(tmp: Path, checkpoint: Path) -> list[dict]:
    rows = []
    for i, (scenes, frames, color, depth) in enumerate(WORLDS):
        d = tmp / f"world{i}"
        d.mkdir()
        cfg = merged_params({"data": {"world": {"scenes": dict(zip(("clip", "train", "val"), scenes)),
                                                "frames_per_scene": frames, "color_size": list(color),
                                                "depth_size": list(depth)}}})
        (d / "params.yaml").write_text(yaml.safe_dump(cfg))
        p = ["--params", str(d / "params.yaml")]
        w_data, m_data = run_cli(["data", *p, "--out", str(d / "world"), "--metrics", str(d / "data.json")], d,
                                 d / "data.log")
        w_corr, m_corr = run_cli(["correspondences", *p, "--data", str(d / "world"), "--out", str(d / "corr"),
                                  "--metrics", str(d / "corr.json")], d, d / "corr.log")
        w_feat, m_feat = run_cli(["clip-features", *p, "--data", str(d / "world"), "--out", str(d / "feat"),
                                  "--metrics", str(d / "feat.json"), "--clip-checkpoint", str(checkpoint)], d,
                                 d / "feat.log")
        data_m, corr_m, feat_m = (json.loads((d / n).read_text()) for n in ("data.json", "corr.json", "feat.json"))
        n_frames = int(data_m["frames"])
        rows.append({"size": i, "scenes": sum(scenes), "frames_per_scene": frames, "color_size": list(color),
                     "depth_size": list(depth), "frames": n_frames,
                     "data": {"seconds": data_m["seconds"], "wall": round(w_data, 2), "rss_mb": round(m_data, 1),
                              "bytes": dir_bytes(d / "world"), "work": n_frames * color[0] * color[1]},
                     "correspondences": {"seconds": corr_m["seconds"], "wall": round(w_corr, 2),
                                         "rss_mb": round(m_corr, 1), "bytes": dir_bytes(d / "corr"),
                                         "frames": corr_m["frames_total"],
                                         "work": corr_m["frames_total"] * depth[0] * depth[1]},
                     "clip_features": {"seconds": feat_m["seconds"], "wall": round(w_feat, 2),
                                       "rss_mb": round(m_feat, 1), "bytes": dir_bytes(d / "feat"),
                                       "frames": feat_m["frames"], "work": feat_m["frames"]}})
        print(f"world {i}: {n_frames} frames; data {data_m['seconds']} s, correspondences {corr_m['seconds']} s, "
              f"features {feat_m['seconds']} s", flush=True)
    return rows


def network_stages(tmp: Path, world: Path, checkpoint: Path, scannet: dict) -> dict:
    net = {k: scannet["pretrain"][k] for k in ("width", "bottleneck_dim", "out_dim")}
    out = {"network": net, "pretrain": [], "finetune": []}
    # frame clouds on a 5 cm grid (4x the points of the default 10 cm), then more frames per step
    fine = {"correspondences": {"voxel_size": PRETRAIN_VOXEL}}
    (world / "fine.yaml").write_text(yaml.safe_dump(merged_params(fine)))
    run_cli(["correspondences", "--params", str(world / "fine.yaml"), "--data", str(world / "world"),
             "--out", str(world / "corr_fine"), "--metrics", str(world / "corr_fine.json")], world,
            world / "corr_fine.log")
    for n in PRETRAIN_BATCH:
        d = tmp / f"pretrain{n}"
        d.mkdir()
        cfg = merged_params({**fine, "pretrain": {**net, "epochs": 1, "batch_size": n}})
        (d / "params.yaml").write_text(yaml.safe_dump(cfg))
        wall, rss = run_cli(["pretrain", "--params", str(d / "params.yaml"), "--variant", "text4point",
                             "--data", str(world / "world"), "--corr", str(world / "corr_fine"),
                             "--features", str(world / "feat"), "--clip-checkpoint", str(checkpoint),
                             "--out", str(d / "checkpoint.pt"), "--metrics", str(d / "metrics.json")], d,
                            d / "pretrain.log")
        m = json.loads((d / "metrics.json").read_text())
        out["pretrain"].append({"batch_size": n, "steps": m["steps"], "seconds_train": m["seconds_train"],
                                "points_per_step": m["points_seen"] / max(1, m["steps"]),
                                "step_seconds": m["seconds_train"] / max(1, m["steps"]), "wall": round(wall, 2),
                                "rss_mb": round(rss, 1)})
        print(f"pretrain batch {n}: {out['pretrain'][-1]['step_seconds']:.3f} s/step", flush=True)
    for n in FINETUNE_POINTS:
        d = tmp / f"finetune{n}"
        d.mkdir()
        cfg = merged_params({"pretrain": net, "finetune": {"steps": 10, "batch_size": 2, "max_points": n,
                                                           "view": {"crop": 0.0}}})
        (d / "params.yaml").write_text(yaml.safe_dump(cfg))
        wall, rss = run_cli(["finetune", "--params", str(d / "params.yaml"), "--task", "semseg", "--init", "scratch",
                             "--seed", "0", "--label-fraction", "1.0", "--data", str(world / "world"),
                             "--out", str(d / "metrics.json")], d, d / "finetune.log")
        m = json.loads((d / "metrics.json").read_text())
        out["finetune"].append({"max_points": n, "voxels_per_step": 2 * n, "steps": m["steps"],
                                "step_seconds": m["seconds_train"] / m["steps"], "wall": round(wall, 2),
                                "rss_mb": round(rss, 1)})
        print(f"finetune max_points {n}: {out['finetune'][-1]['step_seconds']:.3f} s/step", flush=True)
    return out


def vit_b16(scannet: dict, repeats: int = 3) -> dict:
    """Dense forward of an open_clip ViT-B-16 with random weights at ScanNet's colour size (CPU, 2 frames)."""
    import torch

    from text4point.clip.dense import dense_features, dense_input_size, grid_geometry
    from text4point.clip.load import build_model, wrap_model

    handle = wrap_model(build_model("ViT-B-16"), "ViT-B-16", {"pretrained": "random"}, "cpu")
    size = dense_input_size(handle, SCANNET["color_size"], float(scannet["clip"]["dense_scale"]))
    grid = grid_geometry(handle, SCANNET["color_size"], size)
    x = torch.randn(2, 3, *size)
    times = []
    with torch.inference_mode():
        dense_features(handle, x)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            f = dense_features(handle, x)
            times.append((time.perf_counter() - t0) / 2)
    gh, gw = grid["grid"]
    return {"input_size": list(size), "grid": [gh, gw], "feature_dim": int(f.shape[-1]),
            "seconds_per_frame": round(float(np.median(times)), 3), "threads": torch.get_num_threads(),
            "bytes_per_frame": gh * gw * handle.embed_dim * 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=8, help="Slurm nodes for the N-node column (each like this one)")
    ap.add_argument("--checkpoint", default=str(ROOT / "models" / "clip" / "bootstrap.pt"))
    ap.add_argument("--gpu-json", help="figures measured on a GPU (same keys as scale.json's 'measured')")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    ap.add_argument("--reproject", help="a scale.json: recompute the fits and projections from its measurements")
    args = ap.parse_args()
    if args.reproject:
        old = json.loads(Path(args.reproject).read_text())
        m = old["measured"]
        result = project(m["worlds"], m["networks"], m["vit_b16"], _scannet_params(), args)
        result["benchmark_seconds"] = old.get("benchmark_seconds")
        _write(result, Path(args.out))
        return
    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        raise SystemExit(f"error: {checkpoint}: bootstrap CLIP checkpoint not found (run `make pipeline` first)")
    scannet = _scannet_params()
    tmp = Path(tempfile.mkdtemp(prefix="t4p-scale-"))
    t_start = time.perf_counter()
    try:
        frames = frame_stages(tmp, checkpoint)
        nets = network_stages(tmp, tmp / f"world{len(WORLDS) - 1}", checkpoint, scannet)
        vit = vit_b16(scannet)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = project(frames, nets, vit, scannet, args)
    result["benchmark_seconds"] = round(time.perf_counter() - t_start, 1)
    _write(result, Path(args.out))


def _scannet_params() -> dict:
    from text4point.params import _merge, read_file, validate

    return validate(_merge(read_file(ROOT / "params.yaml"), read_file(ROOT / "configs" / "scannet.yaml")),
                    source="configs/scannet.yaml")


def _write(result: dict, out: Path) -> None:
    write_json(out / "scale.json", result)
    md = markdown(result)
    write_text(out / "scale.md", md)
    print(md)


def project(frames: list[dict], nets: dict, vit: dict, sc: dict, args) -> dict:
    fs = sc["data"]["scannet"]["frame_skip"] * sc["correspondences"]["frame_skip"]
    kept = SCANNET["frames"] / fs                       # frames the import exports and later stages read
    train_kept = kept * SCANNET["train_scans"] / SCANNET["scans"]
    dw, dh = SCANNET["depth_size"]
    cw, ch = SCANNET["color_size"]
    imp = json.loads((ROOT / "results" / "benchmarks" / "import.json").read_text())
    imp_s = float(imp["workers"]["1"]["seconds_per_scene"])
    frame_bytes = float(imp["scene"]["mean_jpeg_bytes"]) + float(imp["scene"]["mean_depth_zlib_bytes"])
    fits, rows = {}, []

    def stage(name, key, work_scannet, unit, parallel_units, note):
        w = [f[key]["work"] for f in frames]
        t = [f[key]["seconds"] for f in frames]
        ft, fm = fit(w, t), fit(w, [f[key]["rss_mb"] for f in frames])
        fb = fit_affine(w, [f[key]["bytes"] for f in frames])
        fits[name] = {"time": ft, "time_affine": fit_affine(w, t), "rss": fm, "bytes": fb, "work": w, "unit": unit}
        ft = fits[name]["time_affine"]
        hours = predict(ft, work_scannet) / 3600
        rows.append({"stage": name, "work_measured": f"{min(w):.3g}-{max(w):.3g} {unit}",
                     "work_scannet": f"{work_scannet:.3g} {unit}", "time_exponent": fits[name]["time"]["k"],
                     "hours_2_cores": round(hours, 2),
                     "hours_n_nodes": round(hours / min(args.nodes, parallel_units), 2),
                     "storage_gb": round(predict(fb, work_scannet) / 1e9, 1), "rss_exponent": fm["k"],
                     "note": note})

    rows.append({"stage": "import (ScanNet .sens)", "work_measured": "1 real-sized scene (bench_import.py)",
                 "work_scannet": f"{SCANNET['scans']} scans", "time_exponent": 1.0,
                 "hours_2_cores": round(imp_s * SCANNET["scans"] / 3600, 2),
                 "hours_n_nodes": round(imp_s * SCANNET["scans"] / 3600 / args.nodes, 2),
                 "storage_gb": round(kept * frame_bytes / 1e9, 1), "rss_exponent": None,
                 "note": f"{imp_s:.1f} s per 2000-frame scene at frame_skip 10 (linear in scans; frame_skip {fs} "
                         f"exports fewer frames); storage: the kept frames at the .sens JPEG and zlib-depth "
                         f"sizes ({frame_bytes / 1e6:.2f} MB per frame), meshes not counted"})
    stage("correspondences", "correspondences", kept * dw * dh, "depth px", SCANNET["scans"],
          f"{kept:.0f} frames at {dw}x{dh}; per-scene work, so N nodes divide it")
    # the features stage's work is frames (its input size does not grow with the frame); ViT-B-16 measured below
    w = [f["clip_features"]["work"] for f in frames]
    fits["clip_features_t4p_tiny"] = {"time": fit(w, [f["clip_features"]["seconds"] for f in frames]),
                                      "rss": fit(w, [f["clip_features"]["rss_mb"] for f in frames])}
    vit_hours = vit["seconds_per_frame"] * kept / 3600
    rows.append({"stage": "clip_features (ViT-B-16)", "work_measured": "2 frames, forward only",
                 "work_scannet": f"{kept:.3g} frames", "time_exponent": 1.0, "hours_2_cores": round(vit_hours, 2),
                 "hours_n_nodes": round(vit_hours / args.nodes, 2),
                 "storage_gb": round(vit["bytes_per_frame"] * kept / 1e9, 1), "rss_exponent": None,
                 "note": f"{vit['seconds_per_frame']} s per frame at {vit['input_size'][1]}x{vit['input_size'][0]} "
                         f"input, grid {vit['grid'][0]}x{vit['grid'][1]} x {vit['feature_dim']} fp16 = "
                         f"{vit['bytes_per_frame'] / 1e6:.2f} MB per frame; decode and writes not included"})

    pt, ft_ = nets["pretrain"], nets["finetune"]
    fits["pretrain_step"] = step_fits(pt, "points_per_step")
    fp = fits["pretrain_step"]["time_affine"]
    p_cfg = sc["pretrain"]
    pts_step = p_cfg["batch_size"] * p_cfg["max_points"]
    steps = math.ceil(train_kept / p_cfg["batch_size"]) * p_cfg["epochs"]
    n_variants = len(p_cfg["variants"])
    pre_hours = predict(fp, pts_step) * steps / 3600
    rows.append({"stage": "pretrain (one variant)", "work_measured":
                 f"{min(r['points_per_step'] for r in pt):.0f}-{max(r['points_per_step'] for r in pt):.0f} points/step",
                 "work_scannet": f"{steps} steps x {pts_step} points",
                 "time_exponent": fits["pretrain_step"]["time"]["k"],
                 "hours_2_cores": round(pre_hours * n_variants, 1), "hours_n_nodes": round(pre_hours, 1),
                 "storage_gb": None, "rss_exponent": fits["pretrain_step"]["rss"]["k"],
                 "note": f"{n_variants} variants: one after another on 2 cores, one per node with N >= {n_variants}; "
                         f"frame clouds assumed at the {p_cfg['max_points']}-point cap; width {p_cfg['width']}"})
    fits["finetune_step"] = step_fits(ft_, "voxels_per_step")
    ff = fits["finetune_step"]["time_affine"]
    f_cfg = sc["finetune"]
    vox_step = f_cfg["batch_size"] * f_cfg["max_points"]
    n_jobs = len(f_cfg["tasks"]) * len(f_cfg["inits"]) * len(f_cfg["seeds"]) * len(f_cfg["label_fractions"])
    job_hours = predict(ff, vox_step) * f_cfg["steps"] / 3600
    rows.append({"stage": f"finetune ({n_jobs} jobs)", "work_measured":
                 f"{min(r['voxels_per_step'] for r in ft_)}-{max(r['voxels_per_step'] for r in ft_)} voxels/step",
                 "work_scannet": f"{f_cfg['steps']} steps x {vox_step} voxels, per job",
                 "time_exponent": fits["finetune_step"]["time"]["k"],
                 "hours_2_cores": round(job_hours * n_jobs, 1),
                 "hours_n_nodes": round(job_hours * math.ceil(n_jobs / args.nodes), 1), "storage_gb": None,
                 "rss_exponent": fits["finetune_step"]["rss"]["k"],
                 "note": f"{job_hours:.1f} h per job (semseg step as the proxy for every task); the paper "
                         f"ablations' jobs come on top"})
    gpu = json.loads(Path(args.gpu_json).read_text()) if args.gpu_json else None
    return {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "nodes": args.nodes, "scannet": {**SCANNET, "frame_skip_total": fs, "frames_kept": round(kept)},
            "config": "configs/scannet.yaml", "measured": {"worlds": frames, "networks": nets, "vit_b16": vit},
            "fits": fits, "projection": rows, "gpu": gpu if gpu else "unmeasured (no GPU device run)",
            "total_hours_2_cores": round(sum(r["hours_2_cores"] for r in rows), 1),
            "total_hours_n_nodes": round(sum(r["hours_n_nodes"] for r in rows), 1)}


def markdown(r: dict) -> str:
    lines = ["# What a full ScanNet v2 run costs (projected)", "",
             f"Measured on this machine ({r['machine']['cpus']} CPUs, no GPU) by running every stage at three sizes "
             f"of work; projected to ScanNet v2 with `{r['config']}` ({r['scannet']['scans']} scans, "
             f"~{r['scannet']['frames']:,} frames, every {r['scannet']['frame_skip_total']}th kept: "
             f"{r['scannet']['frames_kept']:,} frames). Time fitted as a·work^k (the exponent k below) and as "
             f"fixed + per_unit·work, whose marginal cost is projected (linear growth beyond the measured sizes); "
             f"the projections extrapolate far beyond the measured sizes and are estimates, not measurements. "
             f"N = {r['nodes']} Slurm nodes, each like this machine.", "",
             "| stage | work measured | ScanNet work | time exponent k | hours, 2 cores | hours, N nodes | "
             "storage GB | RSS exponent | note |", "|---|---|---|---|---|---|---|---|---|"]
    for x in r["projection"]:
        lines.append(f"| {x['stage']} | {x['work_measured']} | {x['work_scannet']} | {x['time_exponent']} | "
                     f"{x['hours_2_cores']} | {x['hours_n_nodes']} | "
                     f"{'-' if x['storage_gb'] is None else x['storage_gb']} | "
                     f"{'-' if x['rss_exponent'] is None else x['rss_exponent']} | {x['note']} |")
    lines += ["", f"Total: **{r['total_hours_2_cores']} h on 2 cores**, {r['total_hours_n_nodes']} h on "
                  f"{r['nodes']} nodes. GPU column: {r['gpu'] if isinstance(r['gpu'], str) else 'see scale.json'}.",
              "", "## Measured sizes", "",
              "| world | scenes | frames | colour | depth | data s | correspondences s | features s (t4p-tiny) | "
              "peak RSS MB (data / corr / features) |", "|---|---|---|---|---|---|---|---|---|"]
    for w in r["measured"]["worlds"]:
        lines.append(f"| {w['size']} | {w['scenes']} | {w['frames']} | {w['color_size'][0]}x{w['color_size'][1]} | "
                     f"{w['depth_size'][0]}x{w['depth_size'][1]} | {w['data']['seconds']} | "
                     f"{w['correspondences']['seconds']} | {w['clip_features']['seconds']} | "
                     f"{w['data']['rss_mb']:.0f} / {w['correspondences']['rss_mb']:.0f} / "
                     f"{w['clip_features']['rss_mb']:.0f} |")
    n = r["measured"]["networks"]
    lines += ["", f"Networks as configs/scannet.yaml ({n['network']}):", "",
              "| stage | size | points or voxels per step | s per step | peak RSS MB |", "|---|---|---|---|---|"]
    for x in n["pretrain"]:
        lines.append(f"| pretrain | batch {x['batch_size']} | {x['points_per_step']:.0f} | {x['step_seconds']:.3f} | "
                     f"{x['rss_mb']:.0f} |")
    for x in n["finetune"]:
        lines.append(f"| finetune | max_points {x['max_points']} | {x['voxels_per_step']} | {x['step_seconds']:.3f} | "
                     f"{x['rss_mb']:.0f} |")
    v = r["measured"]["vit_b16"]
    lines += ["", f"ViT-B-16 (random weights) dense forward: {v['seconds_per_frame']} s per frame at "
                  f"{v['input_size'][1]}x{v['input_size'][0]}, grid {v['grid'][0]}x{v['grid'][1]}, "
                  f"{v['bytes_per_frame'] / 1e6:.2f} MB of fp16 features per frame.",
              f"The benchmark took {r.get('benchmark_seconds', '?')} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
