"""``text4point``: one subcommand per pipeline stage; every Snakemake rule calls one of them.

Bad input ends the command with one line on stderr (``error: <file or key>: ...``) and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from . import params as P
from .errors import InputError
from .fsutil import atomic_dir, atomic_path, check_writable, write_json, write_text

# torch_geometric scripts a few functions at import; torch 2.14 warns about torch.jit.script on every CLI call,
# which would turn one-line errors into three lines.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

OUTPUT_ARGS = ("out", "metrics", "scene_stats", "predictions", "out_dir")  # the options naming what a command writes


def _load_params(args) -> dict:
    if getattr(args, "params_json", None):
        return P.from_json(args.params_json)
    return P.load(args.params)


def _start(args) -> dict:
    """Resolve params and check the tracking store before any work (fail fast, one line)."""
    from . import tracking

    cfg = _load_params(args)
    tracking.check_reachable()
    return cfg


def _finish(stage: str, cfg: dict, sections: tuple[str, ...], metrics: dict, metrics_path: str | Path,
            tags: dict | None = None, detail: object = None) -> dict:
    """Write the stage's metrics JSON (with its params hash) and record one MLflow run."""
    from . import tracking

    logged = {k: cfg[k] for k in sections if k in cfg}
    metrics = {"params_hash": P.params_hash(logged), **metrics}
    write_json(metrics_path, metrics)
    with tracking.run(stage, logged, tags={"params_hash": metrics["params_hash"], **(tags or {})},
                      experiment_prefix=cfg["tracking"]["experiment_prefix"]):
        tracking.log_metrics(metrics)
        tracking.log_dict({"metrics": metrics, "detail": detail}, f"{stage}_stats.json")
    return metrics


def cmd_data(args) -> None:
    cfg = _start(args)
    data = cfg["data"]
    source = args.source or data["source"]
    out = Path(args.out)
    t0 = time.perf_counter()
    if source == "world":
        from .world.generate import generate_world

        with atomic_dir(out) as tmp:
            result = generate_world(tmp, data["world"], cfg["seed"], progress=not args.quiet)
        metrics, detail = result["summary"], result["scenes"]
    else:  # written in place, scene by scene, dataset.json last: a rerun resumes (text4point.importers.runner)
        from .importers import run_import

        metrics, detail = run_import(source, data[source], out, Path(args.downloads), progress=not args.quiet), []
    metrics = {"source": source, "seconds_total": round(time.perf_counter() - t0, 2), **metrics}
    if args.scene_stats:
        import pandas as pd

        table = pd.DataFrame(detail, columns=["scene_id", "split", "room_type", "points", "objects", "frames",
                                               "invalid_poses", "valid_depth_fraction", "seconds"])
        with atomic_path(args.scene_stats) as tmp:
            table.to_csv(tmp, index=False)
    _finish("data", cfg, ("seed", "data"), metrics, args.metrics, tags={"source": source}, detail=detail)


def _into_dir(out: str | Path, work) -> dict:
    """Run ``work(tmp_dir)`` into a temporary directory that replaces ``out`` only when complete."""
    out = Path(out)
    t0 = time.perf_counter()
    with atomic_dir(out) as tmp:
        metrics = work(tmp)
    return {"seconds_total": round(time.perf_counter() - t0, 2), **metrics}


def cmd_correspondences(args) -> None:
    from . import correspondences
    from .runtime import device

    cfg = _start(args)
    metrics = _into_dir(args.out, lambda tmp: correspondences.run_stage(cfg, Path(args.data), tmp, device(),
                                                                        progress=not args.quiet))
    _finish("correspondences", cfg, ("seed", "correspondences"), metrics, args.metrics)


def cmd_clip_bootstrap(args) -> None:
    from .clip import bootstrap
    from .runtime import device

    cfg = _start(args)
    t0 = time.perf_counter()
    metrics = bootstrap.run_stage(cfg, Path(args.data), Path(args.out), device(), progress=not args.quiet)
    metrics = {"seconds_total": round(time.perf_counter() - t0, 2), **metrics}
    _finish("clip_bootstrap", cfg, ("seed", "clip"), metrics, args.metrics, tags={"clip_model": cfg["clip"]["model"]})


def cmd_clip_features(args) -> None:
    from .clip import features
    from .runtime import device

    cfg = _start(args)
    checkpoint = Path(args.clip_checkpoint) if args.clip_checkpoint else None
    metrics = _into_dir(args.out, lambda tmp: features.run_stage(cfg, Path(args.data), tmp, device(),
                                                                 progress=not args.quiet, checkpoint=checkpoint))
    _finish("clip_features", cfg, ("seed", "clip", "correspondences"), metrics, args.metrics,
            tags={"clip_model": cfg["clip"]["model"]})


