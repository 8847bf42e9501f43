"""infra/reproducibility.py: a run's kernel mode (--deterministic fixes cuBLAS's workspace, read when CUDA creates its
first cuBLAS handle) holds for the run only; seeding is exact."""
from __future__ import annotations

import random

import numpy as np
import torch

from infra import reproducibility


def test_deterministic_fixes_the_cublas_workspace_and_keeps_a_users_choice(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # records the original, so teardown restores it
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    with reproducibility.kernel_mode(deterministic=False):
        assert "CUBLAS_WORKSPACE_CONFIG" not in reproducibility.os.environ
    with reproducibility.kernel_mode(deterministic=True):
        assert reproducibility.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled()
    assert not torch.are_deterministic_algorithms_enabled()
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with reproducibility.kernel_mode(deterministic=True):
        assert reproducibility.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_seed_all_replays_the_same_draws():
    draws = []
    for _ in range(2):
        reproducibility.seed_all(3)
        draws.append((torch.rand(2).tolist(), np.random.rand(), random.random()))
    assert draws[0] == draws[1]
