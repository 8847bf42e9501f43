"""transfer/pipeline.py: crop/flip distributions against torchvision's, pixels against PIL and torchvision's resize,
device batches (order, shards, labels) and reading CIFAR/SVHN arrays."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from scipy.stats import ks_2samp

import dataset
import transfer.pipeline as ga

PIL_TOL = 1.0001 / 255  # PIL rounds to uint8 after each of its two passes; we round never


def torchvision_crops(n: int, height: int, width: int, seed: int, scale=ga.SCALE) -> torch.Tensor:
    torch.manual_seed(seed)
    img = torch.empty(3, height, width)
    return torch.tensor([T.RandomResizedCrop.get_params(img, list(scale), list(ga.RATIO)) for _ in range(n)]).T


def pil(images: torch.Tensor, k: int) -> Image.Image:
    return Image.fromarray(images[k].permute(1, 2, 0).numpy())


def random_images(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, height, width), dtype=torch.uint8, generator=g)


# ---------------------------------------------------------------------------- crop parameters
@pytest.mark.parametrize("height, width", [(32, 32), (8, 96)])  # 8x96: the centre-crop fallback ~80% of the time
def test_crop_distribution_matches_torchvision(height, width):
    n = 3000
    ours = torch.stack(ga.sample_crops(n, height, width, generator=torch.Generator().manual_seed(1)))
    ref = torchvision_crops(n, height, width, seed=0)
    critical = 1.95 * math.sqrt(2 / n)  # two-sample KS at alpha = 0.001 (conservative for discrete values)
    for k, name in enumerate(("top", "left", "h", "w")):
        stat = ks_2samp(ours[k].numpy(), ref[k].numpy(), method="asymp").statistic
        assert stat < critical, f"{name}: KS {stat:.4f} >= {critical:.4f}"
    area = (ours[2] * ours[3]).double() / (height * width)
    ref_area = (ref[2] * ref[3]).double() / (height * width)
    assert ks_2samp(area.numpy(), ref_area.numpy(), method="asymp").statistic < critical
    assert bool((ours[0] >= 0).all() and (ours[1] >= 0).all() and (ours[2] >= 1).all() and (ours[3] >= 1).all())
    assert bool((ours[0] + ours[2] <= height).all() and (ours[1] + ours[3] <= width).all())


@pytest.mark.parametrize("height, width", [(8, 96), (96, 8), (20, 24)])
def test_fallback_is_torchvisions_centre_crop(height, width):
    # an area above the image's never fits, so every draw falls back
    ours = torch.stack(ga.sample_crops(5, height, width, scale=(1.5, 2.0)))
    ref = torchvision_crops(1, height, width, seed=0, scale=(1.5, 2.0))
    assert torch.equal(ours, ref.expand(4, 5))


def test_flip_rate_is_half_and_flip_mirrors_the_output():
    aug = ga.DeviceAugment(16, generator=torch.Generator().manual_seed(0))
    flips = aug.params(4000, 32, 32, "cpu")[4]
    assert abs(flips.double().mean().item() - 0.5) < 4 * 0.5 / math.sqrt(4000)
    images = random_images(3, 32, 32)
    top, left, h, w, _ = aug.params(3, 32, 32, "cpu")
    plain = aug.apply(images, top, left, h, w, torch.zeros(3, dtype=torch.bool))
    flipped = aug.apply(images, top, left, h, w, torch.ones(3, dtype=torch.bool))
    assert torch.allclose(flipped, plain.flip(3), atol=1e-6)


# ---------------------------------------------------------------------------- pixels
def test_identity_crop_equals_plain_resize():
    images = random_images(2, 32, 32)
    n = len(images)
    full = torch.full((n,), 32)
    zero = torch.zeros(n, dtype=torch.long)
    no_flip = torch.zeros(n, dtype=torch.bool)
    out = ga.DeviceAugment(224).apply(images, zero, zero, full, full, no_flip)
    exact = ga.DeviceAugment(224, quantize=False).apply(images, zero, zero, full, full, no_flip)
    assert out.shape == (n, 3, 224, 224) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    ref = TF.resize(images.float() / 255, [224, 224], antialias=True)
    assert (exact - ref).abs().max() < 1e-5
    assert torch.equal(out, torch.round(out * 255).div(255))  # whole 1/255 steps, as ToTensor of a uint8 image
    assert (out - exact).abs().max() <= 0.5 / 255 + 1e-6
    for k in range(n):
        ref = TF.to_tensor(pil(images, k).resize((224, 224), Image.BILINEAR))
        assert (out[k] - ref).abs().max() <= PIL_TOL


@pytest.mark.parametrize("shape, size", [((32, 32), 224), ((120, 90), 24)])  # up- and (antialiased) downsampling
def test_sampled_crops_match_torchvisions_pil_pipeline(shape, size):
    images = random_images(6, *shape, seed=1)
    aug = ga.DeviceAugment(size, generator=torch.Generator().manual_seed(3), channels_last=False)
    params = aug.params(len(images), *shape, "cpu")
    out = aug.apply(images, *params)
    assert params[4].any() and not params[4].all()
    assert out.is_contiguous()
    for k, (top, left, h, w, flip) in enumerate(zip(*(p.tolist() for p in params))):
        img = TF.resized_crop(pil(images, k), top, left, h, w, [size, size])
        ref = TF.to_tensor(TF.hflip(img) if flip else img)
        assert (out[k] - ref).abs().max() <= PIL_TOL, k


@pytest.mark.parametrize("shape", [(32, 32), (40, 30), (30, 44)])
def test_eval_resize_matches_torchvision(shape):
    images = random_images(2, *shape, seed=2)
    out = ga.DeviceEvalResize(224, 256)(images)
    pipeline = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])
    for k in range(len(images)):
        assert (out[k] - pipeline(pil(images, k))).abs().max() <= PIL_TOL


def test_augment_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        ga.DeviceAugment(8)(torch.rand(2, 3, 8, 8))


# ---------------------------------------------------------------------------- batches
def test_device_batches_order_is_a_function_of_seed_and_epoch():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()
    labels = torch.arange(10) * 7

    def epoch_order(seed, epoch):
        batches = ga.DeviceBatches(images, labels, 4, shuffle=True, seed=seed)
        batches.set_epoch(epoch)
        got = [(torch.round(x[:, 0, 0, 0] * 255).long(), y) for x, y in batches]
        assert [len(y) for _, y in got] == [4, 4, 2] and len(batches) == 3
        ids = torch.cat([i for i, _ in got])
        assert torch.equal(torch.cat([y for _, y in got]), ids * 7)  # labels travel with their images
        return ids

    first = epoch_order(1, 0)
    assert sorted(first.tolist()) == list(range(10))
    assert torch.equal(first, epoch_order(1, 0))
    assert not torch.equal(first, epoch_order(1, 1)) and not torch.equal(first, epoch_order(2, 0))


def test_device_batches_shards_and_drop_last():
    images, labels = torch.zeros(10, 3, 2, 2, dtype=torch.uint8), torch.arange(10)
    evals = [torch.cat([y for _, y in ga.DeviceBatches(images, labels, 3, shard=(r, 3))]) for r in range(3)]
    assert sorted(torch.cat(evals).tolist()) == list(range(10))  # evaluation: every image exactly once
    trains = [ga.DeviceBatches(images, labels, 3, shuffle=True, shard=(r, 3)) for r in range(3)]
    got = [torch.cat([y for _, y in b]) for b in trains]
    assert [len(g) for g in got] == [4, 4, 4] and set(torch.cat(got).tolist()) == set(range(10))
    assert [len(b) for b in trains] == [2, 2, 2]
    assert [len(ga.DeviceBatches(images, labels, 3, shard=(r, 3))) for r in range(3)] == [2, 1, 1]
    dropped = ga.DeviceBatches(images, labels, 4, drop_last=True)
    assert len(dropped) == 2 and [len(y) for _, y in dropped] == [4, 4]


def test_device_batches_apply_the_transform():
    images, labels = random_images(5, 32, 32), torch.arange(5)
    batches = ga.DeviceBatches(images, labels, 5, transform=ga.DeviceEvalResize(24, 28))
    (x, y), = list(batches)
    assert x.shape == (5, 3, 24, 24) and torch.equal(y, labels)
    assert torch.allclose(x, ga.DeviceEvalResize(24, 28)(images))


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_uint8_tensors_equal_the_split_images(name, request):
    root = request.getfixturevalue(f"{name}_root")
    splits = dataset.build_datasets(name, root, dataset.DataFraction(0.5), train_transform=T.ToTensor())
    images, labels = ga.uint8_tensors(splits.train)
    assert images.dtype == torch.uint8 and images.shape == (len(splits.train), 3, 32, 32)
    for k in (0, len(splits.train) - 1):
        x, y = splits.train[k]
        assert torch.equal(images[k].float() / 255, x) and int(labels[k]) == y
