"""What this machine can do: whether CUDA is to be used (`DOUBLEWIN_DEVICE=cpu` pins CPU, as the test suite
does) and whether it runs the `--amp` precision asked for."""
from __future__ import annotations

import os

import torch

from infra.errors import ConfigError

PIN = "DOUBLEWIN_DEVICE"  # "cpu": behave as if no GPU were visible (a CPU run on a GPU node; the CPU test suite)
BF16_CAPABILITY = (8, 0)  # Ampere: the first CUDA cards with bf16 units (older ones emulate it, slowly)


def cuda_usable() -> bool:
    """CUDA is visible and not pinned away by DOUBLEWIN_DEVICE=cpu."""
    return os.environ.get(PIN, "").lower() != "cpu" and torch.cuda.is_available()


def check_amp(amp: str | None, device: torch.device | None = None) -> None:
    """ConfigError naming --amp unless `device` (default: this process's CUDA device, if usable) runs `amp`:
    any amp needs a GPU; bf16 needs compute capability 8.0+ (emulated bf16 is slower than fp32)."""
    if amp is None:
        return
    if device is None:
        device = torch.device("cuda") if cuda_usable() else torch.device("cpu")
    if device.type != "cuda":
        raise ConfigError(f"--amp {amp} needs a GPU and none is visible: drop --amp on this machine")
    if amp == "bf16":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < BF16_CAPABILITY:
            raise ConfigError(f"--amp bf16 needs bf16 units (compute capability 8.0+); "
                              f"{torch.cuda.get_device_name(device)} has {major}.{minor}: use --amp fp16 or drop --amp")
