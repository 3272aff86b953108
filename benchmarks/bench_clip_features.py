"""Speed of the clip_features stage: the full caching path against the bare model forward, in one run.

(a) bare forward: ``dense.dense_features`` on frames decoded, preprocessed and batched beforehand;
(b) full path: ``features.cache_features`` on the same frames - DataLoader workers decoding and preprocessing
    in parallel, the forward, fp16 conversion and the memmap writes (``features.npy``, ``frames.npy``, ``grid.json``).

The ratio of their throughputs (b)/(a) says how much the caching machinery costs on top of the model (target
>= 0.9). Medians of ``--repeats`` repeats; peak memory from ``resource`` (this process and its workers) and torch.

    python benchmarks/bench_clip_features.py [--scenes 4] [--repeats 3] [--frame-skip 1] [--checkpoint PATH]

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
import statistics
import sys
import tempfile
import time
from pathlib import Path

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
    n_frames = sum(len(v) for v in frames.values())
    input_size = dense.dense_input_size(handle, ds.scene(scene_ids[0]).meta["color_size"])

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
    bare = []
    for _ in range(args.repeats):
        _sync(dev)
        t0 = time.perf_counter()
        for b in batches:
            dense.dense_features(handle, b)
        _sync(dev)
        bare.append(time.perf_counter() - t0)

    # (b) the full caching path on the same frames
    full = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            out = Path(tmp) / f"r{rep}"
            _sync(dev)
            t0 = time.perf_counter()
            result = features.cache_features(handle, data, scene_ids, frames, out, bs, workers)
            _sync(dev)
            full.append(time.perf_counter() - t0)
            assert result["frames"] == len(decoded)

    bare_med, full_med = statistics.median(bare), statistics.median(full)
    fps_bare, fps_full = len(decoded) / bare_med, len(decoded) / full_med
    gh, gw = input_size[0] // handle.patch_size, input_size[1] // handle.patch_size
    result = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(dev),
                    "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
                    "python": platform.python_version(), "platform": platform.platform()},
        "model": clip_cfg["model"], "weights": weights,
        "input_size": list(input_size), "grid": [gh, gw], "feature_dim": handle.embed_dim,
        "scenes": len(scene_ids), "frames": len(decoded), "frames_requested": n_frames,
        "color_size": ds.scene(scene_ids[0]).meta["color_size"],
        "batch_size": bs, "workers": workers, "repeats": args.repeats,
        "bare_forward_seconds": round(bare_med, 4), "full_path_seconds": round(full_med, 4),
        "bare_forward_frames_per_second": round(fps_bare, 1),
        "full_path_frames_per_second": round(fps_full, 1),
        "throughput_ratio_full_over_bare": round(fps_full / fps_bare, 3),
        "target_ratio": 0.9,
        "all_bare_seconds": [round(v, 4) for v in bare], "all_full_seconds": [round(v, 4) for v in full],
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
             f"Python {r['machine']['python']}.",
             f"Model {r['model']}, {r['weights']}; input {r['input_size'][1]}x{r['input_size'][0]}, grid "
             f"{gh}x{gw}, d={r['feature_dim']}. {r['frames']} frames ({r['color_size'][0]}x{r['color_size'][1]}) "
             f"of {r['scenes']} scenes, batch {bs}, {workers} DataLoader workers; medians of {args.repeats} repeats, "
             "both measured in this run.", "",
             "| figure | value |", "|---|---|",
             f"| (a) bare forward (`dense_features`, pre-decoded batches), frames/s | "
             f"{r['bare_forward_frames_per_second']} |",
             f"| (b) full caching path (decode workers + forward + fp16 memmap writes), frames/s | "
             f"{r['full_path_frames_per_second']} |",
             f"| ratio (b)/(a) (target >= 0.9) | {r['throughput_ratio_full_over_bare']} |",
             f"| peak RSS, this process / DataLoader workers (MiB) | {r['peak_rss_mib_self']} / "
             f"{r['peak_rss_mib_workers']} |",
             f"| torch peak allocated on the GPU (MiB) | {gpu_mib} |"]
    write_text(out / "clip_features.md", "\n".join(lines) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