def cmd_pretrain(args) -> None:
    from .pretrain import PretrainJob, run_stage

    cfg = _start(args)
    job = PretrainJob(cfg, args.data, args.corr, args.features, args.variant, args.out,
                      clip_checkpoint=args.clip_checkpoint, progress=not args.quiet)
    metrics = run_stage(job)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 writes the metrics
        write_json(args.metrics, metrics)  # the engine records its own MLflow run (per-step curves)


def cmd_finetune(args) -> None:
    from .finetune import FinetuneJob, run_stage

    cfg = _start(args)
    job = FinetuneJob(cfg, args.data, args.task, args.init, args.seed, args.label_fraction,
                      init_checkpoint=args.init_checkpoint, clip_checkpoint=args.clip_checkpoint,
                      predictions_path=args.predictions, progress=not args.quiet)
    metrics = run_stage(job)
    write_json(args.out, metrics)  # the engine records its own MLflow run


def cmd_tables(args) -> None:
    from . import tables, tracking

    cfg = _start(args)
    out = Path(args.out_dir)
    summary = tables.build_tables(cfg, Path(args.finetune_dir), Path(args.pretrain_dir), out,
                                  Path(args.variations_dir))
    logged = {k: cfg[k] for k in ("finetune", "pretrain", "variations") if k in cfg}
    with tracking.run("tables", logged, tags={"params_hash": P.params_hash(logged)},
                      experiment_prefix=cfg["tracking"]["experiment_prefix"]):
        tracking.log_artifacts(out, "tables")
    print(json.dumps(summary))


def cmd_figures(args) -> None:
    from .figures import make_figures

    cfg = _load_params(args)

    def work(tmp: Path) -> dict:
        written = make_figures(cfg, Path(args.data), Path(args.finetune_dir), tmp, scenes=args.scenes)
        write_json(tmp / "figures.json", {"figures": [p.name for p in written]})  # written last
        return {}

    _into_dir(args.out_dir, work)  # the rule's output is the directory: it appears only when complete


def cmd_show(args) -> None:
    from .show import show

    written = show(Path(args.data), Path(args.out_dir), scenes=args.scenes, split=args.split)
    for p in written:
        print(p)


def cmd_query(args) -> None:
    from .pretrain.query import query
    from .runtime import resolve_device

    cfg = _load_params(args)
    clip_ck = Path(args.clip_checkpoint) if cfg["clip"]["pretrained"] == "bootstrap" else None
    out = Path(args.out_dir) if args.out_dir else Path("results/query") / Path(args.checkpoint).parent.name
    for p in query(cfg, Path(args.checkpoint), Path(args.data), args.scene, list(args.text), out, clip_ck,
                   resolve_device(args.device)):
        print(p)


def cmd_dvc_yaml(args) -> None:
    """Write dvc.yaml from the package's DAG, or (``--check``) fail in one line when the file is stale."""
    import yaml

    from .dag import dvc_yaml

    path = Path(args.out)
    try:
        raw = yaml.safe_load(Path(args.params).read_text()) or {}
    except FileNotFoundError:
        raise InputError(f"{args.params}: file not found") from None
    text = dvc_yaml(raw)
    if args.check:
        if not path.is_file() or path.read_text() != text:
            raise InputError(f"{path}: stale, not what `text4point dvc-yaml` generates from the package; run it and "
                             f"commit the result")
        print(f"{path}: current")
        return
    write_text(path, text)
    print(path)


