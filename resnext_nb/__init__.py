"""Train ResNeXt-50 32x4d on Ascend NPUs, NVIDIA GPUs and CPUs, from literate notebooks"""

__version__ = "0.1.0"
