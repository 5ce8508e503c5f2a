#!/bin/bash
# One conversion of the converged teacher to DiJiang (262K tokens, tiny's shape and batch) at $1 torch
# threads and seed $2, into /tmp/thr-$1-$2 (its log beside it). Run from anywhere.
cd "$(dirname "$0")/../../.." && OMP_NUM_THREADS=$1 HF_HUB_OFFLINE=1 .venv/bin/python -m harness train \
  --model teachers/tiny/tiny-m-64m-v1 --mixer dijiang --tokens 262144 --block-size 128 --batch-size 16 \
  --lr 3e-3 --seed "$2" --eval-blocks 32 --out "/tmp/thr-$1-$2" --overwrite --no-progress > "/tmp/thr-$1-$2.log" 2>&1
