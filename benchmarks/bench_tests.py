"""The test suite's wall time from a clean clone (issue 16: `make test` under 8 minutes, `make test-fast` under 3,
on 2 cores), as CI runs it.

    python benchmarks/bench_tests.py [--skip-fast]

Clones the repository's HEAD into a temporary directory, sets it up there (`make setup`: a fresh .venv, the
cached torch_cluster wheel; not timed), then times `make test-fast` and `make test` in the clone, one after
the other, with pytest's 15 slowest durations (PYTEST_ADDOPTS). The 1-minute load average before and after each
run says how busy the machine was. Writes results/benchmarks/tests.json and tests.md; exits 1 if a suite failed.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from text4point.fsutil import write_json, write_text  # noqa: E402

TARGETS_S = {"test": 8 * 60.0, "test-fast": 3 * 60.0}
SUMMARY = re.compile(r"^=*\s*(.*\b(?:passed|failed)\b.*) in [\d.]+s")
DURATION = re.compile(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)$")


def run_target(clone: Path, target: str) -> dict:
    env = dict(os.environ, PYTEST_ADDOPTS="--durations=15", HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1")
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    r = subprocess.run(["make", target], cwd=clone, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    lines = r.stdout.splitlines()
    summary = next((m.group(1).strip() for line in reversed(lines) if (m := SUMMARY.match(line.strip()))), None)
    slowest = [{"seconds": float(m.group(1)), "phase": m.group(2), "test": m.group(3)}
               for line in lines if (m := DURATION.match(line.strip()))]
    return {"target": target, "returncode": r.returncode, "wall_seconds": round(wall, 1),
            "target_seconds": TARGETS_S[target], "meets_target": r.returncode == 0 and wall <= TARGETS_S[target],
            "summary": summary, "load_average_before": round(load_before, 2),
            "load_average_after": round(os.getloadavg()[0], 2), "slowest": slowest,
            "output_tail": "\n".join(lines[-15:]) if r.returncode else ""}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-fast", action="store_true", help="time only `make test`")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    args = ap.parse_args()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="t4p-bench-tests-") as tmp:
        clone = Path(tmp) / "text4point"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        t0 = time.monotonic()
        subprocess.run(["make", "setup"], cwd=clone, check=True, capture_output=True)
        setup_s = time.monotonic() - t0
        runs = [] if args.skip_fast else [run_target(clone, "test-fast")]
        runs.append(run_target(clone, "test"))
    result = {"commit": head, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                          "platform": platform.platform()},
              "setup_seconds": round(setup_s, 1), "runs": runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "tests.json", result)
    lines = ["# Test suite wall time (clean clone)", "",
             f"Commit {head[:12]}, {result['machine']['cpus']} CPUs, Python {result['machine']['python']}. "
             f"`make setup` in the clone took {result['setup_seconds']} s (not counted). Command: "
             "`python benchmarks/bench_tests.py`.", "",
             "| command | wall s | target s | met | pytest | load avg before / after |", "|---|---|---|---|---|---|"]
    for run in runs:
        lines.append(f"| make {run['target']} | {run['wall_seconds']} | {run['target_seconds']:.0f} | "
                     f"{'yes' if run['meets_target'] else 'no'} | {run['summary']} | {run['load_average_before']} / "
                     f"{run['load_average_after']} |")
    for run in runs:
        lines += ["", f"Slowest of `make {run['target']}` (pytest --durations; the pytest-xdist workers overlap):", "",
                  "| seconds | phase | test |", "|---|---|---|"]
        lines += [f"| {d['seconds']} | {d['phase']} | `{d['test']}` |" for d in run["slowest"]]
    write_text(out / "tests.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["returncode"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
