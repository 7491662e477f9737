#!/usr/bin/env bash
# The seed's 8-device accuracy run: global batch 2048 (256 per device), lr 0.8, 90 epochs, per-epoch cosine, fp16 with a static loss scale of 1024 (apex O2), seed 49.
# usage: bash scripts/train_full_8p.sh --data_path=/data/imagenet [any other resnext_nb.launch flag, which wins]
MODE=full
RECIPE=(--nproc 8 --device-list 0,1,2,3,4,5,6,7 --batch-size 2048 --lr 0.8 --lr-schedule cosine --amp --opt-level O2 --loss-scale 1024 --seed 49 --arch resnext50_32x4d --epochs 90)
source "$(dirname "$0")/common.sh"
