"""The whole default pipeline: wall time against the one-hour budget on 2 cores (issue 12), time per stage, and the
no-op dry run against its 3-second budget. Run it after `make pipeline` (`snakemake ... all`).

    python benchmarks/bench_pipeline.py [--log .snakemake/log/<run>.snakemake.log] [--repeats 5]

Reads Snakemake's `benchmark:` files (results/benchmarks/stages/*.tsv: wall seconds, CPU seconds, peak RSS of
every job) and the run's Snakemake log (the first and the last timestamp give the wall time of the whole
run, jobs overlapping), then times `snakemake -n all` on the finished pipeline. Writes
results/benchmarks/pipeline.json and pipeline.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from text4point.fsutil import write_json, write_text  # noqa: E402

BUDGET_S = 60 * 60.0
DRY_RUN_BUDGET_S = 3.0
RULES = ("clip_bootstrap", "clip_features", "correspondences", "data", "show", "pretrain", "finetune", "tables",
         "figures")  # benchmark file names start with their rule's name
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")


def rule_of(name: str) -> str:
    for rule in sorted(RULES, key=len, reverse=True):
        if name == rule or name.startswith(rule + "_"):
            return rule
    raise SystemExit(f"error: results/benchmarks/stages/{name}.tsv: file name: expected one of the rules {RULES}")


def default_variations(root: Path) -> list[str]:
    """The variations of the default params (params.yaml); overlays' variations are not part of the pipeline."""
    import yaml

    return sorted((yaml.safe_load((root / "params.yaml").read_text()) or {}).get("variations") or {})


def read_stage_files(stages: Path, variations: list[str]) -> list[dict]:
    import pandas as pd

    jobs = []
    paths = sorted(stages.glob("*.tsv"))
    paths += [p for v in variations for p in sorted((stages / "variations" / v).glob("*.tsv"))]
    for path in paths:
        row = pd.read_csv(path, sep="\t").iloc[-1]  # Snakemake appends a row per repeat; one repeat here
        jobs.append({"job": path.stem, "rule": rule_of(path.stem), "seconds": float(row["s"]),
                     "cpu_seconds": float(row["cpu_time"]), "max_rss_mb": float(row["max_rss"])})
    if not jobs:
        raise SystemExit(f"error: {stages}: no benchmark files (run the pipeline first)")
    return jobs


def run_span(log: Path) -> tuple[float, int, str, str]:
    """(seconds from the first to the last timestamp, finished jobs, first, last) of a Snakemake log."""
    stamps = [datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
              for line in log.read_text().splitlines() if (m := STAMP.match(line.strip()))]
    finished = log.read_text().count("Finished jobid")
    if len(stamps) < 2:
        raise SystemExit(f"error: {log}: timestamps: expected a Snakemake run log with job timestamps, "
                         f"got {len(stamps)}")
    return (stamps[-1] - stamps[0]).total_seconds(), finished, str(stamps[0]), str(stamps[-1])


def newest_full_log(root: Path) -> Path:
    logs = sorted((root / ".snakemake" / "log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    runs = [p for p in logs if p.read_text().count("Finished jobid") > 10]
    if not runs:
        raise SystemExit(f"error: {root}/.snakemake/log: expected the log of a pipeline run, found none")
    return runs[-1]


def dry_run_seconds(root: Path, repeats: int) -> tuple[list[float], str]:
    cmd = [sys.executable, "-m", "snakemake", "--profile", "workflow/profiles/default", "-n", "all"]
    times, out = [], ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        out = r.stdout + r.stderr
        if r.returncode != 0:
            raise SystemExit(f"error: snakemake -n all failed ({r.returncode}): {out.strip().splitlines()[-1]}")
    return times, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT), help="the project that ran the pipeline")
    ap.add_argument("--log", help="the run's Snakemake log (default: the newest with more than 10 finished jobs)")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of the dry run")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    args = ap.parse_args()
    root = Path(args.root)
    jobs = read_stage_files(root / "results" / "benchmarks" / "stages", default_variations(root))
    log = Path(args.log) if args.log else newest_full_log(root)
    wall, finished, first, last = run_span(log)
    dry, dry_out = dry_run_seconds(root, args.repeats)

    per_rule = {}
    for rule in RULES:
        rows = [j for j in jobs if j["rule"] == rule]
        if rows:
            per_rule[rule] = {"jobs": len(rows), "seconds_sum": round(sum(r["seconds"] for r in rows), 1),
                              "seconds_median": round(statistics.median(r["seconds"] for r in rows), 1),
                              "seconds_max": round(max(r["seconds"] for r in rows), 1),
                              "cpu_seconds_sum": round(sum(r["cpu_seconds"] for r in rows), 1),
                              "max_rss_mb": round(max(r["max_rss_mb"] for r in rows), 0)}
    result = {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
              "log": str(log.relative_to(root) if log.is_relative_to(root) else log), "first": first, "last": last,
              "finished_jobs": finished, "wall_seconds": wall, "budget_seconds": BUDGET_S,
              "wall_over_budget": round(wall / BUDGET_S, 3), "met": wall <= BUDGET_S,
              "job_seconds_sum": round(sum(j["seconds"] for j in jobs), 1),
              "cpu_seconds_sum": round(sum(j["cpu_seconds"] for j in jobs), 1), "per_rule": per_rule,
              "dry_run_seconds": [round(t, 2) for t in dry], "dry_run_median": round(statistics.median(dry), 2),
              "dry_run_budget": DRY_RUN_BUDGET_S, "dry_run_met": statistics.median(dry) <= DRY_RUN_BUDGET_S,
              "dry_run_nothing_to_do": "Nothing to be done" in dry_out}
    out = Path(args.out)
    write_json(out / "pipeline.json", result)

    lines = ["# The whole default pipeline", "",
             f"{os.cpu_count()} CPUs, no GPU. Snakemake log `{result['log']}`: {finished} jobs from {first} to {last}.",
             "",
             f"- Wall time of the run: **{wall / 60:.1f} min** against the {BUDGET_S / 60:.0f}-minute budget "
             f"(ratio {result['wall_over_budget']}: {'met' if result['met'] else 'missed'}).",
             f"- Sum of the jobs' wall times {result['job_seconds_sum'] / 60:.1f} min, of their CPU times "
             f"{result['cpu_seconds_sum'] / 60:.1f} min (jobs overlap on the cores).",
             f"- `snakemake -n all` on the finished pipeline: median **{result['dry_run_median']} s** of "
             f"{len(dry)} ({', '.join(f'{t:.2f}' for t in dry)}) against {DRY_RUN_BUDGET_S:.0f} s "
             f"({'met' if result['dry_run_met'] else 'missed'}); "
             f"{'nothing to do' if result['dry_run_nothing_to_do'] else 'it still had jobs to run'}.",
             "", "## Per stage (Snakemake `benchmark:` files)", "",
             "| rule | jobs | wall s (sum) | wall s (median) | wall s (max) | CPU s (sum) | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for rule, r in per_rule.items():
        lines.append(f"| {rule} | {r['jobs']} | {r['seconds_sum']} | {r['seconds_median']} | {r['seconds_max']} | "
                     f"{r['cpu_seconds_sum']} | {r['max_rss_mb']:.0f} |")
    write_text(out / "pipeline.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
