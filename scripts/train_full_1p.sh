#!/usr/bin/env bash
# The Ascend recipe's 1-device accuracy run: batch 256, lr 0.1, 90 epochs, per-epoch cosine, fp16 with a static loss scale of 1024 (apex O2), seed 49.
# usage: bash scripts/train_full_1p.sh --data_path=/data/imagenet [any other resnext_nb.launch flag, which wins]
MODE=full
RECIPE=(--preset ascend-1p)
source "$(dirname "$0")/common.sh"
