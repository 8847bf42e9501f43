"""models/: torchvision key/shape/init parity, the normalisation layer, the small-input stem, head swap."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import dataset
import models
from infra.errors import UserError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
ALL = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def _torchvision(arch: str, **kw) -> nn.Module:
    return getattr(torchvision.models, arch)(weights=None, **kw)


def _shapes(model: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


def _randomize_bn(model: nn.Module, seed: int) -> None:
    """Non-trivial BN affine params and running stats, so eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)


def _record_shape(module: nn.Module, seen: dict, name: str) -> None:
    def hook(_module, _inputs, output):
        seen[name] = output.shape
    module.register_forward_hook(hook)


def _normalized(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# ---------------------------------------------------------------------------- torchvision parity

@pytest.mark.parametrize("arch", ALL)
def test_state_dict_keys_shapes_and_strict_load_both_ways(arch):
    ours, tv = models.ARCHS[arch](), _torchvision(arch)
    assert list(_shapes(ours).items()) == list(_shapes(tv).items())  # same keys, order and shapes
    tv.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(tv.state_dict(), strict=True)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_weights_give_torchvision_logits(arch):
    torch.manual_seed(1)
    tv = _torchvision(arch, num_classes=10)
    _randomize_bn(tv, seed=2)
    ours = models.ARCHS[arch](10, mean=dataset.IMAGENET_MEAN, std=dataset.IMAGENET_STD)
    ours.load_state_dict(tv.state_dict(), strict=True)
    ours.eval()
    tv.eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = tv(_normalized(x, dataset.IMAGENET_MEAN, dataset.IMAGENET_STD))
        got = ours(x)
        assert expected.abs().max() > 1e-3  # the comparison below is not between two near-zero outputs
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch,zero_init_residual", [("resnet18", False), ("resnet50", True)])
def test_init_is_torchvision_init(arch, zero_init_residual):
    # Same module order and init scheme -> the same RNG draws -> bit-identical weights.
    torch.manual_seed(0)
    ours = models.ARCHS[arch](10, zero_init_residual=zero_init_residual)
    torch.manual_seed(0)
    tv = _torchvision(arch, num_classes=10, zero_init_residual=zero_init_residual)
    ref = tv.state_dict()
    for k, v in ours.state_dict().items():
        assert torch.equal(v, ref[k]), k
    last_bn = ours.layer1[0].bn3 if arch == "resnet50" else ours.layer1[0].bn2
    assert bool((last_bn.weight == 0).all()) == zero_init_residual
    assert bool((ours.bn1.weight == 1).all()) and bool((ours.bn1.bias == 0).all())


# ---------------------------------------------------------------------------- normalisation

def test_normalize_buffers_are_not_in_state_dict():
    model = models.resnet18(10)
    assert isinstance(model.normalize, models.Normalize)
    buffers = dict(model.named_buffers())
    assert buffers["normalize.mean"].shape == (1, 3, 1, 1) and buffers["normalize.std"].shape == (1, 3, 1, 1)
    # identity until the data set's stats are set: the stats belong to the dataset table (datafiles/facts.py), not to the model
    assert model.normalize.mean.flatten().tolist() == [0.0, 0.0, 0.0]
    assert model.normalize.std.flatten().tolist() == [1.0, 1.0, 1.0]
    assert not any(k.startswith("normalize") for k in model.state_dict())


def test_set_normalization_changes_forward_and_survives_checkpoint_load():
    torch.manual_seed(4)
    tv = _torchvision("resnet18", num_classes=10).eval()
    _randomize_bn(tv, seed=5)
    ours = models.resnet18(10).eval()
    assert models.set_normalization(ours, CIFAR10_MEAN, CIFAR10_STD) is ours
    ours.load_state_dict(tv.state_dict(), strict=True)  # stats are the data's, not the checkpoint's
    assert ours.normalize.mean.flatten().tolist() == pytest.approx(CIFAR10_MEAN)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(_normalized(x, CIFAR10_MEAN, CIFAR10_STD)), atol=1e-5, rtol=0)


