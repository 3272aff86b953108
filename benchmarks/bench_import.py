"""Speed of the ScanNet import (the `data` stage on real data): seconds per scene and scenes per hour at 1 and
2 workers, on one real-sized scene written from the published formats (tests/spec_files.py). Ratios are
measured in one run.

The scene: a 1296x968 JPEG colour / 640x480 zlib depth `.sens` of ~2000 frames (payloads cycled from a pool
of distinct images; every pose distinct, 1% lost), an ~80k-vertex `_vh_clean_2.ply` mesh with segments and an
aggregation, `<scene>.txt` with an axisAlignment. It is generated once into a temporary directory; the release
holds it `--scenes` times under different scene ids (hard links), so that 2 workers have scenes to share. The
`.sens` is read once before timing (warm page cache for every configuration); each repeat imports into a fresh
directory at frame_skip 10.

    python benchmarks/bench_import.py [--frames 2000] [--scenes 2] [--repeats 2]

Writes results/benchmarks/import.json and import.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from text4point.fsutil import write_json, write_text  # noqa: E402
from text4point.importers.scannet import import_scannet  # noqa: E402

import spec_files as spec  # noqa: E402

COLOR, DEPTH = (1296, 968), (640, 480)


class PooledFrames:
    """``n`` frames for ``spec.write_sens``, made on demand: payloads cycled from a pool, poses all distinct."""

    def __init__(self, n: int, pool: list[dict], seed: int = 0):
        rng = np.random.default_rng(seed)
        self.n, self.pool = n, pool
        self.poses = []
        for i in range(n):
            pose = np.eye(4, dtype=np.float32)
            if i % 100 == 37:  # ~1% lost tracking, as ScanNet has
                pose[:] = -np.inf
            else:
                q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
                pose[:3, :3], pose[:3, 3] = q, rng.uniform(0, 5, 3)
            self.poses.append(pose)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        p = self.pool[i % len(self.pool)]
        return {"pose": self.poses[i], "timestamp_color": 33_333 * i, "timestamp_depth": 33_333 * i + 7,
                "color_jpeg": p["jpeg"], "depth": p["depth"], "depth_zlib": p["zlib"]}


def payload_pool(k: int, seed: int = 0) -> list[dict]:
    """``k`` colour/depth pairs like an indoor RGB-D stream: smooth shading with texture and sensor noise."""
    rng = np.random.default_rng(seed)
    (cw, ch), (dw, dh) = COLOR, DEPTH
    yc, xc = np.mgrid[0:ch, 0:cw].astype(np.float32)
    yd, xd = np.mgrid[0:dh, 0:dw].astype(np.float32)
    pool = []
    for _ in range(k):
        a, b = rng.uniform(0.002, 0.02, 2)
        base = 128 + 60 * np.sin(a * xc + rng.uniform(0, 6)) * np.cos(b * yc)
        rgb = np.stack([base * rng.uniform(0.7, 1.2) for _ in range(3)], -1) + rng.normal(0, 6, (ch, cw, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
        plane = 1500 + 2.0 * xd * rng.uniform(-1, 1) + 3.0 * yd * rng.uniform(0, 1) + rng.uniform(0, 1500)
        depth = np.clip(plane + rng.normal(0, 4, (dh, dw)), 0, 65535).astype(np.uint16)
        depth[rng.random((dh, dw)) < 0.05] = 0  # holes
        pool.append({"jpeg": buf.getvalue(), "depth": depth, "zlib": zlib.compress(depth.astype("<u2").tobytes())})
    return pool


def room_mesh(n_side: int, seed: int = 0) -> dict:
    """An ``n_side`` x ``n_side`` vertex sheet (triangulated), segments of 16x16 vertices, 30 objects."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:n_side, 0:n_side]
    xyz = np.stack([x * 0.02, y * 0.02, rng.normal(0, 0.01, x.shape)], -1).reshape(-1, 3).astype(np.float32)
    rgb = rng.integers(0, 256, (len(xyz), 3), dtype=np.uint8)
    seg = ((y // 16) * 1000 + x // 16).reshape(-1)
    idx = np.arange(n_side * n_side).reshape(n_side, n_side)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([b, d, c], -1).reshape(-1, 3)])
    useg = np.unique(seg)
    labels = [raw for raw, _ in spec.TSV_ROWS]
    groups = [{"id": k, "objectId": k, "label": labels[k % len(labels)],
               "segments": [int(s) for s in rng.choice(useg, 8, replace=False)]} for k in range(30)]
    return {"xyz": xyz, "rgb": rgb, "seg": seg, "groups": groups, "faces": faces}


