"""The optimizer of a run, for ticket finding and transfer alike: SGD (one fused kernel or the loop), the fp16
GradScaler, and a saved optimizer/scaler state loaded into them on resume."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from errors import CheckpointError


@dataclass(frozen=True)
class SGDSettings:
    lr: float
    momentum: float
    weight_decay: float
    fused: bool = True                   # one fused kernel per step: the loop's update up to the last bit (FMA)


def make_sgd(model: torch.nn.Module, s: SGDSettings, state: dict | None = None, path: str = "") -> torch.optim.SGD:
    """SGD over `model`'s parameters; `state` (a saved `state_dict()`) is loaded into it, a misfit is a
    CheckpointError naming `path`."""
    opt = torch.optim.SGD(model.parameters(), s.lr, momentum=s.momentum, weight_decay=s.weight_decay,
                          fused=s.fused or None)
    if state is not None:
        load_state(opt, state, path)
    return opt


def load_state(opt: torch.optim.Optimizer, state: dict, path: str) -> None:
    try:
        opt.load_state_dict(state)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: its optimizer state does not fit this model ({e})") from None


def make_scaler(amp: str | None, state: dict | None = None) -> torch.amp.GradScaler | None:
    """The GradScaler fp16 training needs (None otherwise), with a saved scaler state loaded when given."""
    if amp != "fp16":
        return None
    scaler = torch.amp.GradScaler("cuda")
    if state:
        scaler.load_state_dict(state)
    return scaler
