#!/usr/bin/env bash
# The pipeline's HTML report (snakemake --report), written atomically: Snakemake writes it under a temporary name
# beside the final one, renamed when complete, so a killed report run never leaves a half-written report under
# its final name. Usage: scripts/report.sh [OUT.html] [extra snakemake arguments...]
set -euo pipefail
out=${1:-results/report.html}
shift || true
mkdir -p "$(dirname "$out")"
tmp="$(dirname "$out")/.$(basename "$out").$$.tmp.html"
trap 'rm -f "$tmp"' EXIT
snakemake --profile workflow/profiles/default "$@" --report "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
