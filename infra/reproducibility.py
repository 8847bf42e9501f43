"""Seeding and RNG state capture/restore, so a resumed run replays exactly what an uninterrupted one does."""
from __future__ import annotations

import contextlib
import os
import random
from typing import Iterator

import numpy as np
import torch


# cuBLAS is deterministic only with a fixed workspace; read when the process creates its first cuBLAS handle
CUBLAS_WORKSPACE = ":4096:8"


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def kernel_mode(*, deterministic: bool, tf32: bool = True) -> Iterator[None]:
    """For the duration of a run: deterministic kernels (`--deterministic`: torch's deterministic algorithms, a
    fixed cuBLAS workspace unless CUBLAS_WORKSPACE_CONFIG is set (enter this before the first CUDA matmul), cuDNN
    without autotuning) or cuDNN's autotuner, and cuDNN's TF32 for fp32 convolutions on or off (`--tf32`); the
    process's previous settings come back afterwards. Ops without a deterministic kernel still run, and PyTorch
    names each in a warning: they are what `--deterministic` does not cover."""
    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32 = not deterministic, deterministic, tf32
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32 = before[2:]


def epoch_generator(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """The generator that orders (and seeds the workers of) one epoch's loader: a pure function of its inputs."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + rank)


def get_rng_state() -> dict:
    """Plain-tensor RNG states (loadable with weights_only=True)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state
