#!/usr/bin/env bash
# torchvision's IMAGENET1K_V2 recipe for ResNeXt-50 32x4d (81.2% top-1) on 8 devices: the ascend-8p layout (global batch 2048,
# fp16 with a static loss scale of 1024, seed 49) with --recipe tv-v2: 600 epochs, SGD lr 0.5 per 1024 images (1.0 at 2048),
# 5 warmup epochs, wd 2e-5 (none on norms), label smoothing 0.1, MixUp 0.2, CutMix 1.0, TrivialAugmentWide, random erasing 0.1,
# train crop 176 / val 232 -> 224, EMA (0.99998 every 32 steps), repeated augmentation x4.
# usage: bash scripts/train_full_8p_tv_v2.sh --data_path=/data/imagenet [any other resnext_nb.launch flag, which wins]
MODE=full
RECIPE=(--preset ascend-8p --recipe tv-v2)
source "$(dirname "$0")/common.sh"
