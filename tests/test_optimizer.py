"""training/optimizer.py on CPU: fused SGD + GradScaler when the first step overflows, and optimizer states resumed from
other layouts and from loop-SGD checkpoints (the run's own flags and the parameters' strides win)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from training import optimizer
from infra.errors import CheckpointError
from recipes import loop_reference, set_grads

SETTINGS = optimizer.SGDSettings(lr=0.1, momentum=0.9, weight_decay=1e-4)


def _net(channels_last: bool = False) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(4))
    net(torch.zeros(1, 3, 6, 6))
    return net.to(memory_format=torch.channels_last) if channels_last else net


def _scaled_run(fused: bool, steps: int = 3) -> list[torch.Tensor]:
    """Steps of SGD under a CPU GradScaler; step 1's gradients hold an inf (the scaler skips it)."""
    net = _net()
    opt = optimizer.make_sgd(net, optimizer.SGDSettings(0.1, 0.9, 1e-4, fused=fused))
    scaler = optimizer.make_scaler("fp16", "cpu")
    for k in range(steps):
        scaler.scale(torch.ones(()))  # as scaler.scale(loss) does before backward
        set_grads(net, k, scale=scaler.get_scale(), poison=k == 0)
        scaler.step(opt)
        scaler.update()
    return [p.detach().clone() for p in net.parameters()]


def test_fused_sgd_whose_first_step_is_skipped_continues_like_the_loop():
    """Deterministic mode fills torch.empty_like with NaN: the fused kernel's unwritten first-step buffers would
    poison every weight (and on CUDA the caching allocator hands out old memory: weights jumped to 1e37)."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        fused, loop = _scaled_run(True), _scaled_run(False)
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.isfinite(p).all() for p in fused)
    assert all(torch.equal(a, b) for a, b in zip(fused, loop))
    assert not all(torch.equal(a, b) for a, b in zip(loop, [p.detach() for p in _net().parameters()]))


def test_fresh_buffers_are_zero_in_the_parameters_strides():
    net = _net(channels_last=True)
    opt = optimizer.make_sgd(net, SETTINGS)
    for p in net.parameters():
        buf = opt.state[p]["momentum_buffer"]
        assert buf.stride() == p.stride() and not buf.any()


def _saved_state(fused: bool, channels_last: bool, old_torch: bool = False) -> dict:
    """The optimizer state of a run after two steps (loop or fused, NCHW or channels_last)."""
    net = _net(channels_last)
    opt = torch.optim.SGD(net.parameters(), 0.1, momentum=0.9, weight_decay=1e-4, fused=fused or None)
    for k in range(2):
        set_grads(net, k)
        opt.step()
    sd = opt.state_dict()
    if old_torch:  # the original code's torch wrote groups without these keys
        for g in sd["param_groups"]:
            for key in optimizer.RUN_FLAGS:
                g.pop(key, None)
    return sd


@pytest.mark.parametrize("saved_fused, old_torch", [(False, False), (False, True), (True, False)])
def test_a_resumed_state_keeps_this_runs_flags_and_steps_under_a_scaler(saved_fused, old_torch):
    """A loop-SGD (or the original's) checkpoint resumed by a fused fp16 run: load_state_dict alone restores
    fused False/None, and the GradScaler's step then asserts on the loop."""
    state = _saved_state(saved_fused, False, old_torch)
    net = _net()
    opt = optimizer.make_sgd(net, SETTINGS, copy.deepcopy(state), "ck.pth")  # a loaded state aliases its source
    assert all(g["fused"] is True and g["foreach"] is None for g in opt.param_groups)
    scaler = optimizer.make_scaler("fp16", "cpu")
    scaler.scale(torch.ones(()))
    set_grads(net, 5, scale=scaler.get_scale())
    scaler.step(opt)
    loop_net = loop_reference(_net(), state, 5)
    for a, b in zip(net.parameters(), loop_net.parameters()):  # fused: the same update up to the last bit (FMA)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("saved_cl, run_cl", [(False, True), (True, False)])
def test_resumed_momentum_takes_the_parameters_strides(saved_cl, run_cl):
    """A run started on CPU (NCHW) continued on a GPU (channels_last), and back: the CUDA fused kernel refuses a
    buffer whose layout differs from its parameter's, and the CPU one silently misreads it (wrong weights)."""
    state = _saved_state(True, saved_cl)
    net = _net(run_cl)
    opt = optimizer.make_sgd(net, SETTINGS, copy.deepcopy(state), "ck.pth")
    conv = net[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) == run_cl
    for i, p in enumerate(net.parameters()):
        buf = opt.state[p]["momentum_buffer"]
        assert buf.stride() == p.stride()
        assert torch.equal(buf, state["state"][i]["momentum_buffer"])
    set_grads(net, 5)
    opt.step()
    loop_net = _net(run_cl)
    loop = torch.optim.SGD(loop_net.parameters(), 0.1, momentum=0.9, weight_decay=1e-4)
    loop.load_state_dict(copy.deepcopy(state))
    loop.param_groups[0]["fused"] = False  # the loop reads any layout correctly
    set_grads(loop_net, 5)
    loop.step()
    for a, b in zip(net.parameters(), loop_net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_state_of_another_model_is_a_checkpoint_error():
    other = nn.Linear(2, 2)
    sd = torch.optim.SGD(other.parameters(), 0.1, momentum=0.9).state_dict()
    with pytest.raises(CheckpointError, match="ck.pth: its optimizer state does not fit"):
        optimizer.make_sgd(_net(), SETTINGS, sd, "ck.pth")


def test_scaler_only_for_fp16_on_the_given_device():
    assert optimizer.make_scaler(None, "cpu") is None and optimizer.make_scaler("bf16", "cpu") is None
    scaler = optimizer.make_scaler("fp16", torch.device("cpu"), {"scale": 8.0, "growth_factor": 2.0,
                                                                  "backoff_factor": 0.5, "growth_interval": 2000,
                                                                  "_growth_tracker": 0})
    assert scaler.get_scale() == 8.0 and scaler._device == "cpu"
