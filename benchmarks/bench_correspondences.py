"""Speed of the `correspondences` stage against its floor, decoding the frames it reads: on N scenes of the
default world, (a) decoding only the sampled frames (pose, depth and colour reads, in the stage's order) and
(b) the whole extraction (``process_scene``, its decoding included), both measured in one run, median of
the repeats; the ratio (b)/(a) has a target of 1.5. Peak memory: tracemalloc's peak (Python and numpy
allocations; torch's CPU tensors are not traced) over a separate traced pass, and the process's maxrss.

    python benchmarks/bench_correspondences.py [--scenes 4] [--repeats 3] [--data data/world]

Writes results/benchmarks/correspondences.json and correspondences.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from text4point import params as P  # noqa: E402
from text4point.correspondences import STAGE_SPLITS, _read_frame, process_scene  # noqa: E402
from text4point.fsutil import write_json, write_text  # noqa: E402
from text4point.runtime import cpu_threads, device  # noqa: E402
from text4point.scene import Dataset, Scene, sampled_frames  # noqa: E402

TARGET_RATIO = 1.5


def decode_only(scene: Scene, cfg: dict) -> int:
    """Read every sampled frame as the stage does (pose, depth, valid-depth check, colour); return frames read."""
    n = 0
    for i in sampled_frames(scene.num_frames, cfg["frame_skip"]):
        _read_frame(scene, i, cfg["min_valid_depth"])
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--data", default=str(ROOT / "data" / "world"))
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    args = ap.parse_args()
    cfg = P.load(args.params)["correspondences"]
    ds = Dataset(args.data)
    ids = [sid for split in STAGE_SPLITS for sid in ds.split(split)][:args.scenes]
    scenes = [ds.scene(sid) for sid in ids]
    dev = device()

    with cpu_threads(dev):  # the stage's setting (run_stage)
        threads = torch.get_num_threads()
        for sc in scenes:  # warm-up: file cache, torch's lazy initialisation
            decode_only(sc, cfg)
            process_scene(sc, cfg, dev)
        decode_s, process_s, frames = [], [], 0
        for _ in range(args.repeats):
            a = b = 0.0
            frames = 0
            for sc in scenes:
                t0 = time.perf_counter()
                frames += decode_only(sc, cfg)
                t1 = time.perf_counter()
                process_scene(sc, cfg, dev)
                t2 = time.perf_counter()
                a, b = a + t1 - t0, b + t2 - t1
            decode_s.append(a)
            process_s.append(b)
        tracemalloc.start()
        stats = []
        for sc in scenes:
            r = process_scene(sc, cfg, dev)
            stats.append(r["stats"])
            del r
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    a, b = statistics.median(decode_s), statistics.median(process_s)
    maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "torch": torch.__version__, "device": str(dev), "torch_threads": threads},
        "data": str(Path(args.data).resolve().relative_to(ROOT)) if Path(args.data).resolve().is_relative_to(ROOT)
        else args.data,
        "params": cfg,
        "scenes": ids,
        "frames_per_repeat": frames,
        "repeats": args.repeats,
        "decode_seconds": [round(x, 4) for x in decode_s],
        "process_seconds": [round(x, 4) for x in process_s],
        "decode_ms_per_frame": round(1000 * a / frames, 3),
        "process_ms_per_frame": round(1000 * b / frames, 3),
        "ratio_process_to_decode": round(b / a, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": b / a <= TARGET_RATIO,
        "tracemalloc_peak_mib": round(traced_peak / 2**20, 2),
        "maxrss_mib": round(maxrss_kib / 1024, 1),
        "scene_stats": [{k: s[k] for k in ("scene_id", "frames_total", "frames_kept", "skipped", "pairs", "points",
                                           "matches", "matches_per_pair", "self_matches_per_frame",
                                           "self_match_fraction_median")} for s in stats],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "correspondences.json", result)
    lines = ["# Correspondence extraction speed", "",
             f"Machine: {result['machine']['cpus']} CPUs, Python {result['machine']['python']}, torch "
             f"{result['machine']['torch']} on {result['machine']['device']} ({threads} intra-op threads). "
             f"{len(ids)} scenes of `{result['data']}` ({frames} sampled frames), medians of {args.repeats} repeats "
             "measured in one run.", "",
             "| figure | value |", "|---|---|",
             f"| (a) decode only: pose + depth + colour reads, ms per frame | {result['decode_ms_per_frame']} |",
             "| (b) whole extraction (`process_scene`, decoding included), ms per frame | "
             f"{result['process_ms_per_frame']} |",
             f"| ratio (b)/(a) (target <= {TARGET_RATIO}) | {result['ratio_process_to_decode']} |",
             f"| tracemalloc peak (Python + numpy), MiB | {result['tracemalloc_peak_mib']} |",
             f"| process maxrss, MiB | {result['maxrss_mib']} |", "",
             "| scene | frames kept / sampled | skipped | pairs | points | matches | matches per pair (median) |",
             "|---|---|---|---|---|---|---|"]
    for s in result["scene_stats"]:
        skipped = ", ".join(f"{k} {v}" for k, v in s["skipped"].items() if v) or "-"
        lines.append(f"| {s['scene_id']} | {s['frames_kept']} / {s['frames_total']} | {skipped} | {s['pairs']} | "
                     f"{s['points']} | {s['matches']} | {s['matches_per_pair']['median']} |")
    write_text(out / "correspondences.md", "\n".join(lines) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "scene_stats"}, indent=2))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
