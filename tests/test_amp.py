"""Mixed precision on CPU: the attack under fp16 keeps fp32's gradient signs, the final transfer test is fp32
unless --test-amp, and --amp bf16 is refused on cards without bf16 units."""
from __future__ import annotations

import json

import pytest
import torch

from training import engine
from infra import hardware
import main_imp_adv
from transfer import cli
import models
from attacks import PGD
from infra.checkpoint import read_jsonl
from infra.paths import METRICS, RESULTS
from infra.errors import ConfigError
from recipes import argv
from transfer import results as transfer_results

EPS = 1 / 255


def _confident(margin: float) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """resnet_tiny in eval mode that puts class 0 `margin` logits above the rest for every image."""
    torch.manual_seed(0)
    net = models.build("resnet_tiny", 10).eval()
    with torch.no_grad():
        net.fc.bias.zero_()
        net.fc.bias[0] = margin
    x = 0.25 + 0.5 * torch.rand(4, 3, 32, 32)  # one step of EPS never reaches the [0, 1] clamp
    return net, x, torch.zeros(4, dtype=torch.long)


def _zero_sign_share(x_adv: torch.Tensor, x: torch.Tensor) -> float:
    """One PGD step without random start moves each pixel by EPS * sign(grad): unmoved pixels had a 0 sign."""
    return (x_adv == x).float().mean().item()


def test_fp16_attack_keeps_fp32_gradient_signs_on_confident_images():
    net, x, y = _confident(12.0)
    attack = PGD(EPS, EPS, steps=1, random_start=False)
    fp32 = engine.adversarial(attack, net, x, y, device=torch.device("cpu"), amp=None)
    with torch.autocast("cpu", dtype=torch.float16):  # what an fp16 attack computes: the gradient underflows
        plain = attack(net, x, y)
    assert _zero_sign_share(plain, x) > 0.05
    ours = engine.adversarial(attack, net, x, y, device=torch.device("cpu"), amp="fp16")
    assert _zero_sign_share(fp32, x) == 0.0 and _zero_sign_share(ours, x) == 0.0
    assert torch.equal(ours, fp32)


@pytest.mark.parametrize("amp, attack_autocast", [(None, False), ("bf16", True), ("fp16", False)])
def test_both_loops_make_attacks_in_the_attack_precision(amp, attack_autocast):
    seen: list[bool] = []

    def spy(net, x, y):
        seen.append(torch.is_autocast_enabled("cpu"))
        return x
    net = models.build("resnet_tiny", 10)
    data = [(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))]
    engine.evaluate(net, data, engine.Step(amp=amp, attack=spy, show_progress=False))
    opt = torch.optim.SGD(net.parameters(), 0.01)
    engine.train_one_epoch(net, data, opt, engine.Step(amp=amp, attack=spy, show_progress=False))
    assert seen == [attack_autocast, attack_autocast]


# ---------------------------------------------------------------------------- final test precision
@pytest.mark.slow
def test_final_test_is_fp32_unless_test_amp(cifar10_root, tmp_path, monkeypatch):
    """A bf16 run (CPU autocast stands in for the GPU's) tests its best checkpoints in fp32 and says so; --test-amp
    re-tests the finished run under bf16 without training again."""
    monkeypatch.setattr(hardware, "check_amp", lambda amp, device=None: None)
    calls: list[tuple[str, str | None]] = []
    plain_evaluate = transfer_results.evaluate

    def spy(model, loader, step, **kw):
        calls.append((kw["desc"], step.amp))
        return plain_evaluate(model, loader, step, **kw)
    monkeypatch.setattr(transfer_results, "evaluate", spy)
    torch.manual_seed(0)
    init = str(tmp_path / "init.pth")
    torch.save(models.resnet_tiny(1000).state_dict(), init)
    out = tmp_path / "run"
    cli.main(argv(out, cifar10_root, "cifar10", init, epochs=1, extra=("--amp", "bf16")))
    res = json.load(open(out / RESULTS))
    assert res["test_precision"] == "fp32" and calls and {amp for _, amp in calls} == {None}
    rows = read_jsonl(str(out / METRICS))
    calls.clear()
    cli.main(argv(out, cifar10_root, "cifar10", init, epochs=1, extra=("--amp", "bf16", "--test-amp")))
    res = json.load(open(out / RESULTS))
    assert res["test_precision"] == "bf16" and calls and {amp for _, amp in calls} == {"bf16"}
    assert read_jsonl(str(out / METRICS)) == rows  # tested again, not trained again


# ---------------------------------------------------------------------------- bf16 units
@pytest.fixture
def fake_gpu(monkeypatch):
    """A visible CUDA device of a chosen compute capability (nothing runs on it)."""
    def use(capability: tuple[int, int], name: str = "Tesla V100-SXM2-16GB"):
        monkeypatch.delenv(hardware.PIN, raising=False)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    return use


def test_bf16_needs_bf16_units(fake_gpu):
    fake_gpu((7, 0))
    with pytest.raises(ConfigError, match=r"--amp bf16 needs bf16 units .*Tesla V100-SXM2-16GB has 7\.0"):
        hardware.check_amp("bf16")
    hardware.check_amp("fp16")
    fake_gpu((8, 0), "NVIDIA A100")
    hardware.check_amp("bf16")


def test_amp_without_a_gpu_or_pinned_to_cpu_is_an_error(monkeypatch):
    with pytest.raises(ConfigError, match="--amp fp16 needs a GPU"):
        hardware.check_amp("fp16")  # the suite pins CPU, as DOUBLEWIN_DEVICE=cpu does on a GPU node
    with pytest.raises(ConfigError, match="--amp bf16 needs a GPU"):
        hardware.check_amp("bf16", torch.device("cpu"))
    hardware.check_amp(None)


@pytest.mark.parametrize("parse", [
    lambda out: main_imp_adv.main(["d", "--save_dir", out, "--amp", "bf16"]),
    lambda out: cli.config_from_args(cli.get_args_parser().parse_args(["--init", "", "--save_dir", out, "--amp",
                                                                       "bf16"])),
])
def test_both_entry_points_check_the_card(fake_gpu, parse, tmp_path):
    fake_gpu((6, 1), "Tesla P100-PCIE-16GB")
    with pytest.raises(ConfigError, match=r"compute capability 8\.0\+\); Tesla P100-PCIE-16GB has 6\.1"):
        parse(str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # refused before the run's folder is made
