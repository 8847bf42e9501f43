"""What this machine can do: whether CUDA is to be used (`DOUBLEWIN_DEVICE=cpu` pins CPU, as the test suite
does), whether a GPU this process was given works, and whether it runs the `--amp` precision asked for."""
from __future__ import annotations

import os
from typing import Mapping

import torch

from infra.errors import ConfigError, NodeError

PIN = "DOUBLEWIN_DEVICE"  # "cpu": behave as if no GPU were visible (a CPU run on a GPU node; the CPU test suite)
# where a scheduler or the user names the GPUs of a process (SLURM sets CUDA_VISIBLE_DEVICES too, not always)
GPU_VARS = ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS")
BF16_CAPABILITY = (8, 0)  # Ampere: the first CUDA cards with bf16 units (older ones emulate it, slowly)


def cuda_usable() -> bool:
    """CUDA is visible and not pinned away by DOUBLEWIN_DEVICE=cpu."""
    return os.environ.get(PIN, "").lower() != "cpu" and torch.cuda.is_available()


def gpus_given(environ: Mapping[str, str]) -> str | None:
    """The GPUs a scheduler or the user gave this process, as the environment names them, or None."""
    for var in GPU_VARS:
        value = environ.get(var, "").strip()
        if value and value not in ("-1", "NoDevFiles"):
            return f"{var}={value}"
    return None


def check_gpus_given(environ: Mapping[str, str], gpu_flag: int | None = None) -> None:
    """NodeError when this process was given a GPU (by the scheduler, CUDA_VISIBLE_DEVICES or --gpu) that CUDA
    cannot use here: a run that asked for a GPU never trains on the CPU instead, for up to a day per try.
    DOUBLEWIN_DEVICE=cpu asks for the CPU on purpose."""
    if environ.get(PIN, "").lower() == "cpu":
        return
    given = gpus_given(environ) or (None if gpu_flag is None else f"--gpu {gpu_flag}")
    if given is None or torch.cuda.is_available():
        return
    why = ("this PyTorch is a CPU build" if torch.version.cuda is None else
           "no CUDA device answers (a driver fault, a GPU fallen off the bus, or an id that does not exist)")
    raise NodeError(f"this process was given a GPU ({given}) but CUDA cannot use it: {why}; it will not train on "
                    "the CPU instead (check the node with nvidia-smi, or drop the GPU request to run on the CPU)")


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
