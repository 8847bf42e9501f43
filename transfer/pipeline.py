"""Device-side input pipeline for small uint8 datasets (CIFAR, SVHN): the images stay on the GPU as uint8 and
each batch is random-resized-cropped, flipped and resized to 224 there, with the distribution of torchvision's
PIL pipeline. Also the DataLoader settings for data that stays on the host.

    images, labels = uint8_tensors(splits.train)                      # once; then .to("cuda")
    train = DeviceBatches(images.cuda(), labels.cuda(), 128, transform=DeviceAugment(224), shuffle=True, seed=1)
    train.set_epoch(epoch); engine.train_one_epoch(model, train, ...)
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from infra.reproducibility import epoch_generator

SCALE = (0.08, 1.0)          # torchvision RandomResizedCrop defaults
RATIO = (3 / 4, 4 / 3)
ATTEMPTS = 10                # torchvision's tries before its centre-crop fallback


# ---------------------------------------------------------------------------- crop parameters
def sample_crops(n: int, height: int, width: int, *, scale: Sequence[float] = SCALE,
                 ratio: Sequence[float] = RATIO, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """(top, left, h, w) int64 tensors of n crops: torchvision's `RandomResizedCrop.get_params`, vectorised.

    Each image gets 10 attempts (area fraction uniform in `scale`, log aspect ratio uniform in log `ratio`,
    sides rounded half to even); the first attempt that fits is kept, else the same centre-crop fallback.
    """
    area = height * width
    draws = torch.rand(n, ATTEMPTS, 2, generator=generator, device=device, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * draws[..., 0])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * draws[..., 1])
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first True (0 when none)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    offsets = torch.rand(n, 2, generator=generator, device=device, dtype=torch.float64)
    top = (offsets[:, 0] * (height - h + 1)).floor().long()
    left = (offsets[:, 1] * (width - w + 1)).floor().long()
    fb_top, fb_left, fb_h, fb_w = _centre_fallback(height, width, ratio)
    none = ~fits.any(dim=1)
    top, left = top.masked_fill(none, fb_top), left.masked_fill(none, fb_left)
    h, w = h.masked_fill(none, fb_h), w.masked_fill(none, fb_w)
    return top, left, h, w


def _centre_fallback(height: int, width: int, ratio: Sequence[float]) -> tuple[int, int, int, int]:
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# ---------------------------------------------------------------------------- resampling
def resize_weights(start: torch.Tensor, length: torch.Tensor, out_size: int, full: int) -> torch.Tensor:
    """(N, out_size, full) matrices: row o holds PIL's bilinear coefficients of output pixel o when the crop
    [start, start + length) of a line of `full` pixels is resized to `out_size` (the crop-then-resize of
    torchvision's PIL path: the triangle filter is widened by the scale when shrinking, i.e. antialiased,
    and normalised over the crop's own pixels, so nothing outside the crop leaks in)."""
    start, length = start.to(torch.float64)[:, None, None], length.to(torch.float64)[:, None, None]
    step = length / out_size
    support = step.clamp(min=1.0)
    centre = (torch.arange(out_size, device=start.device, dtype=torch.float64)[None, :, None] + 0.5) * step
    local = torch.arange(full, device=start.device, dtype=torch.float64)[None, None, :] - start
    weights = (1 - ((local + 0.5 - centre) / support).abs()).clamp(min=0)
    weights = weights * ((local >= 0) & (local < length))
    return (weights / weights.sum(dim=2, keepdim=True)).float()


def resample(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, *, quantize: bool = True) -> torch.Tensor:
    """out[n, c] = rows[n] @ images[n, c] @ cols[n]^T / 255 for uint8 (N, C, H, W) images; the result is
    float (N, C, S_h, S_w) in [0, 1] in channels_last memory (two batched matmuls, no per-image work).
    `quantize` rounds to whole 1/255 steps, as PIL's uint8 output through ToTensor is."""
    n, c, height, width = images.shape
    s_h, s_w = rows.shape[1], cols.shape[1]
    x = images.permute(0, 3, 2, 1).reshape(n, width, height * c).float()          # (N, W, H*C)
    x = torch.bmm(cols.expand(n, -1, -1), x)                                      # (N, S_w, H*C)
    x = x.view(n, s_w, height, c).transpose(1, 2).reshape(n, height, s_w * c)      # (N, H, S_w*C)
    x = torch.bmm(rows.expand(n, -1, -1), x)                                      # (N, S_h, S_w*C)
    # the weights are convex, so only rounding error can leave [0, 255]: rounding removes it, else clamp
    x = (x.round_() if quantize else x.clamp_(0, 255)).div_(255)
    return x.view(n, s_h, s_w, c).permute(0, 3, 1, 2)


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


class DeviceAugment:
    """RandomResizedCrop(size, scale, ratio) + RandomHorizontalFlip(p) + ToTensor on a uint8 (N, C, H, W)
    batch, on whatever device the batch is; returns float [0, 1] in whole 1/255 steps like PIL's uint8 output
    (`quantize=False`: unrounded), in channels_last memory unless told not to."""

    def __init__(self, size: int | Sequence[int] = 224, *, scale: Sequence[float] = SCALE,
                 ratio: Sequence[float] = RATIO, flip_p: float = 0.5, generator: torch.Generator | None = None,
                 channels_last: bool = True, quantize: bool = True) -> None:
        if not 0 < scale[0] <= scale[1] or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"scale and ratio must be increasing positive pairs, got {scale}, {ratio}")
        self.size, self.scale, self.ratio = _size2(size), tuple(scale), tuple(ratio)
        self.flip_p, self.generator, self.channels_last, self.quantize = flip_p, generator, channels_last, quantize

    def __repr__(self) -> str:
        return f"DeviceAugment(size={self.size}, scale={self.scale}, ratio={self.ratio}, flip_p={self.flip_p})"

    def params(self, n: int, height: int, width: int, device) -> tuple[torch.Tensor, ...]:
        """(top, left, h, w, flip) for n images: what the PIL pipeline would draw, image by image."""
        top, left, h, w = sample_crops(n, height, width, scale=self.scale, ratio=self.ratio,
                                       generator=self.generator, device=device)
        flip = torch.rand(n, generator=self.generator, device=device) < self.flip_p
        return top, left, h, w, flip

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _check_uint8(images)
        n, _, height, width = images.shape
        top, left, h, w, flip = self.params(n, height, width, images.device)
        return self.apply(images, top, left, h, w, flip)

    def apply(self, images: torch.Tensor, top, left, h, w, flip) -> torch.Tensor:
        rows = resize_weights(top, h, self.size[0], images.shape[2])
        cols = resize_weights(left, w, self.size[1], images.shape[3])
        cols = torch.where(flip[:, None, None], cols.flip(1), cols)  # a flip after resizing reverses columns
        out = resample(images, rows, cols, quantize=self.quantize)
        return out if self.channels_last else out.contiguous()


