#!/usr/bin/env bash
# Installs what is missing, idempotently: a virtual environment (.venv), torch, torch_cluster
# (built once from source into a local wheel directory, reused afterwards) and this package.
# A stamp records what was installed; a rerun with unchanged pyproject.toml/setup.sh takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${TEXT4POINT_VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if command -v nvidia-smi >/dev/null 2>&1; then FLAVOUR=cuda; else FLAVOUR=cpu; fi
WHEELS=${TEXT4POINT_WHEELS:-$HOME/.cache/text4point/wheels/torch-2.14.1-$FLAVOUR}
STAMP="$VENV/.text4point-installed"
WANT=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$FLAVOUR

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$VENV/bin/text4point" ]; then
  exit 0
fi

echo "[setup] virtual environment $VENV ($($PY --version))"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q --upgrade pip setuptools wheel
echo "[setup] torch 2.14.1 / torchvision 0.29.1"
python -m pip install -q torch==2.14.1 torchvision==0.29.1

if ! ls "$WHEELS"/torch_cluster-1.6.3-*.whl >/dev/null 2>&1; then
  echo "[setup] building torch_cluster 1.6.3 from source into $WHEELS (once; a few minutes)"
  mkdir -p "$WHEELS"
  cfg=$(mktemp)
  printf '[build_ext]\nparallel = %s\n' "$(nproc)" > "$cfg"
  if [ "$FLAVOUR" = cpu ]; then export FORCE_ONLY_CPU=1; fi
  DIST_EXTRA_CONFIG="$cfg" python -m pip wheel -q --no-build-isolation --no-deps -w "$WHEELS" torch-cluster==1.6.3
  rm -f "$cfg"
fi

echo "[setup] text4point and its pinned dependencies"
python -m pip install -q --find-links "$WHEELS" -e ".[dev]"
python -c "import torch, torch_cluster, torch_geometric, open_clip, snakemake, dvc, mlflow, trimesh, embreex"
echo "$WANT" > "$STAMP"
echo "[setup] done"
