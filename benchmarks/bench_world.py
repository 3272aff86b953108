"""Speed of the offline world (the `data` stage): frames rendered per second, seconds per scene, and the
whole default world against its 5-minute budget on 2 cores. Ratios are measured in one run.

    python benchmarks/bench_world.py [--scenes 4] [--repeats 3] [--skip-full]

Writes results/benchmarks/world.json and world.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from text4point import params as P  # noqa: E402
from text4point.fsutil import write_json, write_text  # noqa: E402
from text4point.world.generate import generate_scene, generate_world, scene_rng  # noqa: E402
from text4point.world.render import SCANNET_COLOR, SCANNET_DEPTH, Renderer, scaled_intrinsics, trajectory  # noqa: E402
from text4point.world.room import build_room  # noqa: E402

BUDGET_S = 300.0


def render_only(cfg: dict, index: int) -> tuple[float, int]:
    """Seconds to ray-cast and shade all frames of one scene, without encoding or writing them."""
    rng = scene_rng(0, "train", index)
    room = build_room(rng, cfg["room_size"], cfg["objects_per_room"])
    renderer = Renderer(room.mesh(), room.materials, room.lights)
    poses = trajectory(rng, room.size, cfg["frames_per_scene"], room.occupied)
    csize, dsize = tuple(cfg["color_size"]), tuple(cfg["depth_size"])
    Kc, Kd = scaled_intrinsics(SCANNET_COLOR, csize), scaled_intrinsics(SCANNET_DEPTH, dsize)
    t0 = time.perf_counter()
    for pose in poses:
        renderer.color(Kc, pose, csize, rng)
        renderer.depth(Kd, pose, dsize, rng, cfg["depth_dropout"])
    return time.perf_counter() - t0, len(poses)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-full", action="store_true", help="do not generate the whole default world")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    args = ap.parse_args()
    cfg = P.load(args.params)
    w = dict(cfg["data"]["world"], workers=1)

    scene_s, render_s, frames = [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            per_scene, per_render = [], []
            for i in range(args.scenes):
                t0 = time.perf_counter()
                generate_scene(Path(tmp) / f"r{rep}", "train", i, w, seed=0)
                per_scene.append(time.perf_counter() - t0)
                r, frames = render_only(w, i)
                per_render.append(r)
            scene_s.append(statistics.median(per_scene))
            render_s.append(statistics.median(per_render))
    scene_med, render_med = statistics.median(scene_s), statistics.median(render_s)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "config": {k: w[k] for k in ("frames_per_scene", "color_size", "depth_size", "point_density")},
        "repeats": args.repeats,
        "scenes_per_repeat": args.scenes,
        "seconds_per_scene_one_process": round(scene_med, 3),
        "frames_per_second_one_process": round(frames / scene_med, 2),
        "render_frames_per_second": round(frames / render_med, 2),
        "render_share_of_scene_time": round(render_med / scene_med, 3),
    }
    if not args.skip_full:
        wf = cfg["data"]["world"]
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            summary = generate_world(Path(tmp) / "world", wf, cfg["seed"], progress=False)["summary"]
            full = time.perf_counter() - t0
        n_scenes = sum(wf["scenes"].values())
        result["default_world"] = {
            "scenes": n_scenes, "frames": summary["frames"], "workers": wf["workers"],
            "seconds": round(full, 1), "seconds_per_scene": round(full / n_scenes, 3),
            "frames_per_second": round(summary["frames"] / full, 2),
            "budget_seconds": BUDGET_S, "ratio_to_budget": round(full / BUDGET_S, 3),
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "world.json", result)
    lines = ["# Offline world generation speed", "",
             f"Machine: {result['machine']['cpus']} CPUs, Python {result['machine']['python']}. "
             f"Medians of {args.repeats} repeats over {args.scenes} scenes (one process).", "",
             "| figure | value |", "|---|---|",
             f"| seconds per scene (one process) | {result['seconds_per_scene_one_process']} |",
             f"| frames per second, whole scene incl. cloud, encoding, writing | "
             f"{result['frames_per_second_one_process']} |",
             f"| frames per second, ray casting + shading only | {result['render_frames_per_second']} |",
             f"| rendering share of scene time | {result['render_share_of_scene_time']} |"]
    if "default_world" in result:
        d = result["default_world"]
        lines += [f"| default world: {d['scenes']} scenes, {d['frames']} frames, {d['workers']} workers | "
                  f"{d['seconds']} s |",
                  f"| default world / 5-minute budget | {d['ratio_to_budget']} |"]
    write_text(out / "world.md", "\n".join(lines) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
