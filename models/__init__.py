"""ResNet zoo with torchvision's state_dict keys and a normalisation layer inside; `build` picks by name.

    model = models.build("resnet50", 10, mean=CIFAR10_MEAN, std=CIFAR10_STD)   # inputs in [0, 1]
    model.load_state_dict(torchvision_resnet50.state_dict())                  # strict, both ways
"""
from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from infra.errors import UserError
from models.normalize import IDENTITY_MEAN, IDENTITY_STD, Normalize, set_normalization
from models.resnet import (ResNet, replace_head, resnet18, resnet34, resnet50, resnet101, resnet152,
                           resnet_tiny)

ARCHS: dict[str, Callable[..., ResNet]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet152": resnet152,
    "resnet_tiny": resnet_tiny,
}


def build(arch: str, num_classes: int, *, small_input: bool = False, mean: Sequence[float] = IDENTITY_MEAN,
          std: Sequence[float] = IDENTITY_STD) -> nn.Module:
    """The named arch; `small_input` is applied as given for every arch, resnet_tiny included."""
    if arch not in ARCHS:
        raise UserError(f"unknown architecture {arch!r} (--arch): choose one of {', '.join(ARCHS)}")
    return ARCHS[arch](num_classes, small_input=small_input, mean=mean, std=std)


__all__ = ["ARCHS", "IDENTITY_MEAN", "IDENTITY_STD", "Normalize", "ResNet", "build", "replace_head",
           "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet_tiny", "set_normalization"]
