#!/usr/bin/env bash
# The seed's 8-device evaluation: scores a checkpoint (pass --resume PATH) on the whole validation set, trains nothing.
# usage: bash scripts/train_eval_8p.sh --data_path=/data/imagenet [any other resnext_nb.launch flag, which wins]
MODE=eval
RECIPE=(--nproc 8 --device-list 0,1,2,3,4,5,6,7 --batch-size 2048 --lr 0.8 --lr-schedule cosine --amp --opt-level O2 --loss-scale 1024 --seed 49 --arch resnext50_32x4d --evaluate)
source "$(dirname "$0")/common.sh"
