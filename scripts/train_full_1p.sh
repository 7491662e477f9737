#!/usr/bin/env bash
# The seed's 1-device accuracy run: batch 256, lr 0.1, 90 epochs, per-epoch cosine, fp16 with a static loss scale of 1024 (apex O2), seed 49.
# usage: bash scripts/train_full_1p.sh --data_path=/data/imagenet [any other resnext_nb.launch flag, which wins]
MODE=full
RECIPE=(--nproc 1 --batch-size 256 --lr 0.1 --lr-schedule cosine --amp --opt-level O2 --loss-scale 1024 --seed 49 --arch resnext50_32x4d --epochs 90)
source "$(dirname "$0")/common.sh"
