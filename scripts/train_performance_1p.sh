#!/usr/bin/env bash
# The Ascend recipe's 1-device throughput run: the 1p recipe for 1 epoch or 1000 steps, whichever comes first; prints FPS@all.
# usage: bash scripts/train_performance_1p.sh --data_path=/data/imagenet [any other resnext_nb.launch flag, which wins]
MODE=performance
RECIPE=(--preset ascend-1p --epochs 1 --max-steps 1000)
source "$(dirname "$0")/common.sh"