def cmd_validate(args) -> None:
    cfg = P.load(args.params)
    print(f"{args.params}: valid (params hash {P.params_hash(cfg)})")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="text4point", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    def with_params(p):
        g = p.add_mutually_exclusive_group()
        g.add_argument("--params", default="params.yaml", help="params.yaml to read (default: ./params.yaml)")
        g.add_argument("--params-json", help="the parameter sections as JSON (how Snakemake rules pass them)")
        return p

    p = with_params(sub.add_parser("data", help="generate the offline world or import ScanNet/S3DIS/SUN RGB-D"))
    p.add_argument("--out", required=True, help="dataset root (the world: replaced atomically; an import: resumed)")
    p.add_argument("--metrics", required=True, help="metrics JSON to write")
    p.add_argument("--scene-stats", help="per-scene statistics CSV to write (the world's plot data)")
    p.add_argument("--downloads", default="data/downloads", help="where archives are downloaded/extracted")
    p.add_argument("--source", help="the dataset to write (default: data.source; the pipeline passes "
                                    "data.pretrain_source for the pre-training dataset)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_data)

    def stage(name, help_, func, data_help, out_help):
        p = with_params(sub.add_parser(name, help=help_))
        p.add_argument("--data", required=True, help=data_help)
        p.add_argument("--out", required=True, help=out_help)
        p.add_argument("--metrics", required=True, help="metrics JSON to write")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(func=func)
        return p

    stage("correspondences", "frame pairs and pixel<->point correspondences", cmd_correspondences,
          "dataset root", "correspondence directory to write (replaced atomically)")
    stage("clip-bootstrap", "train the small offline open_clip model", cmd_clip_bootstrap,
          "dataset root (its clip split trains, its val split evaluates)", "checkpoint to write")
    p = stage("clip-features", "cache dense CLIP image features and text embeddings", cmd_clip_features,
              "dataset root", "feature directory to write (replaced atomically)")
    p.add_argument("--clip-checkpoint", help="the bootstrap checkpoint (when clip.pretrained is 'bootstrap')")

    p = with_params(sub.add_parser("pretrain", help="pre-train a 3D backbone (a variant of text4point.names.VARIANTS)"))
    p.add_argument("--variant", required=True, help="text4point | image_contrast | pointcontrast")
    p.add_argument("--data", required=True, help="dataset root (train split trains, val split is evaluated zero-shot)")
    p.add_argument("--corr", required=True, help="the correspondences stage's directory")
    p.add_argument("--features", help="the clip_features stage's directory (image variants and zero-shot)")
    p.add_argument("--clip-checkpoint", help="the bootstrap CLIP checkpoint (when clip.pretrained is 'bootstrap')")
    p.add_argument("--out", required=True, help="final checkpoint to write (epoch checkpoints go beside it)")
    p.add_argument("--metrics", required=True, help="metrics JSON to write")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_pretrain)

    p = with_params(sub.add_parser("finetune", help="fine-tune one task x init x seed x label fraction; evaluate"))
    p.add_argument("--task", required=True, help="semseg | insseg | det")
    p.add_argument("--init", required=True, help="scratch | pointcontrast | image_contrast | text4point")
    p.add_argument("--seed", required=True, type=int, help="training seed")
    p.add_argument("--label-fraction", required=True, type=float, help="fraction of the train scenes used")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--init-checkpoint", help="the pretrain stage's checkpoint (every init but scratch)")
    p.add_argument("--clip-checkpoint", help="the bootstrap CLIP (text4point init, clip.pretrained: bootstrap)")
    p.add_argument("--out", required=True, help="metrics JSON to write")
    p.add_argument("--predictions", help="per-point predictions of the val scenes (.npz) to write")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_finetune)

    p = with_params(sub.add_parser("tables", help="the comparison tables from the fine-tuning and pre-training jobs"))
    p.add_argument("--finetune-dir", default="results/finetune", help="the finetune jobs' directory")
    p.add_argument("--pretrain-dir", default="results/metrics/pretrain", help="the pretrain jobs' metrics")
    p.add_argument("--variations-dir", default="results/variations", help="the variations' jobs")
    p.add_argument("--out-dir", default="results/tables", help="where the tables go")
    p.set_defaults(func=cmd_tables)

    p = with_params(sub.add_parser("figures", help="per-class IoU, training curves, predictions vs ground truth"))
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--finetune-dir", default="results/finetune", help="the finetune jobs' directory")
    p.add_argument("--out-dir", default="results/figures/finetune")
    p.add_argument("--scenes", type=int, default=2, help="val scenes to draw")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("show", help="PNG previews: a scene's points by class and a frame's colour/depth/labels")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--scenes", type=int, default=1)
    p.set_defaults(func=cmd_show)

    p = with_params(sub.add_parser("query", help="score every point of a scene against free text through a "
                                                 "pre-trained checkpoint's ĥ3D (PNG and per-point scores)"))
    p.add_argument("text", nargs="+", help="one or more queries, e.g. \"a red chair\"")
    p.add_argument("--checkpoint", required=True, help="a text4point or image_contrast pre-training checkpoint")
    p.add_argument("--scene", required=True, help="scene id (any split)")
    p.add_argument("--data", default="data/world", help="dataset root")
    p.add_argument("--clip-checkpoint", default="models/clip/bootstrap.pt",
                   help="the bootstrap CLIP (when clip.pretrained is bootstrap)")
    p.add_argument("--out-dir", help="default results/query/<the checkpoint's directory name>")
    p.add_argument("--device", help="cpu or cuda (default: CUDA when present)")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("dvc-yaml", help="write dvc.yaml from the package's DAG (--check: fail when it is stale)")
    p.add_argument("--params", default="params.yaml", help="params.yaml (its keys decide which params DVC tracks)")
    p.add_argument("--out", default="dvc.yaml")
    p.add_argument("--check", action="store_true", help="only check that --out is current")
    p.set_defaults(func=cmd_dvc_yaml)

    p = sub.add_parser("validate-params", help="check params.yaml against the schema")
    p.add_argument("params", nargs="?", default="params.yaml")
    p.set_defaults(func=cmd_validate)

    return ap


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        for name in OUTPUT_ARGS:  # an output that cannot be written stops the command before any work
            if getattr(args, name, None):
                check_writable(getattr(args, name))
        args.func(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None


if __name__ == "__main__":
    main()
