#!/usr/bin/env bash
# The seed's 1-device throughput run: the 1p recipe for 1 epoch or 1000 steps, whichever comes first; prints FPS@all.
# usage: bash scripts/train_performance_1p.sh --data_path=/data/imagenet [any other resnext_nb.launch flag, which wins]
MODE=performance
RECIPE=(--nproc 1 --batch-size 256 --lr 0.1 --lr-schedule cosine --amp --opt-level O2 --loss-scale 1024 --seed 49 --arch resnext50_32x4d --epochs 1 --max-steps 1000)
source "$(dirname "$0")/common.sh"
