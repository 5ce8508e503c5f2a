#!/usr/bin/env bash
# One entry point for everything:
#   ./reproduce.sh [--profile tiny|smoke|paper] [--only EXPERIMENT ...] [--dry-run]
#                             reproduce the paper (default: the tiny profile, CPU, offline) and write
#                             results/<profile>/REPORT.md; idempotent and resumable after a kill
#   ./reproduce.sh test       run the test suite
#   ./reproduce.sh demo       convert a tiny local checkpoint to every method and generate
# The environment is set up on first use: if the needed packages are not importable by python3,
# a local virtual environment .venv is created and reused (torch pinned to 2.13.0; set
# TORCH_INDEX_URL to a CPU wheel index where plain PyPI would give a CUDA build).
set -euo pipefail
cd "$(dirname "$0")"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

NEEDED="import torch, transformers, accelerate, lm_eval, scipy, pandas, matplotlib, safetensors, tqdm, yaml, mambapy, pytest, nbclient, ruff"

ensure_env() {
  if python3 -c "$NEEDED" 2>/dev/null; then PY=python3; return; fi
  if [ -x .venv/bin/python ] && .venv/bin/python -c "$NEEDED" 2>/dev/null; then PY=.venv/bin/python; return; fi
  echo "[reproduce] setting up .venv (first run only; a few minutes)" >&2
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  .venv/bin/python -m pip install -q -e ".[test]"
  PY=.venv/bin/python
  "$PY" -c "$NEEDED"
}

# no argument or a leading option: run the experiments; otherwise the first word is the command
if [ $# -eq 0 ]; then
  cmd=run
else
  case "$1" in
    -*) cmd=run ;;
    *) cmd="$1"; shift ;;
  esac
fi
case "$cmd" in
  test)
    ensure_env
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    "$PY" -m pytest -q tests "$@"
    ;;
  lint)
    ensure_env
    "$PY" -m ruff check .
    ;;
  demo)
    ensure_env
    "$PY" -m harness demo
    ;;
  run)
    ensure_env
    "$PY" -m harness reproduce "$@"
    ;;
  *)
    echo "usage: ./reproduce.sh [--profile tiny|smoke|paper] [--only EXPERIMENT ...] [--dry-run] | test | lint | demo" >&2
    exit 2
    ;;
esac
