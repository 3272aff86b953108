"""Speed of the clip_features stage: the full caching path against the bare model forward, in one run.

(a) bare forward: ``dense.dense_features`` on frames decoded, preprocessed and batched beforehand;
(b) full path: ``features.cache_features`` on the same frames - threads decoding the next batches, the batched
    resize, the forward, fp16 conversion and the memmap writes (``features.npy``, ``frames.npy``, ``grid.json``);
(c) inputs only: the full path's decoding threads and batched resize without the forward.

The ratio of their throughputs (b)/(a) says how much the caching machinery costs on top of the model (target
>= 0.9). What bounds it on a CPU: (a) and (c) are timed in process CPU seconds too (every thread), and when (a)
keeps every core busy, (b) needs at least the CPU seconds of (a) and (c) together, so its ratio is at most
``cpu_bound_ratio_limit`` = wall(a) x cores / (cpu(a) + cpu(c)) (1 when the cores have room for the decoding).
Medians of ``--repeats`` repeats; peak memory from ``resource`` (this process and its children) and torch.

    python benchmarks/bench_clip_features.py [--scenes 4] [--repeats 3] [--frame-skip 1] [--checkpoint PATH]
                                             [--vit-frames 32] [--vit-batch-size 8]

Two models: the default teacher at ``clip.dense_scale`` on the world's frames, and configs/scannet.yaml's
ViT-B-16 (random weights) at dense scale 1.5 on ``--vit-frames`` frames of one scene re-encoded at ScanNet's
1296x968 colour resolution.

The model: the bootstrap checkpoint (``models/clip/bootstrap.pt`` or ``--checkpoint``) when it exists, otherwise
``clip.model`` with random weights - throughput does not depend on the weights. The output says which.
Writes results/benchmarks/clip_features.json and clip_features.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from text4point import params as P  # noqa: E402
from text4point.clip import dense, features  # noqa: E402
from text4point.clip.load import build_model, load_clip, wrap_model  # noqa: E402
from text4point.fsutil import write_json, write_text  # noqa: E402
from text4point.runtime import device as pick_device  # noqa: E402
from text4point.scene import Dataset, FrameDefect, sampled_frames  # noqa: E402


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _maxrss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # kilobytes on Linux


def measure(handle, data: Path, scene_ids: list[str], frames: dict[str, list[int]], bs: int, workers: int,
            scale: float, repeats: int, dev: torch.device) -> dict:
    """(a) and (b) for ``handle`` on ``frames`` of ``scene_ids`` at ``clip.dense_scale`` ``scale``, in one run."""
    ds = Dataset(data)
    n_frames = sum(len(v) for v in frames.values())
    color_size = ds.scene(scene_ids[0]).meta["color_size"]
    input_size = dense.dense_input_size(handle, color_size, scale)

    # (a) inputs decoded, preprocessed and batched beforehand
    decoded = []
    for s in scene_ids:
        scene = ds.scene(s)
        for f in frames[s]:
            try:
                decoded.append(dense.frame_tensor(scene, f, input_size, handle.mean, handle.std))
            except FrameDefect:
                pass
    batches = [torch.stack(decoded[i:i + bs]).to(dev) for i in range(0, len(decoded), bs)]
    dense.dense_features(handle, batches[0])  # warm-up (allocator, kernels)
    bare, bare_cpu = [], []
    for _ in range(repeats):
        _sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        for b in batches:
            dense.dense_features(handle, b)
        _sync(dev)
        bare.append(time.perf_counter() - t0)
        bare_cpu.append(time.process_time() - c0)

    # (c) the full path's inputs alone: decoding threads and the batched resize, no forward
    items = [(i, f) for i, s in enumerate(scene_ids) for f in frames[s]]
    inputs, inputs_cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for colours, _, _ in features.frame_batches(data, scene_ids, items, input_size, bs, workers):
            if colours:
                features._model_input(handle, colours, input_size)
        _sync(dev)
        inputs.append(time.perf_counter() - t0)
        inputs_cpu.append(time.process_time() - c0)

    # (b) the full caching path on the same frames
    full = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            out = Path(tmp) / f"r{rep}"
            _sync(dev)
            t0 = time.perf_counter()
            result = features.cache_features(handle, data, scene_ids, frames, out, bs, workers, dense_scale=scale)
            _sync(dev)
            full.append(time.perf_counter() - t0)
            assert result["frames"] == len(decoded)

    bare_med, full_med = statistics.median(bare), statistics.median(full)
    fps_bare, fps_full = len(decoded) / bare_med, len(decoded) / full_med
    cpu_bare, cpu_inputs = statistics.median(bare_cpu), statistics.median(inputs_cpu)
    cores = os.cpu_count() or 1
    limit = min(1.0, bare_med * cores / (cpu_bare + cpu_inputs)) if dev.type == "cpu" else None
    grid = dense.grid_geometry(handle, color_size, input_size)["grid"]
    return {
        "model": handle.name, "dense_scale": scale, "input_size": list(input_size), "grid": list(grid),
        "feature_dim": handle.embed_dim, "scenes": len(scene_ids), "frames": len(decoded),
        "frames_requested": n_frames, "color_size": list(color_size), "batch_size": bs, "workers": workers,
        "repeats": repeats, "bare_forward_seconds": round(bare_med, 4), "full_path_seconds": round(full_med, 4),
        "bare_forward_frames_per_second": round(fps_bare, 2), "full_path_frames_per_second": round(fps_full, 2),
        "throughput_ratio_full_over_bare": round(fps_full / fps_bare, 3), "target_ratio": 0.9,
        "all_bare_seconds": [round(v, 4) for v in bare], "all_full_seconds": [round(v, 4) for v in full],
        "bare_forward_cpu_seconds": round(cpu_bare, 4), "inputs_only_seconds": round(statistics.median(inputs), 4),
        "inputs_only_cpu_seconds": round(cpu_inputs, 4),
        "cpu_bound_ratio_limit": None if limit is None else round(limit, 3),
    }


def scannet_sized_copy(data: Path, scene_id: str, n: int, root: Path) -> tuple[Path, dict[str, list[int]]]:
    """A dataset of one scene of ``data`` whose first ``n`` posed frames' colour images are re-encoded at
    ScanNet's 1296x968 (JPEG quality 90, as the importer writes them), and those frames."""
    from PIL import Image

    from text4point.scene import Scene, read_matrix

    shutil.copytree(data / "scenes" / scene_id, root / "scenes" / scene_id)
    for name in ("dataset.json", "splits"):
        src = data / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name)
    scene = Scene(root / "scenes" / scene_id)
    picked = [f for f in scene.frame_ids if np.isfinite(read_matrix(scene.frame_path("pose", f))).all()][:n]
    meta_path = root / "scenes" / scene_id / "scene.json"
    meta = json.loads(meta_path.read_text())
    meta["color_size"] = [1296, 968]
    meta_path.write_text(json.dumps(meta))
    for f in picked:
        p = scene.frame_path("color", f)
        Image.open(p).convert("RGB").resize((1296, 968), Image.BILINEAR).save(p, quality=90)
    return root, {scene_id: picked}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--data", default=str(ROOT / "data" / "world"))
    ap.add_argument("--scenes", type=int, default=4, help="train scenes to use")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--frame-skip", type=int, default=1,
                    help="every k-th frame (1: all frames, for enough work to time; the stage uses "
                         "correspondences.frame_skip)")
    ap.add_argument("--checkpoint", default=str(ROOT / "models" / "clip" / "bootstrap.pt"))
    ap.add_argument("--vit-frames", type=int, default=32,
                    help="frames of the ViT-B-16 run at ScanNet's 1296x968 (0: skip it)")
    ap.add_argument("--vit-batch-size", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    args = ap.parse_args()
    cfg = P.load(args.params)
    dev = pick_device()
    clip_cfg = cfg["clip"]
    bs, workers = clip_cfg["features"]["batch_size"], clip_cfg["features"]["workers"]

    ckpt = Path(args.checkpoint)
    if clip_cfg["pretrained"] == "bootstrap" and ckpt.is_file():
        handle = load_clip(clip_cfg, dev, ckpt)
        weights = f"bootstrap checkpoint {ckpt} (sha256 {handle.identity['weights_sha256'][:12]}...)"
    elif clip_cfg["pretrained"] != "bootstrap":
        handle = load_clip(clip_cfg, dev)
        weights = f"open_clip {clip_cfg['pretrained']}"
    else:
        torch.manual_seed(0)
        handle = wrap_model(build_model(clip_cfg["model"]), clip_cfg["model"],
                            {"model": clip_cfg["model"], "pretrained": "random", "weights_sha256": "random"}, dev)
        weights = f"random weights ({ckpt} does not exist; throughput does not depend on the weights)"

    data = Path(args.data)
    ds = Dataset(data)
    scene_ids = ds.split("train")[: args.scenes]
    frames = {s: sampled_frames(ds.scene(s).num_frames, args.frame_skip) for s in scene_ids}
    runs = [dict(measure(handle, data, scene_ids, frames, bs, workers, float(clip_cfg["dense_scale"]),
                         args.repeats, dev), weights=weights)]
    print(json.dumps(runs[-1]), flush=True)
    if args.vit_frames:
        del handle
        torch.manual_seed(0)
        vit = wrap_model(build_model("ViT-B-16"), "ViT-B-16",
                         {"model": "ViT-B-16", "pretrained": "random", "weights_sha256": "random"}, dev)
        with tempfile.TemporaryDirectory() as tmp:
            root, vframes = scannet_sized_copy(data, scene_ids[0], args.vit_frames, Path(tmp))
            runs.append(dict(measure(vit, root, list(vframes), vframes, args.vit_batch_size, workers, 1.5,
                                     args.repeats, dev),
                             weights="random weights (configs/scannet.yaml's model and dense_scale 1.5; "
                                     "throughput does not depend on the weights)"))
        print(json.dumps(runs[-1]), flush=True)

    result = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(dev),
                    "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
                    "python": platform.python_version(), "platform": platform.platform()},
        "runs": runs,
        "throughput_ratio_full_over_bare": {r["model"]: r["throughput_ratio_full_over_bare"] for r in runs},
        "peak_rss_mib_self": round(_maxrss_mib(resource.RUSAGE_SELF), 1),
        "peak_rss_mib_workers": round(_maxrss_mib(resource.RUSAGE_CHILDREN), 1),
        "torch_peak_allocated_mib": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
        if dev.type == "cuda" else None,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "clip_features.json", result)
    r = result
    gpu_mib = r["torch_peak_allocated_mib"] if r["torch_peak_allocated_mib"] is not None else "n/a (CPU)"
    lines = ["# Dense CLIP feature caching speed", "",
             f"Machine: {r['machine']['cpus']} CPUs ({r['machine']['torch_threads']} torch threads), device "
             f"{r['machine']['device']}{' (' + r['machine']['gpu'] + ')' if r['machine']['gpu'] else ''}, "
             f"Python {r['machine']['python']}. Medians of {args.repeats} repeats; (a) and (b) of a model are "
             "measured in one run.", "",
             "(a) bare forward: `dense_features` on pre-decoded batches; (b) the full caching path: decoding "
             "threads + the batched resize + the forward + fp16 memmap writes; (c) the inputs alone: decoding "
             "threads + the batched resize. CPU s: process CPU seconds (all threads). Limit: the highest (b)/(a) "
             "the cores allow, wall(a) x cores / (cpu(a) + cpu(c)), when (a) keeps them busy.", "",
             "| model (weights) | frames (size) | input | grid | batch / workers | (a) frames/s | (b) frames/s "
             "| (b)/(a) (target >= 0.9) | (a) wall / CPU s | (c) wall / CPU s | limit |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in runs:
        lines.append(f"| {x['model']} ({x['weights']}) | {x['frames']} ({x['color_size'][0]}x{x['color_size'][1]}) "
                     f"| {x['input_size'][1]}x{x['input_size'][0]} | {x['grid'][0]}x{x['grid'][1]} | "
                     f"{x['batch_size']} / {x['workers']} | {x['bare_forward_frames_per_second']} | "
                     f"{x['full_path_frames_per_second']} | {x['throughput_ratio_full_over_bare']} | "
                     f"{x['bare_forward_seconds']} / {x['bare_forward_cpu_seconds']} | "
                     f"{x['inputs_only_seconds']} / {x['inputs_only_cpu_seconds']} | "
                     f"{x['cpu_bound_ratio_limit'] if x['cpu_bound_ratio_limit'] is not None else 'n/a'} |")
    lines += ["", f"Peak RSS, this process / its children: {r['peak_rss_mib_self']} / "
                  f"{r['peak_rss_mib_workers']} MiB; torch peak allocated on the GPU: {gpu_mib} MiB."]
    write_text(out / "clip_features.md", "\n".join(lines) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
