"""The CUDA paths, on a GPU (skipped where CUDA is absent; `bash script/gpu_check.sh` runs them): fused SGD +
GradScaler, resumed optimizer layouts, the fp16 attack, device placement, NCCL groups, deterministic cuBLAS,
bf16 units and the device pipeline on CUDA generators."""
from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from infra import distributed
from training import engine
from infra import hardware
import models
from training import optimizer
from attacks import PGD
from recipes import loop_reference, set_grads
from transfer import pipeline

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = optimizer.SGDSettings(0.1, 0.9, 1e-4)


@pytest.fixture(autouse=True)
def unpinned(monkeypatch):
    """Lift the CPU suite's pin (conftest) for these tests and the processes they start."""
    monkeypatch.delenv(hardware.PIN, raising=False)


def _net(device="cuda", channels_last=True) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 4))
    net = net.to(device)
    return net.to(memory_format=torch.channels_last) if channels_last else net


# ---------------------------------------------------------------------------- fault 1: fused SGD + GradScaler
def _first_step_skipped(fused: bool) -> list[torch.Tensor]:
    net = _net()
    junk = torch.full((1 << 22,), 1e4, device="cuda")  # recycled allocator blocks, as a real run has them
    del junk
    opt = optimizer.make_sgd(net, optimizer.SGDSettings(0.1, 0.9, 1e-4, fused=fused))
    scaler = optimizer.make_scaler("fp16", "cuda")
    for k in range(3):
        scaler.scale(torch.ones((), device="cuda"))
        set_grads(net, k, scale=scaler.get_scale(), poison=k == 0)
        scaler.step(opt)
        scaler.update()
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("deterministic", [False, True])
def test_fused_sgd_whose_first_step_is_skipped_continues_like_the_loop(deterministic):
    torch.use_deterministic_algorithms(deterministic, warn_only=True)  # deterministic: empty memory is NaN
    try:
        fused, loop = _first_step_skipped(True), _first_step_skipped(False)
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b in zip(fused, loop):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------- fault 3: resumed optimizer states
@pytest.mark.parametrize("saved", ["cpu-nchw-fused", "cpu-nchw-loop", "original-torch"])
def test_a_cpu_checkpoint_resumes_under_fused_sgd_and_a_scaler_on_the_gpu(saved):
    src = _net("cpu", channels_last=False)
    old = torch.optim.SGD(src.parameters(), 0.1, momentum=0.9, weight_decay=1e-4,
                          fused=True if saved == "cpu-nchw-fused" else None)
    for k in range(2):
        set_grads(src, k)
        old.step()
    state = old.state_dict()
    if saved == "original-torch":
        for g in state["param_groups"]:
            for key in optimizer.RUN_FLAGS:
                g.pop(key, None)
    net = _net()
    opt = optimizer.make_sgd(net, SETTINGS, copy.deepcopy(state), "ck.pth")
    assert all(opt.state[p]["momentum_buffer"].stride() == p.stride() for p in net.parameters())
    scaler = optimizer.make_scaler("fp16", "cuda")
    scaler.scale(torch.ones((), device="cuda"))
    set_grads(net, 5, scale=scaler.get_scale())
    scaler.step(opt)  # the CUDA fused kernel refuses NCHW buffers next to channels_last weights
    loop_net = loop_reference(_net(), state, 5)
    for a, b in zip(net.parameters(), loop_net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- fault 2: the fp16 attack
def test_fp16_attack_keeps_fp32_gradient_signs(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    torch.manual_seed(0)
    net = models.build("resnet_tiny", 10).cuda().eval()
    with torch.no_grad():
        net.fc.bias.zero_()
        net.fc.bias[0] = 12.0
    x = 0.25 + 0.5 * torch.rand(8, 3, 32, 32, device="cuda")
    y = torch.zeros(8, dtype=torch.long, device="cuda")
    attack = PGD(1 / 255, 1 / 255, steps=1, random_start=False)
    cuda = torch.device("cuda")
    fp32 = engine.adversarial(attack, net, x, y, device=cuda, amp=None)
    ours = engine.adversarial(attack, net, x, y, device=cuda, amp="fp16")
    assert (ours == x).float().mean().item() == (fp32 == x).float().mean().item() == 0.0
    assert torch.equal(ours, fp32)


# ---------------------------------------------------------------------------- faults 4, 5, 7, 10: placement, NCCL
def test_local_ranks_wrap_around_the_visible_gpus():
    n = torch.cuda.device_count()
    for local in range(2 * n):
        assert distributed._device(local) == torch.device("cuda", local % n)
        assert torch.cuda.current_device() == local % n
    torch.cuda.set_device(0)


def test_the_cpu_pin_keeps_runs_on_cpu_and_gloo(monkeypatch):
    monkeypatch.setenv(hardware.PIN, "cpu")
    assert distributed._device(1) == torch.device("cpu") and distributed._backend("nccl") == "gloo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nccl_worker(env, out):
    """A collective, rank 0's BatchNorm buffers before validation, and the bound device, written per rank."""
    torch.manual_seed(0)
    net = _net()
    with torch.no_grad():
        net.train()(torch.rand(4, 3, 8, 8, device=env.device) * (1 + env.rank))
    engine.evaluate(net, [(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))], engine.Step(env, show_progress=False))
    total = distributed.all_reduce_sum(torch.ones(1, device=env.device), env)
    with open(os.path.join(out, f"rank{env.rank}.json"), "w") as f:
        json.dump({"backend": env.backend, "device": str(env.device), "sum": total.item(),
                   "bn_mean": net[1].running_mean.tolist()}, f)


@pytest.mark.parametrize("world", [1, 2])
def test_nccl_group(world, tmp_path):
    if torch.cuda.device_count() < world:
        pytest.skip(f"needs {world} GPUs")
    opts = distributed.Launch(dist_url=f"tcp://127.0.0.1:{_free_port()}", dist_backend="nccl")
    torch.multiprocessing.spawn(distributed._spawned, nprocs=world, args=(_nccl_worker, str(tmp_path), world, world,
                                                                         0, opts))
    rows = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(world)]
    assert [r["device"] for r in rows] == [f"cuda:{r}" for r in range(world)]
    assert all(r["backend"] == "nccl" and r["sum"] == world for r in rows)
    assert all(r["bn_mean"] == rows[0]["bn_mean"] for r in rows)