def test_build_passes_stats_and_set_normalization_keeps_dtype():
    model = models.build("resnet_tiny", 10, small_input=True, mean=CIFAR10_MEAN, std=CIFAR10_STD).double()
    assert model.normalize.std.flatten().tolist() == pytest.approx(CIFAR10_STD)
    models.set_normalization(model, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert model.normalize.mean.dtype == torch.float64
    assert model.normalize.std.flatten().tolist() == [0.25, 0.25, 0.25]
    with pytest.raises(ValueError):
        models.set_normalization(model, (0.5, 0.5), (0.25, 0.25))
    with pytest.raises(ValueError):
        models.set_normalization(model, (0.5, 0.5, 0.5), (0.25, 0.0, 0.25))


# ---------------------------------------------------------------------------- small-input stem

def test_small_input_stem():
    model = models.resnet18(10, small_input=True).eval()
    conv1 = model.conv1
    assert (conv1.kernel_size, conv1.stride, conv1.padding, conv1.out_channels) == ((3, 3), (1, 1), (1, 1), 64)
    assert isinstance(model.maxpool, nn.Identity)
    assert set(model.state_dict()) == set(_torchvision("resnet18").state_dict())
    seen = {}
    _record_shape(model.layer1, seen, "layer1")
    _record_shape(model.layer4, seen, "layer4")
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert seen["layer1"] == (2, 64, 32, 32) and seen["layer4"] == (2, 512, 4, 4)  # stem keeps full resolution


def test_standard_stem_downsamples_by_four():
    model = models.resnet18(10).eval()
    assert (model.conv1.kernel_size, model.conv1.stride) == ((7, 7), (2, 2))
    assert isinstance(model.maxpool, nn.MaxPool2d)
    seen = {}
    _record_shape(model.layer1, seen, "layer1")
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64))
    assert seen["layer1"] == (1, 64, 16, 16)


# ---------------------------------------------------------------------------- tiny model, layouts, autocast

def test_resnet_tiny_forward_backward():
    torch.manual_seed(7)
    model = models.resnet_tiny()
    assert model.conv1.weight.shape == (16, 3, 3, 3) and model.fc.in_features == 128
    assert [k for k in model.state_dict() if k.endswith("conv1.weight")] == [
        "conv1.weight", "layer1.0.conv1.weight", "layer2.0.conv1.weight", "layer3.0.conv1.weight",
        "layer4.0.conv1.weight"]
    x, y = torch.rand(4, 3, 32, 32, requires_grad=True), torch.tensor([0, 1, 2, 3])
    out = model(x)
    assert out.shape == (4, 10)
    nn.functional.cross_entropy(out, y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0  # attacks need input gradients


def test_channels_last_and_autocast():
    torch.manual_seed(8)
    model = models.resnet_tiny().eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        x_cl = x.to(memory_format=torch.channels_last)
        assert model_cl.normalize(x_cl).is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(model_cl(x_cl), ref, atol=1e-5, rtol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model_cl(x_cl)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=0.1 * ref.abs().max().item(), rtol=0)


# ---------------------------------------------------------------------------- head swap and build

def test_replace_head_keeps_backbone():
    model = models.resnet18(1000)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    old_fc = model.fc
    torch.manual_seed(9)
    assert models.replace_head(model, 7) is model
    torch.manual_seed(9)
    reference = nn.Linear(512, 7)  # torchvision's head init is nn.Linear's default
    assert model.fc is not old_fc and (model.fc.in_features, model.fc.out_features) == (512, 7)
    assert torch.equal(model.fc.weight, reference.weight) and torch.equal(model.fc.bias, reference.bias)
    after = model.state_dict()
    assert set(after) == set(before)
    for k in before:
        if not k.startswith("fc."):
            assert torch.equal(after[k], before[k]), k
    assert after["fc.weight"].shape == (7, 512)
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 7)


def test_replace_head_keeps_dtype():
    model = models.resnet_tiny().double()
    models.replace_head(model, 3)
    assert model.fc.weight.dtype == torch.float64 and model.fc.weight.device == model.conv1.weight.device


def test_build_known_and_unknown_arch():
    model = models.build("resnet50", 10)
    assert _shapes(model) == _shapes(_torchvision("resnet50", num_classes=10))
    assert isinstance(model.maxpool, nn.MaxPool2d)
    with pytest.raises(UserError) as info:
        models.build("resnet51", 10)
    message = str(info.value)
    assert "\n" not in message and "'resnet51'" in message
    assert all(name in message for name in models.ARCHS)
    assert set(models.ARCHS) == set(ALL) | {"resnet_tiny"}
