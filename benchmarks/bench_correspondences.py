"""Speed of the `correspondences` stage against its floor, decoding the frames it reads: on N scenes of the
default world, (a) decoding only the sampled frames (pose, depth and colour reads, in the stage's order) and
(b) the whole extraction (``process_scene``, its decoding included), both measured in one run, median of
the repeats; the ratio (b)/(a) has a target of 1.5. Measured at each resolution asked for: ``world`` (the
world's own frames) and ``scannet`` (ScanNet's full resolution, 1296x968 colour and 640x480 depth: the same
scenes upscaled 4x into a temporary dataset, colour bilinear, depth nearest, intrinsics scaled to match).
Where the time goes, per resolution, over a separate pass under cProfile: the functions with the most own
time (Python functions and the torch/numpy calls they make), each with its share of the profiled pass, and the
share of that pass spent reading frames (``_read_frame``, cumulative). cProfile adds a cost to every call, so
shares, not seconds, are the figure. Peak memory per resolution, over a separate pass: tracemalloc's peak
(Python and numpy allocations; torch's CPU tensors are not traced), the process's peak resident set (VmHWM,
reset before the pass where Linux allows) and, on CUDA, torch's peak allocated memory.

    python benchmarks/bench_correspondences.py [--scenes 4] [--repeats 3] [--data data/world]
                                               [--resolutions world,scannet]

Writes results/benchmarks/correspondences.json and correspondences.md.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from text4point import params as P  # noqa: E402
from text4point.correspondences import STAGE_SPLITS, _read_frame, process_scene  # noqa: E402
from text4point.fsutil import write_json, write_text  # noqa: E402
from text4point.runtime import cpu_threads, device  # noqa: E402
from text4point.scene import (INTRINSIC_FILES, Dataset, Scene, read_matrix, sampled_frames, write_image,  # noqa: E402
                              write_matrix)

TARGET_RATIO = 1.5
SCANNET_COLOR, SCANNET_DEPTH = (1296, 968), (640, 480)


def decode_only(scene: Scene, cfg: dict) -> int:
    """Read every sampled frame as the stage does (pose, depth, valid-depth check, colour); return frames read."""
    n = 0
    for i in sampled_frames(scene.num_frames, cfg["frame_skip"]):
        _read_frame(scene, i, cfg["min_valid_depth"])
        n += 1
    return n


def _scale_intrinsic(K: np.ndarray, s: float) -> np.ndarray:
    """K for the image upscaled by s (integer pixel coordinates are pixel centres: u' = s u + (s - 1) / 2)."""
    K = np.array(K, np.float64)
    K[0, 0], K[1, 1] = K[0, 0] * s, K[1, 1] * s
    K[0, 2], K[1, 2] = K[0, 2] * s + (s - 1) / 2, K[1, 2] * s + (s - 1) / 2
    return K


def upscaled_copy(ds: Dataset, ids: list[str], dest: Path, cfg: dict) -> Dataset:
    """The scenes ``ids`` at ScanNet's full resolution in a new dataset at ``dest`` (sampled frames only)."""
    for sid in ids:
        src, out = ds.scene(sid), dest / "scenes" / sid
        meta = dict(src.meta)
        (cw, ch), (dw, dh) = meta["color_size"], meta["depth_size"]
        sc, sd = SCANNET_COLOR[0] / cw, SCANNET_DEPTH[0] / dw
        if (round(ch * sc), round(dh * sd)) != (SCANNET_COLOR[1], SCANNET_DEPTH[1]) or sd != int(sd):
            raise SystemExit(f"{sid}: {cw}x{ch} colour / {dw}x{dh} depth do not scale to ScanNet's sizes")
        for name in INTRINSIC_FILES:
            m = read_matrix(src.path / "intrinsic" / name)
            s = sc if name == "intrinsic_color.txt" else sd if name == "intrinsic_depth.txt" else 1.0
            write_matrix(out / "intrinsic" / name, _scale_intrinsic(m, s) if s != 1.0 else m)
        for i in sampled_frames(src.num_frames, cfg["frame_skip"]):
            for kind in ("pose", "color", "depth"):
                p = src.frame_path(kind, i)
                if not p.exists():
                    continue
                q = out / kind / p.name
                q.parent.mkdir(parents=True, exist_ok=True)
                if kind == "pose":
                    q.write_bytes(p.read_bytes())
                elif kind == "color":
                    with Image.open(p) as img:
                        write_image(q, np.asarray(img.convert("RGB").resize(SCANNET_COLOR, Image.BILINEAR)))
                else:
                    with Image.open(p) as img:
                        d = np.asarray(img).astype(np.uint16)
                    write_image(q, np.repeat(np.repeat(d, int(sd), 0), int(sd), 1))
        meta["color_size"], meta["depth_size"] = list(SCANNET_COLOR), list(SCANNET_DEPTH)
        write_json(out / "scene.json", meta)
    for split in STAGE_SPLITS:
        write_text(dest / "splits" / f"{split}.txt", "".join(f"{s}\n" for s in ds.split(split) if s in ids))
    write_json(dest / "dataset.json", ds.meta)
    return Dataset(dest)


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def profile_pass(scenes: list[Scene], cfg: dict, dev, top: int = 12) -> dict:
    """One ``process_scene`` pass over ``scenes`` under cProfile: the ``top`` functions by own time and the share
    spent reading frames."""
    prof = cProfile.Profile()
    prof.enable()
    for sc in scenes:
        process_scene(sc, cfg, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    prof.disable()
    st = pstats.Stats(prof)
    total = st.total_tt
    rows = []
    for (file, line, name), (_, calls, own, cum, _) in st.stats.items():
        where = name if file == "~" else f"{Path(file).name}:{line}({name})"
        rows.append({"function": where, "calls": calls, "own_seconds": own, "cumulative_seconds": cum})
    read = sum(r["cumulative_seconds"] for r in rows if r["function"].endswith("(_read_frame)"))
    rows.sort(key=lambda r: -r["own_seconds"])
    return {"profiled_seconds": round(total, 4), "read_frames_share": round(read / total, 3),
            "top_own_time": [{"function": r["function"], "calls": r["calls"],
                              "share": round(r["own_seconds"] / total, 3)} for r in rows[:top]]}


def measure(scenes: list[Scene], cfg: dict, dev, repeats: int) -> dict:
    for sc in scenes:  # warm-up: file cache, torch's lazy initialisation
        decode_only(sc, cfg)
        process_scene(sc, cfg, dev)
    decode_s, process_s, frames = [], [], 0
    for _ in range(repeats):
        a = b = 0.0
        frames = 0
        for sc in scenes:
            t0 = time.perf_counter()
            frames += decode_only(sc, cfg)
            t1 = time.perf_counter()
            process_scene(sc, cfg, dev)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t2 = time.perf_counter()
            a, b = a + t1 - t0, b + t2 - t1
        decode_s.append(a)
        process_s.append(b)
    profile = profile_pass(scenes, cfg, dev)
    rss_reset = _reset_peak_rss()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    tracemalloc.start()
    stats = []
    for sc in scenes:
        r = process_scene(sc, cfg, dev)
        stats.append(r["stats"])
        del r
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    a, b = statistics.median(decode_s), statistics.median(process_s)
    return {
        "color_size": stats[0]["color_size"] if stats else None,
        "depth_size": stats[0]["depth_size"] if stats else None,
        "frames_per_repeat": frames,
        "decode_seconds": [round(x, 4) for x in decode_s],
        "process_seconds": [round(x, 4) for x in process_s],
        "decode_ms_per_frame": round(1000 * a / frames, 3),
        "process_ms_per_frame": round(1000 * b / frames, 3),
        "ratio_process_to_decode": round(b / a, 3),
        "meets_target": b / a <= TARGET_RATIO,
        "tracemalloc_peak_mib": round(traced_peak / 2**20, 2),
        "peak_rss_mib": _peak_rss_mib(),
        "peak_rss_reset": rss_reset,
        "cuda_peak_allocated_mib": (round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda"
                                    else None),
        "profile": profile,
        "scene_stats": [{k: s[k] for k in ("scene_id", "frames_total", "frames_kept", "skipped", "pairs", "points",
                                           "matches", "matches_per_pair", "self_matches_per_frame",
                                           "self_match_fraction_median")} for s in stats],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--data", default=str(ROOT / "data" / "world"))
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--resolutions", default="world,scannet", help="comma-separated: world, scannet")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    args = ap.parse_args()
    resolutions = [r.strip() for r in args.resolutions.split(",") if r.strip()]
    if not resolutions or set(resolutions) - {"world", "scannet"}:
        raise SystemExit(f"--resolutions: expected world and/or scannet, got {args.resolutions!r}")
    cfg = P.load(args.params)["correspondences"]
    ds = Dataset(args.data)
    ids = [sid for split in STAGE_SPLITS for sid in ds.split(split)][:args.scenes]
    dev = device()
    per_res = {}
    with cpu_threads(dev), tempfile.TemporaryDirectory(prefix="bench_corr_") as tmp:  # the stage's setting
        threads = torch.get_num_threads()
        for res in resolutions:
            rds = ds if res == "world" else upscaled_copy(ds, ids, Path(tmp), cfg)
            per_res[res] = measure([rds.scene(sid) for sid in ids], cfg, dev, args.repeats)
    data = Path(os.path.abspath(args.data))
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "torch": torch.__version__, "device": str(dev), "torch_threads": threads},
        "data": str(data.relative_to(ROOT)) if data.is_relative_to(ROOT) else args.data,
        "params": cfg,
        "scenes": ids,
        "repeats": args.repeats,
        "target_ratio": TARGET_RATIO,
        "ratio_process_to_decode": {res: r["ratio_process_to_decode"] for res, r in per_res.items()},
        "meets_target": all(r["meets_target"] for r in per_res.values()),
        "resolutions": per_res,
        "maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "correspondences.json", result)
    names = list(per_res)
    lines = ["# Correspondence extraction speed", "",
             f"Machine: {result['machine']['cpus']} CPUs, Python {result['machine']['python']}, torch "
             f"{result['machine']['torch']} on {result['machine']['device']} ({threads} intra-op threads). "
             f"{len(ids)} scenes of `{result['data']}`, medians of {args.repeats} repeats measured in one run; "
             "`scannet`: the same scenes upscaled 4x to ScanNet's full resolution.", "",
             "| figure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]

    def row(label, key):
        lines.append(f"| {label} | " + " | ".join(str(per_res[n][key]) for n in names) + " |")

    lines.append("| colour / depth size | " + " | ".join(
        f"{'x'.join(map(str, per_res[n]['color_size']))} / {'x'.join(map(str, per_res[n]['depth_size']))}"
        for n in names) + " |")
    row("sampled frames per repeat", "frames_per_repeat")
    row("(a) decode only: pose + depth + colour reads, ms per frame", "decode_ms_per_frame")
    row("(b) whole extraction (`process_scene`, decoding included), ms per frame", "process_ms_per_frame")
    row(f"ratio (b)/(a) (target <= {TARGET_RATIO})", "ratio_process_to_decode")
    row("tracemalloc peak (Python + numpy), MiB", "tracemalloc_peak_mib")
    row("peak resident set over the pass, MiB", "peak_rss_mib")
    if dev.type == "cuda":
        row("CUDA peak allocated, MiB", "cuda_peak_allocated_mib")
    lines += ["", "## Where the time goes (one pass under cProfile)", "",
              "Own time of the functions that take the most, as a share of the profiled pass (cProfile's per-call "
              "cost inflates many small calls; shares, not seconds, are the figure). Reading frames "
              "(`_read_frame`, cumulative: the decode floor (a)): "
              + ", ".join(f"{n} {per_res[n]['profile']['read_frames_share']:.1%}" for n in names) + "."]
    for n in names:
        lines += ["", f"{n} ({per_res[n]['profile']['profiled_seconds']} s profiled):", "",
                  "| function | calls | share of the pass |", "|---|---|---|"]
        for r in per_res[n]["profile"]["top_own_time"]:
            lines.append(f"| `{r['function']}` | {r['calls']} | {r['share']:.1%} |")
    for n in names:
        lines += ["", f"## {n}", "",
                  "| scene | frames kept / sampled | skipped | pairs | points | matches | matches per pair (median) |",
                  "|---|---|---|---|---|---|---|"]
        for s in per_res[n]["scene_stats"]:
            skipped = ", ".join(f"{k} {v}" for k, v in s["skipped"].items() if v) or "-"
            lines.append(f"| {s['scene_id']} | {s['frames_kept']} / {s['frames_total']} | {skipped} | {s['pairs']} | "
                         f"{s['points']} | {s['matches']} | {s['matches_per_pair']['median']} |")
    write_text(out / "correspondences.md", "\n".join(lines) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "resolutions"}, indent=2))
    for n in names:
        print(n, json.dumps({k: v for k, v in per_res[n].items() if k not in ("scene_stats", "profile")}))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
