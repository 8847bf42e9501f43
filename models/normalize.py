"""Per-channel input normalisation as a layer, so the model takes [0, 1] pixels.

Attacks then work in pixel space (eps 8/255 means what it says) and the stats travel with the model.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from infra.distributed import unwrap

IDENTITY_MEAN = (0.0, 0.0, 0.0)  # no normalisation until the data set's stats are set (datafiles/facts.py)
IDENTITY_STD = (1.0, 1.0, 1.0)


def _stats(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
    std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
    if mean_t.numel() != std_t.numel():
        raise ValueError(f"normalisation mean has {mean_t.numel()} values but std has {std_t.numel()}")
    if not bool(torch.all(std_t > 0)):
        raise ValueError(f"normalisation std must be positive, got {tuple(std_t.tolist())}")
    return mean_t.view(1, -1, 1, 1), std_t.view(1, -1, 1, 1)


class Normalize(nn.Module):
    """(x - mean) / std per channel; `mean`/`std` are non-persistent buffers of shape [1, C, 1, 1].

    Non-persistent so the model's state_dict keys stay exactly torchvision's: the stats belong to
    the data set, and are set from it (see `set_normalization`) rather than loaded from checkpoints.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float] = IDENTITY_MEAN, std: Sequence[float] = IDENTITY_STD) -> None:
        super().__init__()
        mean_t, std_t = _stats(mean, std)
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        mean = tuple(round(v, 4) for v in self.mean.flatten().tolist())
        std = tuple(round(v, 4) for v in self.std.flatten().tolist())
        return f"mean={mean}, std={std}"


def set_normalization(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """Set `model.normalize` stats in place, keeping the buffers' device and dtype; returns the model."""
    norm = getattr(unwrap(model), "normalize", None)
    if not isinstance(norm, Normalize):
        raise TypeError(f"{type(model).__name__} has no `normalize` layer")
    mean_t, std_t = _stats(mean, std)
    if mean_t.shape != norm.mean.shape:
        raise ValueError(f"normalisation needs {norm.mean.shape[1]} values per stat, got {mean_t.shape[1]}")
    with torch.no_grad():
        norm.mean.copy_(mean_t)
        norm.std.copy_(std_t)
    return model
