"""Do the fast paths learn as well? Adversarial training of the same 80% ticket, ours (training/engine.py: masks without
hooks, input-gradient-only PGD, channels_last, fused SGD, the device-side augmentation), ours reading the
original's PIL loader ("ours+pil": the step's fast paths alone) and the original's way (benchmarks/baseline.py:
torch-prune hooks, advertorch's PGD loop, NCHW, PIL RandomResizedCrop + flip per image), over several seeds;
all are tested the same way (SA and PGD-10 RA on held-out images).

    python -m benchmarks.accuracy            # resnet_tiny, 10 epochs, 3 seeds: about 3 minutes on 2 cores
    python -m benchmarks.accuracy --seeds 12 # what BENCHMARKS.md reports
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

import benchmarks.baseline as base
from training import engine
from infra import errors
from transfer import pipeline
import models
import pruning_utils
from attacks import PGD

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@dataclass(frozen=True)
class AccuracyConfig:
    epochs: int = 10
    seeds: tuple[int, ...] = (0, 1, 2)
    train_images: int = 2000
    test_images: int = 1000
    batch: int = 64
    lr: float = 0.05
    eps: float = 8 / 255
    train_steps: int = 3
    test_steps: int = 10
    sparsity: float = 0.8


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """10 classes of 32x32 uint8 RGB images (HWC): a class colour and a class stripe orientation under noise,
    close enough that an 8/255 attack moves accuracy."""
    rng = np.random.default_rng(seed)
    fixed = np.random.default_rng(1234)
    palette = 0.3 + 0.4 * fixed.random((10, 3))
    angle = np.linspace(0, np.pi, 10, endpoint=False)
    labels = rng.integers(0, 10, n)
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    stripes = np.sin(2 * np.pi * 4 * (np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy))
    noise = 0.2 * rng.standard_normal((n, 32, 32, 3))
    img = palette[labels][:, None, None, :] + 0.12 * stripes[labels][..., None] + noise
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), labels


def ticket(seed: int, sparsity: float):
    torch.manual_seed(seed)
    model = models.build("resnet_tiny", 10, mean=MEAN, std=STD)
    mask = pruning_utils.magnitude_prune(model, pruning_utils.full_mask(model), sparsity)
    pruning_utils.apply_mask(model, mask)
    return model, mask


def cosine(opt: torch.optim.Optimizer, epochs: int):
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)


def train_ours(cfg: AccuracyConfig, seed: int, data, targets, *, device_pipeline: bool = True) -> torch.nn.Module:
    """Our step; with `device_pipeline` False it reads the original's PIL loader (isolates the step's fast paths)."""
    model, mask = ticket(seed, cfg.sparsity)
    model.to(memory_format=torch.channels_last)
    if device_pipeline:
        images = torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()
        batches = pipeline.DeviceBatches(images, torch.from_numpy(targets), cfg.batch, shuffle=True, seed=seed,
                                            drop_last=True, transform=pipeline.DeviceAugment(32))
    else:
        batches = base.pil_loader(data, targets.tolist(), cfg.batch, 32, num_workers=0,
                                  generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4, fused=True)
    attack, schedule = PGD(cfg.eps, 2 / 255, cfg.train_steps), cosine(opt, cfg.epochs)
    for epoch in range(cfg.epochs):
        if device_pipeline:
            batches.set_epoch(epoch)
        engine.train_one_epoch(model, batches, opt, engine.Step(channels_last=True, attack=attack, mask=mask,
                                                                show_progress=False), epoch=epoch)
        schedule.step()
    return model


def train_ours_pil(cfg: AccuracyConfig, seed: int, data, targets) -> torch.nn.Module:
    return train_ours(cfg, seed, data, targets, device_pipeline=False)


def train_baseline(cfg: AccuracyConfig, seed: int, data, targets) -> torch.nn.Module:
    model, mask = ticket(seed, cfg.sparsity)
    net = base.build_model("resnet_tiny", 10, mask, model.state_dict(), MEAN, STD)
    loader = base.pil_loader(data, targets.tolist(), cfg.batch, 32, num_workers=0,
                             generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
    attack, schedule = dict(eps=cfg.eps, alpha=2 / 255, steps=cfg.train_steps), cosine(opt, cfg.epochs)
    for _ in range(cfg.epochs):
        for x, y in loader:
            base.train_step(net, opt, x, y, attack)
        schedule.step()
    return net


def test(cfg: AccuracyConfig, model: torch.nn.Module, data, targets) -> tuple[float, float]:
    images = torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()
    batches = pipeline.DeviceBatches(images, torch.from_numpy(targets), 250)
    sa = engine.evaluate(model, batches, engine.Step(show_progress=False))["top1"]
    ra = engine.evaluate(model, batches, engine.Step(attack=PGD(cfg.eps, 2 / 255, cfg.test_steps),
                                                     show_progress=False))["top1"]
    return sa, ra


def run(cfg: AccuracyConfig, out=None) -> dict[str, list[tuple[float, float]]]:
    out = out or sys.stdout
    train, test_set = make_data(cfg.train_images, 0), make_data(cfg.test_images, 1)
    arms = (("ours", train_ours), ("ours+pil", train_ours_pil), ("baseline", train_baseline))
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in arms}
    for seed in cfg.seeds:
        for name, fn in arms:
            start = time.time()
            sa, ra = test(cfg, fn(cfg, seed, *train), *test_set)
            results[name].append((sa, ra))
            print(f"seed {seed} {name:9}: SA {sa:5.1f}  RA {ra:5.1f}  ({time.time() - start:.0f}s)", file=out,
                  flush=True)
    for name, got in results.items():
        sa, ra = [g[0] for g in got], [g[1] for g in got]
        spread = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        print(f"{name:9}: SA {statistics.mean(sa):5.1f} +- {spread(sa):.1f}   RA {statistics.mean(ra):5.1f} "
              f"+- {spread(ra):.1f}   (mean +- sd over {len(got)} seeds)", file=out)
    return results


def main(argv: list[str] | None = None) -> int:
    p = errors.OneLineParser(description="Accuracy of the fast paths against the original's way")
    p.add_argument("--epochs", type=int, default=AccuracyConfig.epochs)
    p.add_argument("--seeds", type=int, default=3, help="number of seeds")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ...")
    p.add_argument("--train-images", type=int, default=AccuracyConfig.train_images)
    args = p.parse_args(argv)
    if args.epochs < 1 or args.seeds < 1 or args.train_images < 64:
        raise errors.UserError("--epochs and --seeds must be >= 1 and --train-images >= 64")
    seeds = tuple(range(args.first_seed, args.first_seed + args.seeds))
    run(AccuracyConfig(epochs=args.epochs, seeds=seeds, train_images=args.train_images))
    return 0


if __name__ == "__main__":
    errors.run_cli(main)