class DeviceEvalResize:
    """Resize(resize_size) (shorter side, torchvision's rounding) + CenterCrop(size) + ToTensor on a uint8
    (N, C, H, W) batch; the same two fixed matrices for every image of a size, computed once."""

    def __init__(self, size: int = 224, resize_size: int = 256, *, channels_last: bool = True,
                 quantize: bool = True) -> None:
        if resize_size < size:
            raise ValueError(f"resize_size {resize_size} must be at least the crop size {size}")
        self.size, self.resize_size, self.channels_last, self.quantize = size, resize_size, channels_last, quantize
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return f"DeviceEvalResize(size={self.size}, resize_size={self.resize_size})"

    def _matrices(self, height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (height, width, str(device))
        if key not in self._cache:
            short, long = min(height, width), max(height, width)
            new_short, new_long = self.resize_size, int(self.resize_size * long / short)
            new_h, new_w = (new_long, new_short) if height > width else (new_short, new_long)
            zero = torch.zeros(1, device=device)
            rows = resize_weights(zero, torch.full((1,), height, device=device), new_h, height)
            cols = resize_weights(zero, torch.full((1,), width, device=device), new_w, width)
            top, left = int(round((new_h - self.size) / 2.0)), int(round((new_w - self.size) / 2.0))
            self._cache[key] = (rows[:, top:top + self.size].contiguous(), cols[:, left:left + self.size].contiguous())
        return self._cache[key]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _check_uint8(images)
        rows, cols = self._matrices(images.shape[2], images.shape[3], images.device)
        out = resample(images, rows, cols, quantize=self.quantize)
        return out if self.channels_last else out.contiguous()


def _check_uint8(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected a uint8 (N, C, H, W) batch, got {images.dtype} of shape {tuple(images.shape)}")


# the dataset table's transforms (datafiles/facts.py) this pipeline applies, with the distributions of torchvision's
# PIL path; makers: train (size, *, generator, channels_last), eval (size, resize_size, *, channels_last)
TRAIN_TRANSFORMS: dict[str, Callable[..., DeviceAugment]] = {"crop_flip": DeviceAugment}
EVAL_TRANSFORMS: dict[str, Callable[..., DeviceEvalResize]] = {"resize_crop": DeviceEvalResize}


# ---------------------------------------------------------------------------- batches on the device
class DeviceBatches:
    """(x, y) batches of a uint8 image tensor held on the device: the epoch's order is a pure function of
    (seed, epoch) (call `set_epoch`), shards over ranks like DistributedSampler (training: padded to equal
    shards) or ShardSampler (evaluation: every image exactly once); `shard` is (rank, world_size);
    `transform` turns uint8 into float."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False, shard: tuple[int, int] = (0, 1)) -> None:
        _check_uint8(images)
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        rank, world_size = shard
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        self.images, self.labels, self.batch_size = images, labels.to(images.device), batch_size
        self.transform, self.shuffle, self.seed, self.drop_last = transform, shuffle, seed, drop_last
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.images)
        if not self.shuffle:
            return torch.arange(self.rank, n, self.world_size)
        order = torch.randperm(n, generator=epoch_generator(self.seed, self.epoch))
        total = math.ceil(n / self.world_size) * self.world_size
        order = torch.cat([order, order[: total - n]]) if total > n else order
        return order[self.rank::self.world_size]

    def __len__(self) -> int:
        n = len(self.images)
        if self.world_size > 1:
            n = math.ceil(n / self.world_size) if self.shuffle else len(range(self.rank, n, self.world_size))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def batch(self, indices: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of the images at `indices` (positions in `images`) through the transform, as iteration
        makes them (e.g. AutoAttack's images of the test split, the same pixels as the PGD test's)."""
        idx = torch.as_tensor(indices, dtype=torch.long).to(self.images.device)
        x = self.images.index_select(0, idx)
        x = self.transform(x) if self.transform is not None else x.float().div_(255)
        return x, self.labels.index_select(0, idx)

    def __iter__(self):
        order = self._indices().to(self.images.device)
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for k in range(0, stop, self.batch_size):
            yield self.batch(order[k:k + self.batch_size])


def uint8_tensors(split) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of a `dataset.SplitView` over torchvision's CIFAR-10/100 or SVHN as one uint8
    (N, 3, H, W) tensor and one int64 tensor, read from the dataset's array (no PIL, no transform)."""
    base, indices = split.dataset, torch.as_tensor(list(split.indices), dtype=torch.long)
    data = getattr(base, "data", None)
    if data is None or getattr(data, "ndim", 0) != 4:
        raise ValueError(f"{type(base).__name__} holds no (N, H, W, C) / (N, C, H, W) uint8 array: the "
                         "device pipeline serves CIFAR-10/100 and SVHN only")
    images = torch.as_tensor(data)[indices]
    if images.shape[-1] == 3 and images.shape[1] != 3:  # CIFAR stores NHWC, SVHN NCHW
        images = images.permute(0, 3, 1, 2)
    labels = getattr(base, "targets", None)
    labels = labels if labels is not None else base.labels
    return images.contiguous(), torch.as_tensor(labels, dtype=torch.long)[indices]
