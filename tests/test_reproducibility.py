"""reproducibility.py: --deterministic fixes cuBLAS's workspace (read when CUDA creates its first cuBLAS handle),
and a saved RNG state replays the same draws."""
from __future__ import annotations

import random

import numpy as np
import torch

import reproducibility


def test_deterministic_fixes_the_cublas_workspace_and_keeps_a_users_choice(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # records the original, so teardown restores it
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    reproducibility.seed_all(0)
    assert "CUBLAS_WORKSPACE_CONFIG" not in reproducibility.os.environ
    try:
        reproducibility.seed_all(0, deterministic=True)
        assert reproducibility.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
        reproducibility.seed_all(0, deterministic=True)
        assert reproducibility.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_rng_state_round_trip():
    reproducibility.seed_all(3)
    state = reproducibility.get_rng_state()
    first = (torch.rand(2), np.random.rand(), random.random())
    reproducibility.set_rng_state(state)
    again = (torch.rand(2), np.random.rand(), random.random())
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
