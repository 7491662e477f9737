#!/usr/bin/env bash
# The Ascend recipe's 8-device accuracy run: global batch 2048 (256 per device), lr 0.8, 90 epochs, per-epoch cosine, fp16 with a static loss scale of 1024 (apex O2), seed 49.
# usage: bash scripts/train_full_8p.sh --data_path=/data/imagenet [any other resnext_nb.launch flag, which wins]
MODE=full
RECIPE=(--preset ascend-8p)
source "$(dirname "$0")/common.sh"
