"""Seeding and RNG state capture/restore, so a resumed run replays exactly what an uninterrupted one does."""
from __future__ import annotations

import ast
import os
import random

import numpy as np
import torch


# cuBLAS is deterministic only with a fixed workspace; read when the process creates its first cuBLAS handle
CUBLAS_WORKSPACE = ":4096:8"


def seed_all(seed: int, *, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); `deterministic` also asks for deterministic kernels and
    cuBLAS workspaces (call it before the first CUDA matmul). Ops without a deterministic kernel still run,
    and PyTorch names each in a warning: they are what `--deterministic` does not cover."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True


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


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    keys = state["numpy"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    random.setstate(_tuplify(ast.literal_eval(state["python"])))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _tuplify(x):
    return tuple(_tuplify(i) for i in x) if isinstance(x, (list, tuple)) else x
