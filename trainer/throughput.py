"""Throughput accounting: tokens/s and model FLOPs utilisation (MFU).

MFU = achieved model FLOPs / peak dense bf16 FLOPs of the accelerator, with model FLOPs per
token from ModelConfig.flops_per_token (6 x matmul parameters + attention scores, the
PaLM / OLMo-core convention). The peak is only known for the GPUs listed; elsewhere
(CPUs included) MFU is reported as None rather than guessed.
"""

from __future__ import annotations

import re

import torch

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, in FLOP/s.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("GH200", 989.4e12),
    ("H200", 989.4e12),
    ("H100", 989.4e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("A10G", 70e12),
    ("L4", 121e12),
)


def peak_for_name(name: str) -> float | None:
    """The peak of the first entry naming a whole word of `name`: a substring match read
    "NVIDIA L40" as an L4 and "GB200" as a B200 (found by a reviewer)."""
    for key, flops in PEAK_BF16_FLOPS:
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", name):
            return flops
    return None


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return peak_for_name(torch.cuda.get_device_name(device))


def mfu(tokens_per_second_per_device: float, flops_per_token: float, peak: float | None) -> float | None:
    if not peak:
        return None
    return tokens_per_second_per_device * flops_per_token / peak