def make_release(tmp: Path, frames: int, n_scenes: int) -> tuple[Path, dict]:
    src = tmp / "one"
    scene = dict(room_mesh(283), frames=PooledFrames(frames, payload_pool(24)), axis_alignment=spec.axis_alignment(0))
    spec.write_scannet_scene(src, "scene0000_00", scene)
    one = src / "scene0000_00"
    ids = [f"scene{k:04d}_00" for k in range(n_scenes)]
    root = tmp / "release"
    for sid in ids:  # the same files under each scene's names
        d = root / "scans" / sid
        d.mkdir(parents=True)
        for f in one.iterdir():
            os.link(f, d / f.name.replace("scene0000_00", sid))
    spec.write_labels_tsv(root / "scannetv2-labels.combined.tsv")
    (root / "scannetv2_train.txt").write_text("".join(f"{s}\n" for s in ids[:-1] or ids))
    (root / "scannetv2_val.txt").write_text(f"{ids[-1]}\n")
    sens = one / "scene0000_00.sens"
    info = {"sens_bytes": sens.stat().st_size, "sens_frames": frames, "mesh_vertices": len(scene["xyz"]),
            "mesh_faces": len(scene["faces"]), "color_size": list(COLOR), "depth_size": list(DEPTH),
            "mean_jpeg_bytes": int(np.mean([len(p["jpeg"]) for p in scene["frames"].pool])),
            "mean_depth_zlib_bytes": int(np.mean([len(p["zlib"]) for p in scene["frames"].pool]))}
    with open(sens, "rb") as f:  # warm the page cache: every configuration reads the same cached file
        while f.read(1 << 24):
            pass
    return root, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--scenes", type=int, default=2, help="copies of the scene in the release (hard links)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--frame-skip", type=int, default=10)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_import_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        root, info = make_release(tmp, args.frames, args.scenes)
        gen_s = time.perf_counter() - t0
        walls: dict[int, list[float]] = {w: [] for w in args.workers}
        cpus: dict[int, list[float]] = {w: [] for w in args.workers}
        load = [os.getloadavg()[0]]
        exported = None
        for rep in range(args.repeats):
            for w in args.workers:  # interleaved, so that a busy shared machine hits both alike
                out = tmp / f"out_{w}_{rep}"
                cfg = {"path": str(root), "frame_skip": args.frame_skip, "workers": w}
                c0, t0 = os.times(), time.perf_counter()
                stats = import_scannet(cfg, out, tmp / "dl", progress=False)
                walls[w].append(time.perf_counter() - t0)
                c1 = os.times()  # this process and its (joined) worker processes
                cpus[w].append(sum(getattr(c1, k) - getattr(c0, k) for k in
                                   ("user", "system", "children_user", "children_system")))
                load.append(os.getloadavg()[0])
                assert stats["scenes_imported"] == args.scenes
                exported = stats["frames"] // args.scenes
                shutil.rmtree(out)
    per = {w: statistics.median(v) / args.scenes for w, v in walls.items()}
    base = per[args.workers[0]]
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "scene": info, "frame_skip": args.frame_skip, "frames_exported_per_scene": exported,
        "scenes_per_import": args.scenes, "repeats": args.repeats, "generation_seconds": round(gen_s, 1),
        "load_average_1min": [round(x, 2) for x in load],
        "workers": {str(w): {"wall_seconds": [round(x, 2) for x in walls[w]],
                             "cpu_seconds": [round(x, 2) for x in cpus[w]],
                             "seconds_per_scene": round(per[w], 2), "scenes_per_hour": round(3600 / per[w], 1),
                             "cpu_seconds_per_scene": round(statistics.median(cpus[w]) / args.scenes, 2),
                             "speedup_vs_1": round(base / per[w], 3)} for w in args.workers},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "import.json", result)
    s = info
    lines = ["# ScanNet import speed", "",
             f"Machine: {result['machine']['cpus']} CPUs (shared), Python {result['machine']['python']}. One "
             f"real-sized synthetic scene written from the published formats: `.sens` of {s['sens_frames']} frames "
             f"({s['sens_bytes'] / 2**30:.2f} GiB; {COLOR[0]}x{COLOR[1]} JPEG, "
             f"mean {s['mean_jpeg_bytes'] // 1024} KiB; "
             f"{DEPTH[0]}x{DEPTH[1]} zlib depth, mean {s['mean_depth_zlib_bytes'] // 1024} KiB), a "
             f"{s['mesh_vertices']}-vertex mesh; frame_skip {args.frame_skip} ({exported} frames exported per "
             f"scene). The release holds it {args.scenes} times; medians of {args.repeats} imports per setting, "
             f"settings interleaved in one run, warm page cache. 1-minute load average during the run: "
             f"{min(load):.1f} to {max(load):.1f} (other users' processes included).", "",
             "| workers | seconds per scene (wall) | scenes per hour | CPU seconds per scene | speed-up vs 1 worker |",
             "|---|---|---|---|---|"]
    for w in args.workers:
        r = result["workers"][str(w)]
        lines.append(f"| {w} | {r['seconds_per_scene']} | {r['scenes_per_hour']} | {r['cpu_seconds_per_scene']} | "
                     f"{r['speedup_vs_1']} |")
    one = result["workers"][str(args.workers[0])]
    share = one["cpu_seconds_per_scene"] / one["seconds_per_scene"]
    lines += ["", f"With {args.workers[0]} worker a scene took {one['cpu_seconds_per_scene']} CPU seconds in "
              f"{one['seconds_per_scene']} s of wall time ({share:.0%} of a core: the CPUs are shared with other "
              "processes); CPU seconds per scene at more workers include each worker's start-up. The import is "
              "CPU-bound on a warm cache, so more workers gain only where cores are free."]
    lines += ["", "ScanNet v2 train + val (1513 scans) at these rates: "
              + ", ".join(f"{1513 * per[w] / 3600:.1f} h with {w} worker{'s' if w > 1 else ''}" for w in args.workers)
              + " (scans differ in length: ScanNet's run from a few hundred to ~5000 frames)."]
    write_text(out / "import.md", "\n".join(lines) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
