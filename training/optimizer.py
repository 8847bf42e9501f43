"""The optimizer of a run, for ticket finding and transfer alike: SGD (one fused kernel or the loop), the fp16
GradScaler, and a saved optimizer/scaler state loaded into them on resume."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from infra.errors import CheckpointError

RUN_FLAGS = ("fused", "foreach", "differentiable", "maximize")  # how to step, not what to step: this run's


@dataclass(frozen=True)
class SGDSettings:
    lr: float
    momentum: float
    weight_decay: float
    fused: bool = True                   # one fused kernel per step: the loop's update up to the last bit (FMA)


def make_sgd(model: torch.nn.Module, s: SGDSettings, state: dict | None = None, path: str = "") -> torch.optim.SGD:
    """SGD over `model`'s parameters with zero momentum buffers in their parameters' strides; `state` (a saved
    `state_dict()`) is loaded into it, a misfit is a CheckpointError naming `path`.

    Zero buffers make the first update the loop's (0.9 * 0 + g == g) and keep the fused kernel away from its
    first-step path, which allocates the buffers with empty_like and, when a GradScaler skips that step
    (inf/NaN gradients), leaves them unwritten for the next step to apply to the weights.
    """
    opt = torch.optim.SGD(model.parameters(), s.lr, momentum=s.momentum, weight_decay=s.weight_decay,
                          fused=s.fused or None)
    if s.momentum:
        for group in opt.param_groups:
            for p in group["params"]:
                opt.state[p]["momentum_buffer"] = torch.zeros_like(p)  # p's strides
    if state is not None:
        load_state(opt, state, path)
    return opt


def load_state(opt: torch.optim.Optimizer, state: dict, path: str) -> None:
    """Load a saved optimizer state: its numbers, not how it stepped. The param groups keep this run's
    fused/foreach flags (load_state_dict would restore the saved ones: a loop checkpoint would step a fused
    run through the loop, which a GradScaler then trips on) and every state tensor takes its parameter's
    strides (a CPU NCHW checkpoint into a channels_last CUDA model: the CUDA fused kernel refuses mixed layouts,
    the CPU one silently misreads them)."""
    flags = [{k: g[k] for k in RUN_FLAGS if k in g} for g in opt.param_groups]
    try:
        opt.load_state_dict(state)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: its optimizer state does not fit this model ({e})") from None
    for group, own in zip(opt.param_groups, flags):
        group.update(own)
        for p in group["params"]:
            st = opt.state.get(p, {})
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def make_scaler(amp: str | None, device: torch.device | str, state: dict | None = None) -> torch.amp.GradScaler | None:
    """The GradScaler fp16 training on `device` needs (None otherwise), with a saved scaler state loaded when
    given."""
    if amp != "fp16":
        return None
    scaler = torch.amp.GradScaler(torch.device(device).type)
    if state:
        scaler.load_state_dict(state)
    return scaler