# ---------------------------------------------------------------------------- fault 6: --deterministic
def test_deterministic_mode_runs_cublas_deterministically():
    """Strict deterministic mode refuses a cuBLAS matmul unless CUBLAS_WORKSPACE_CONFIG was set first."""
    code = ("import torch\nfrom infra import reproducibility\nreproducibility.seed_all(0)\n"
            "with reproducibility.kernel_mode(deterministic=True):\n"
            "    torch.use_deterministic_algorithms(True)\n    a = torch.rand(64, 64, device='cuda')\n"
            "    print((a @ a).sum().item())\n")
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_deterministic_training_steps_repeat_bit_for_bit():
    """Two runs of the same A-IMP-like steps under --deterministic end with the same weights; the ops PyTorch
    warns about (what the flag does not cover) are listed in the failure message."""
    from infra import reproducibility

    def run():
        reproducibility.seed_all(0)
        with reproducibility.kernel_mode(deterministic=True):  # what --deterministic enters for a run
            net = models.build("resnet_tiny", 10).cuda().to(memory_format=torch.channels_last)
            opt = optimizer.make_sgd(net, SETTINGS)
            data = [(torch.rand(16, 3, 32, 32, device="cuda"), torch.randint(0, 10, (16,), device="cuda"))
                    for _ in range(3)]
            step = engine.Step(distributed.DistEnv(device=torch.device("cuda")), amp="bf16", channels_last=True,
                               attack=PGD(8 / 255, 2 / 255, 2), show_progress=False)
            engine.train_one_epoch(net, data, opt, step)
        return [p.detach().clone() for p in net.parameters()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a, b = run(), run()
    ops = sorted({str(w.message).split(" does not have")[0] for w in caught if "deterministic" in str(w.message)})
    assert all(torch.equal(x, y) for x, y in zip(a, b)), f"nondeterministic ops met: {ops}"


# ---------------------------------------------------------------------------- fault 9: bf16 units
def test_bf16_check_matches_this_card():
    hardware.check_amp("fp16")
    if torch.cuda.get_device_capability() >= hardware.BF16_CAPABILITY:
        hardware.check_amp("bf16")
    else:
        with pytest.raises(Exception, match="needs bf16 units"):
            hardware.check_amp("bf16")


# ---------------------------------------------------------------------------- device pipeline on CUDA generators
def test_device_pipeline_on_cuda_generators_repeats_and_matches_the_cpu_resampling():
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, device="cuda")
    g = torch.Generator(device="cuda")
    augment = pipeline.DeviceAugment(64, generator=g)
    g.manual_seed(5)
    first = augment(images)
    g.manual_seed(5)
    assert torch.equal(augment(images), first)
    assert first.shape == (32, 3, 64, 64) and first.is_contiguous(memory_format=torch.channels_last)
    g.manual_seed(5)
    params = augment.params(32, 32, 32, images.device)
    on_cpu = augment.apply(images.cpu(), *(t.cpu() for t in params))
    assert (first.cpu() - on_cpu).abs().max().item() <= 1 / 255 + 1e-6
    assert torch.equal(first.mul(255).round(), first.mul(255))  # PIL's 1/255 grid
