#!/usr/bin/env bash
# The Ascend recipe's 8-device evaluation: scores a checkpoint (pass --resume PATH) on the whole validation set, trains nothing.
# usage: bash scripts/train_eval_8p.sh --data_path=/data/imagenet [any other resnext_nb.launch flag, which wins]
MODE=eval
RECIPE=(--preset ascend-8p --evaluate)
source "$(dirname "$0")/common.sh"
