#!/usr/bin/env bash
# The seed's 8-device throughput run: the 8p recipe for 1 epoch or 1000 steps, whichever comes first; prints FPS@all.
# usage: bash scripts/train_performance_8p.sh --data_path=/data/imagenet [any other resnext_nb.launch flag, which wins]
MODE=performance
RECIPE=(--nproc 8 --device-list 0,1,2,3,4,5,6,7 --batch-size 2048 --lr 0.8 --lr-schedule cosine --amp --opt-level O2 --loss-scale 1024 --seed 49 --arch resnext50_32x4d --epochs 1 --max-steps 1000)
source "$(dirname "$0")/common.sh"
