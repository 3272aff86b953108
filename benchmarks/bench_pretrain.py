"""Speed and memory of pre-training (the `pretrain` stage): where a step's time goes, throughput and peak
memory per backbone and width, and how epoch time scales with the size of the point clouds.

    python benchmarks/bench_pretrain.py [--repeats 3] [--steps 6] [--data D --corr C --feat F [--clip-checkpoint K]]

Without --data/--corr/--feat it makes its own inputs in a temporary directory: a small world with the
resolution of params.yaml's (1 clip, 2 train, 1 val scenes, 30 frames each), its correspondences
(params.yaml's voxel size) and dense features of a randomly initialised CLIP of params.yaml's model (speed
does not depend on what CLIP learned). Measured on the device run_stage picks (CPU here; on CPU run_stage
uses one intra-op thread, and so does this benchmark). Medians of --repeats.

1. Step breakdown (text4point, params.yaml's backbone and width): waiting for the next batch from the
   DataLoader with its prefetching workers (`pretrain.workers`), host-to-device copy, forward, backward,
   optimizer (clipping, step, schedule). Data loading must stay <= 10% of the step. The cost of making a
   batch in the main process (no workers) is reported next to it.
2. Throughput (points per second of training steps) and peak memory for PointNet++ and Point Transformer
   at two widths, each in a fresh process (peak RSS on CPU, `max_memory_allocated` on CUDA).
3. Epoch time of run_stage at 4 values of `max_points`, with the exponent of a power-law fit of epoch time
   against the points processed per epoch (target 0.9-1.1: linear in the data). The sizes follow the frames
   pre-training draws (its dataset's items, before the cap): the largest is their 25th percentile, so that at
   every size at least three quarters of the frames are cut to it, and each smaller one halves it (a fixed list
   goes stale when the voxel size or the frame size changes: at 10 cm, caps of 1000 and 2000 kept nearly the
   same points). A frame's InfoNCE has ``m x m`` logits for its ``m = min(num_matches, matched points)`` sampled
   matches, so while clouds are smaller than ``num_matches`` the loss grows with the square of the cloud; the
   scaling is measured twice, at params.yaml's `num_matches` and at `--fixed-matches` (by default half the
   smallest size, fewer than any size offers, so every size draws the same number per frame), with the matches
   per frame of each row. The difference of the two is the part of an epoch that depends on the match count.
   Each scaling run also fits ``seconds = a + b * points`` (least squares): ``a`` is the cost an epoch pays
   whatever the cloud size (workers starting, per-step Python and kernel launches), ``b`` the cost per point; and
   the cost per point between consecutive sizes, which stays level when epochs are linear and grows when a part
   of the step is superlinear.
4. The same scaling on clouds of ScanNet's size (``--dense-voxel``, default 0.025 m): the world's frames voxelized
   at the default 10 cm hold a few hundred points (median ~670), far below ``max_points`` (20000), so the
   fixed cost of a step dominates every size of 3.; correspondences of a generated world at a 2.5 cm voxel (as
   ScanNet pipelines voxelize at 2-5 cm) give frames of ~3,000-14,000 points.

Writes results/benchmarks/pretrain.json and pretrain.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
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
from text4point.fsutil import write_json, write_text  # noqa: E402

GENERATED = "generated (1 clip, 2 train, 1 val scenes)"  # make_inputs' world
WIDTHS = (16, 32)
BACKBONES = ("pointnet2", "point_transformer")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def make_inputs(cfg: dict, root: Path) -> dict:
    """A small world (params.yaml's resolution), its correspondences (``cfg``'s voxel size) and features of a
    random CLIP."""
    from text4point import correspondences
    from text4point.clip import features
    from text4point.clip.load import build_model
    from text4point.runtime import seed_everything
    from text4point.world.generate import generate_world

    cfg = copy.deepcopy(cfg)
    w = dict(cfg["data"]["world"], scenes={"clip": 1, "train": 2, "val": 1}, workers=1)
    generate_world(root / "world", w, cfg["seed"], progress=False)
    (root / "corr").mkdir()
    correspondences.run_stage(cfg, root / "world", root / "corr", "cpu", progress=False)
    seed_everything(0)
    ckpt = root / "clip_random.pt"
    torch.save({"state_dict": build_model(cfg["clip"]["model"]).state_dict()}, ckpt)
    cfg["clip"]["pretrained"] = str(ckpt)
    features.run_stage(cfg, root / "world", root / "feat", "cpu", progress=False)
    return {"world": root / "world", "corr": root / "corr", "feat": root / "feat", "clip_checkpoint": None,
            "pretrained": str(ckpt)}


def _setup(cfg: dict, paths: dict, variant: str, workers: int, dev: torch.device):
    from text4point.pretrain.data import collate_for
    from text4point.pretrain.engine import build_model
    from text4point.training import make_loader, make_optimizer, warmup_cosine

    pc = cfg["pretrain"]
    dataset, text = _dataset(cfg, paths, variant)
    loader, sampler, _ = make_loader(dataset, collate_for(variant), int(pc["batch_size"]), workers, int(cfg["seed"]),
                                     dev)
    model = build_model(cfg, variant, int(text.shape[1]), text if variant == "text4point" else None).to(dev)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], pc["optimizer"], pc["lr"],
                         pc["weight_decay"], pc["momentum"])
    sched = warmup_cosine(pc["lr"], 10 ** 6)
    return dataset, loader, sampler, model, opt, sched


def _train_step(model, opt, sched, batch, grad_clip: float, dev, step: int = 0) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    for g in opt.param_groups:
        g["lr"] = sched(step)
    losses = model(batch)
    _sync(dev)
    t1 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    losses["loss"].backward()
    _sync(dev)
    t2 = time.perf_counter()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    _sync(dev)
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def step_breakdown(cfg: dict, paths: dict, steps: int, dev: torch.device) -> dict:
    pc = cfg["pretrain"]
    workers = int(pc["workers"])
    dataset, loader, sampler, model, opt, sched = _setup(cfg, paths, "text4point", workers, dev)
    from text4point.pretrain.data import collate_frames

    rows, epoch = [], 0
    sampler.set_epoch(epoch)
    it = iter(loader)
    for k in range(steps + 2):  # 2 warm-up steps
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            epoch += 1
            sampler.set_epoch(epoch)
            it = iter(loader)
            batch = next(it)
        t1 = time.perf_counter()
        batch = batch.to(dev, non_blocking=True)
        _sync(dev)
        t2 = time.perf_counter()
        f, b, o = _train_step(model, opt, sched, batch, float(pc["grad_clip"]), dev)
        if k >= 2:
            rows.append({"data_wait": t1 - t0, "to_device": t2 - t1, "forward": f, "backward": b, "optimizer": o,
                         "points": batch.num_points})
    del it
    # making one batch in the main process, without workers
    make = []
    bs = int(pc["batch_size"])
    for k in range(max(steps, 3)):
        t0 = time.perf_counter()
        collate_frames([dataset[(99, (k * bs + i) % len(dataset))] for i in range(bs)])
        make.append(time.perf_counter() - t0)
    med = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    step = sum(med[k] for k in ("data_wait", "to_device", "forward", "backward", "optimizer"))
    return {"variant": "text4point", "backbone": pc["backbone"], "width": int(pc["width"]), "workers": workers,
            "batch_size": bs, "steps": len(rows), "points_per_batch": med["points"],
            "seconds": {k: round(v, 5) for k, v in med.items() if k != "points"},
            "step_seconds": round(step, 5),
            "share": {k: round(med[k] / step, 4)
                      for k in ("data_wait", "to_device", "forward", "backward", "optimizer")},
            "batch_make_seconds_main_process": round(statistics.median(make), 5),
            "data_share_ok": med["data_wait"] / step <= 0.10}


def throughput_child(args) -> None:
    """In a fresh process: steps of one (backbone, width) on pre-made batches; prints one JSON line."""
    from text4point.runtime import cpu_threads, device

    spec = json.loads(args.child)
    cfg, paths = spec["cfg"], {k: (Path(v) if k in ("world", "corr", "feat") and v else v)
                                for k, v in spec["paths"].items()}
    dev = device()
    with cpu_threads(dev, 1):
        dataset, loader, sampler, model, opt, sched = _setup(cfg, paths, "text4point", 0, dev)
        sampler.set_epoch(0)
        batches = [b.to(dev) for _, b in zip(range(spec["steps"] + 1), loader)]
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        _train_step(model, opt, sched, batches[0], 1.0, dev)  # warm-up
        times, points = [], 0
        for b in batches[1:]:
            t0 = time.perf_counter()
            _train_step(model, opt, sched, b, 1.0, dev)
            times.append(time.perf_counter() - t0)
            points += b.num_points
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        saved = _saved_for_backward_mb(model, batches[1])
    state_mb = sum(p.numel() * p.element_size() for p in model.parameters()) * 4 / 2 ** 20  # w, grad, 2 moments
    out = {"saved_for_backward_mb": saved, "params_grads_adam_mb": state_mb,
           "points_per_second": points / sum(times), "step_seconds": statistics.median(times),
           "points_per_batch": points / len(times),
           "parameters": sum(p.numel() for p in model.parameters())}
    if dev.type == "cuda":
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    else:
        out["peak_rss_mb"] = rss1 / 1024
        out["peak_rss_growth_mb"] = (rss1 - rss0) / 1024
    print("RESULT " + json.dumps(out))


def _saved_for_backward_mb(model, batch) -> float:
    """MB of the tensors autograd keeps for the backward pass of one step (distinct storages): the activation
    memory of training, whatever the device."""
    seen: dict[int, int] = {}

    def pack(t):
        try:
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(batch)["loss"]
    loss.backward()
    return sum(seen.values()) / 2 ** 20


def throughput(cfg: dict, paths: dict, steps: int, repeats: int) -> list[dict]:
    rows = []
    for backbone in BACKBONES:
        for width in WIDTHS:
            c = copy.deepcopy(cfg)
            c["pretrain"].update(backbone=backbone, width=width)
            runs = []
            for _ in range(repeats):
                spec = {"cfg": c, "paths": {k: (str(v) if v is not None else None) for k, v in paths.items()},
                        "steps": steps}
                r = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                   text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
                line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
                if r.returncode != 0 or not line:
                    raise RuntimeError(f"throughput child failed: {r.stderr[-2000:]}")
                runs.append(json.loads(line[-1][7:]))
            row = {"backbone": backbone, "width": width}
            for key in runs[0]:
                row[key] = round(statistics.median(r[key] for r in runs), 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def scaling_sizes(frame_points: dict) -> list[int]:
    """Four ``max_points``: the 25th percentile of the frames' points (rounded down to tens) and its halves."""
    top = int(frame_points["p25"]) // 10 * 10
    if top < 80:
        raise ValueError(f"frames too small to measure epoch scaling: 25th percentile {frame_points['p25']} points "
                         f"per frame, expected at least 80")
    return [top // 8, top // 4, top // 2, top]


def epoch_scaling(cfg: dict, paths: dict, repeats: int, sizes: list[int], num_matches: int | None = None) -> dict:
    """Epoch seconds at each of ``sizes`` (``max_points``), at ``num_matches`` (params.yaml's when None)."""
    from text4point.pretrain import PretrainJob, run_stage

    rows = []
    for size in sizes:
        c = copy.deepcopy(cfg)
        c["pretrain"].update(max_points=size, epochs=1)
        if num_matches is not None:
            c["pretrain"]["num_matches"] = int(num_matches)
        secs, pts, matches = [], [], []
        for rep in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                m = run_stage(PretrainJob(c, paths["world"], paths["corr"], paths["feat"], "text4point",
                                          Path(tmp) / "final.pt", clip_checkpoint=paths.get("clip_checkpoint"),
                                          progress=False, zeroshot_eval=False, track=False))
            secs.append(m["per_epoch"][0]["seconds"])
            pts.append(m["points_seen"])
            matches.append(m["matches_seen"] / max(1, m["items"]))
        row = {"max_points": size, "epoch_seconds": round(statistics.median(secs), 3),
               "points_per_epoch": int(statistics.median(pts)), "steps": m["steps"],
               "matches_per_frame": round(statistics.median(matches), 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    x = np.log([r["points_per_epoch"] for r in rows])
    y = np.log([r["epoch_seconds"] for r in rows])
    slope = float(np.polyfit(x, y, 1)[0])
    # the upper half alone: fixed per-step costs (python, data) flatten the small sizes
    slope_top = float(np.polyfit(x[len(x) // 2 - 1:], y[len(y) // 2 - 1:], 1)[0])
    n = np.array([r["points_per_epoch"] for r in rows], dtype=float)
    t = np.array([r["epoch_seconds"] for r in rows], dtype=float)
    b, a = np.polyfit(n, t, 1)  # seconds = a + b * points
    marginal = [round(1e6 * float((t[i + 1] - t[i]) / (n[i + 1] - n[i])), 2) for i in range(len(n) - 1)]
    return {"num_matches": int(c["pretrain"]["num_matches"]), "rows": rows, "exponent": round(slope, 3),
            "exponent_largest_three": round(slope_top, 3), "target": [0.9, 1.1], "in_target": 0.9 <= slope <= 1.1,
            "affine_fit": {"fixed_seconds": round(float(a), 3), "microseconds_per_point": round(1e6 * float(b), 2),
                           "fixed_share_at_largest": round(float(a / t[-1]), 3)},
            "marginal_microseconds_per_point": marginal}


def scaling_runs(cfg: dict, paths: dict, frame_points: dict, repeats: int, fixed_matches: int | None) -> dict:
    """``epoch_scaling`` at the sizes of ``frame_points``, at params.yaml's ``num_matches`` and (unless
    ``fixed_matches`` is 0) at ``fixed_matches``, by default half the smallest size."""
    sizes = scaling_sizes(frame_points)
    runs = {"epoch_scaling": epoch_scaling(cfg, paths, repeats, sizes)}
    fixed = sizes[0] // 2 if fixed_matches is None else fixed_matches
    if fixed:
        runs["epoch_scaling_fixed_matches"] = epoch_scaling(cfg, paths, repeats, sizes, fixed)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--data"), ap.add_argument("--corr"), ap.add_argument("--feat")
    ap.add_argument("--clip-checkpoint")
    ap.add_argument("--fixed-matches", type=int,
                    help="num_matches of the second scaling run (default: half the smallest size; 0: skip it)")
    ap.add_argument("--dense-voxel", type=float, default=0.025,
                    help="correspondence voxel (m) of the ScanNet-size scaling run's generated inputs (0: skip it)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["breakdown", "throughput", "scaling"])
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        throughput_child(args)
        return
    from text4point.runtime import cpu_threads, device

    cfg = P.load(args.params)
    dev = device()
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                          "platform": platform.platform(), "device": str(dev),
                          "intra_op_threads": 1 if dev.type == "cpu" else None},
              "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp, cpu_threads(dev, 1):
        if args.data:
            paths = {"world": Path(args.data), "corr": Path(args.corr), "feat": Path(args.feat),
                     "clip_checkpoint": Path(args.clip_checkpoint) if args.clip_checkpoint else None}
            result["inputs"] = "given"
        else:
            t0 = time.perf_counter()
            paths = make_inputs(cfg, Path(tmp))
            cfg["clip"]["pretrained"] = paths.pop("pretrained")
            result["inputs"] = f"{GENERATED} in {time.perf_counter() - t0:.1f} s"
        from text4point.pretrain.data import FrameDataset  # noqa: F401 - import cost outside the timings

        frame_points = _frame_points(cfg, paths)
        result["frame_points"] = frame_points
        result["config"] = {k: cfg["pretrain"][k] for k in ("backbone", "width", "bottleneck_dim", "out_dim",
                                                             "batch_size", "num_matches", "max_points", "workers")}
        if "breakdown" not in args.skip:
            runs = [step_breakdown(cfg, paths, args.steps, dev) for _ in range(args.repeats)]
            result["step_breakdown"] = _median_breakdown(runs)
            print(json.dumps(result["step_breakdown"]), flush=True)
        if "throughput" not in args.skip:
            result["throughput"] = throughput(cfg, paths, args.steps, args.repeats)
        if "scaling" not in args.skip:
            result.update(scaling_runs(cfg, paths, frame_points, args.repeats, args.fixed_matches))
            if args.dense_voxel:
                dcfg = copy.deepcopy(cfg)
                dcfg["correspondences"]["voxel_size"] = args.dense_voxel
                dpaths = make_inputs(dcfg, Path(tmp) / "dense")
                dcfg["clip"]["pretrained"] = dpaths.pop("pretrained")
                dense = {"voxel_size": args.dense_voxel, "inputs": GENERATED,
                         "frame_points": _frame_points(dcfg, dpaths)}
                dense.update(scaling_runs(dcfg, dpaths, dense["frame_points"], args.repeats, args.fixed_matches))
                result["dense"] = dense
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "pretrain.json", result)
    write_text(out / "pretrain.md", _markdown(result))
    print(json.dumps(result, indent=2))


def _dataset(cfg: dict, paths: dict, variant: str):
    """The pre-training dataset of ``variant`` on the train split, and the CLIP text embeddings of the label set."""
    from text4point.clip.cache import load_features
    from text4point.pretrain.data import build_dataset
    from text4point.pretrain.engine import clip_identity
    from text4point.scene import Dataset

    ident = clip_identity(cfg, paths["feat"], paths.get("clip_checkpoint"))
    fc = load_features(paths["feat"], ident)
    ds = Dataset(paths["world"])
    text = torch.as_tensor(fc.text()[ds.label_set.name]["prompt_embeddings"]).float()
    dataset = build_dataset(variant, paths["corr"], paths["world"], fc, ds.split("train"), cfg["pretrain"],
                            int(cfg["seed"]))
    return dataset, text


def _frame_points(cfg: dict, paths: dict) -> dict:
    """Points of the frames text4point pre-training draws (its dataset's items), before the max_points cap."""
    dataset, _ = _dataset(cfg, paths, "text4point")
    sizes = np.array([int(dataset.small[si]["point_offsets"][f + 1] - dataset.small[si]["point_offsets"][f])
                      for si, f in dataset.items])
    return {"frames": int(len(sizes)), "median": float(np.median(sizes)), "p25": float(np.percentile(sizes, 25)),
            "min": int(sizes.min()), "max": int(sizes.max())}


def _median_breakdown(runs: list[dict]) -> dict:
    out = dict(runs[0])
    out["seconds"] = {k: round(statistics.median(r["seconds"][k] for r in runs), 5) for k in runs[0]["seconds"]}
    out["step_seconds"] = round(statistics.median(r["step_seconds"] for r in runs), 5)
    out["share"] = {k: round(statistics.median(r["share"][k] for r in runs), 4) for k in runs[0]["share"]}
    out["batch_make_seconds_main_process"] = round(statistics.median(r["batch_make_seconds_main_process"]
                                                                     for r in runs), 5)
    out["data_share_ok"] = out["share"]["data_wait"] <= 0.10
    out["repeats"] = len(runs)
    return out


def _markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# Pre-training speed and memory", "",
             f"Device: {m['device']} ({m['cpus']} CPUs, one intra-op thread as run_stage uses on CPU; no GPU was "
             f"measured), torch {m['torch']}. Medians of {r['repeats']} repeats. Inputs: {r['inputs']}; train frames: "
             f"{r['frame_points']['frames']}, points per frame median {r['frame_points']['median']:.0f} "
             f"(25th percentile {r['frame_points']['p25']:.0f}, {r['frame_points']['min']}-"
             f"{r['frame_points']['max']}). Config: {r['config']}.", ""]
    if "step_breakdown" in r:
        b = r["step_breakdown"]
        lines += [f"## One step ({b['variant']}, {b['backbone']} width {b['width']}, batch {b['batch_size']}, "
                  f"{b['workers']} prefetching workers, {b['points_per_batch']:.0f} points per batch)", "",
                  "| part | seconds | share |", "|---|---|---|"]
        for k, v in b["seconds"].items():
            lines.append(f"| {k} | {v} | {b['share'].get(k, 0):.1%} |")
        lines += [f"| step | {b['step_seconds']} | 100% |", "",
                  f"Data loading (waiting for the prefetched batch) is {b['share']['data_wait']:.1%} of the step "
                  f"(target <= 10%: {'met' if b['data_share_ok'] else 'NOT met'}); making a batch in the main "
                  f"process would take {b['batch_make_seconds_main_process']} s.", ""]
    if "throughput" in r:
        mem = "peak RSS MB (growth in training)" if "peak_rss_mb" in r["throughput"][0] else "peak CUDA MB"
        lines += ["## Throughput and memory (training steps, fresh process each)", "",
                  f"| backbone | width | parameters | points/s | step s | points/batch | saved for backward MB | "
                  f"weights+grads+Adam MB | {mem} |", "|---|---|---|---|---|---|---|---|---|"]
        for t in r["throughput"]:
            memv = (f"{t['peak_rss_mb']:.0f} ({t['peak_rss_growth_mb']:.0f})" if "peak_rss_mb" in t
                    else f"{t['peak_memory_mb']:.0f}")
            lines.append(f"| {t['backbone']} | {t['width']} | {int(t['parameters'])} | {t['points_per_second']:.0f} | "
                         f"{t['step_seconds']:.3f} | {t['points_per_batch']:.0f} | {t['saved_for_backward_mb']:.1f} | "
                         f"{t['params_grads_adam_mb']:.1f} | {memv} |")
        lines += ["", "Peak RSS is the whole process (Python, torch, open_clip imports: about 1.1 GB before any "
                      "step); the activation memory of a step is the 'saved for backward' column.", ""]
    if "epoch_scaling" in r:
        lines += ["## Epoch time against cloud size (run_stage, 1 epoch)", ""] + _scaling_markdown(r)
    if "dense" in r:
        d, fp = r["dense"], r["dense"]["frame_points"]
        lines += [f"## Epoch time against cloud size, ScanNet-size clouds ({d['voxel_size']} m voxel)", "",
                  f"Inputs: {d['inputs']}, correspondences at a {d['voxel_size']} m voxel; train frames: "
                  f"{fp['frames']}, points per frame median {fp['median']:.0f} (25th percentile {fp['p25']:.0f}, "
                  f"{fp['min']}-{fp['max']}).", ""] + _scaling_markdown(d)
    return "\n".join(lines)


def _scaling_markdown(r: dict) -> list[str]:
    lines = []
    runs = [r["epoch_scaling"]] + ([r["epoch_scaling_fixed_matches"]] if "epoch_scaling_fixed_matches" in r
                                   else [])
    for s in runs:
        lines += [f"num_matches {s.get('num_matches', '(params.yaml)')}:", "",
                  "| max_points | points per epoch | matches per frame | steps | epoch seconds |",
                  "|---|---|---|---|---|"]
        for row in s["rows"]:
            lines.append(f"| {row['max_points']} | {row['points_per_epoch']} | {row.get('matches_per_frame', '')} "
                         f"| {row['steps']} | {row['epoch_seconds']} |")
        lines += ["", f"Fitted exponent (epoch seconds ~ points^k): k = {s['exponent']} (target 0.9-1.1: "
                      f"{'met' if s['in_target'] else 'NOT met'}); over the three largest sizes k = "
                      f"{s['exponent_largest_three']}."]
        f = s["affine_fit"]
        lines += [f"Affine fit: seconds = {f['fixed_seconds']} + {f['microseconds_per_point']} us x points "
                  f"(the fixed part is {f['fixed_share_at_largest']:.0%} of the largest epoch); cost per "
                  f"point between consecutive sizes: "
                  + ", ".join(f"{v} us" for v in s["marginal_microseconds_per_point"]) + ".", ""]
    if len(runs) == 2:
        lines += ["Seconds of an epoch that depend on the match count (first run minus second), per size: "
                  + ", ".join(f"{a['max_points']}: {a['epoch_seconds'] - b['epoch_seconds']:.2f}"
                              for a, b in zip(runs[0]["rows"], runs[1]["rows"])) + ".", ""]
    return lines


if __name__ == "__main__":
    main()
