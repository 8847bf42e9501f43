"""What the benchmark runs: one configuration, and for each (section, variant) a closure doing one step,
ours through training/engine.py / attacks.py / pruning_utils.py, the baseline through bench_baseline.py; plus the
input pipelines (the original's PIL loader, ours on the host, ours on the device).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

import benchmarks.baseline as base
from training import engine
from transfer import pipeline
import dataset
import models
from training import optimizer as optimizer_lib
import pruning_utils
from training import runner
from attacks import FGSM_STEP, PGD, fgsm_rs
from infra.distributed import DistEnv

EPS = 8 / 255
# (section, variant), the first variant of a section its reference: "ours-plain" is ours without the
# numerics/layout flags (fp32, NCHW), i.e. what channels_last / --amp add on this device; the "ticket" section
# holds ours against "ours-dense", the same step without a mask (the ticket's overhead).
SECTIONS: dict[str, tuple[str, ...]] = {
    "train": ("baseline", "ours", "ours-plain"),
    "ticket": ("ours-dense", "ours"),
    "fgsm": ("baseline", "ours"),
    "eval": ("baseline", "ours"),
}
# On CUDA the training section also runs the baseline with TF32 off: PyTorch 1.5, the original's, had no TF32, so its
# fp32 convolutions ran at full fp32 on the cards that have TF32 units (today's default allows TF32 in cuDNN)
NO_TF32 = "baseline-notf32"


def variants(section: str, device: torch.device) -> tuple[str, ...]:
    """The variants `section` times on `device`."""
    extra = (NO_TF32,) if section == "train" and device.type == "cuda" else ()
    return SECTIONS[section] + extra


@dataclass(frozen=True)
class BenchConfig:
    device: str = "cpu"
    arch: str = "resnet50"
    num_classes: int = 1000
    size: int = 32                  # training / evaluation image side
    batch: int = 64                 # training batch (A-IMP: PGD-k training)
    eval_batch: int = 64            # PGD-20 evaluation batch
    train_steps: int = 3            # PGD-k of the training step (A-IMP: 3)
    train_alpha: float = 16 / (3 * 255)
    eval_steps: int = 20
    eval_alpha: float = 2 / 255
    sparsity: float = 0.8           # fraction of conv weights pruned in the ticket
    amp: str | None = None          # "bf16" | "fp16" for ours (CUDA); the baseline is always fp32
    channels_last: bool = True
    compile: bool = False
    rounds: int = 5                 # timed rounds of the training sections (each round runs every variant once)
    eval_rounds: int = 3
    warmup: int = 1
    pipeline_size: int = 224        # CIFAR-sized images are upsampled to this side downstream
    pipeline_batch: int = 128
    pipeline_batches: int = 6       # batches per timed block
    pipeline_rounds: int = 3
    pipeline_images: int = 2048
    memory_batches: tuple[int, ...] = ()  # the memory sweep's training batches (default: batch/4, batch/2, batch)
    threads: int | None = None      # torch intra-op threads (None: torch's default)
    seed: int = 0

    def replace(self, **kw) -> "BenchConfig":
        return dataclasses.replace(self, **kw)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(cfg: BenchConfig, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(cfg.seed + 1)
    x = torch.rand(n, 3, cfg.size, cfg.size, generator=g)
    y = torch.randint(0, cfg.num_classes, (n,), generator=g)
    return x.to(device), y.to(device)


def _ticket(cfg: BenchConfig) -> tuple[torch.nn.Module, dict]:
    """Our model (seeded init) and its magnitude ticket at `cfg.sparsity`, the mask already applied."""
    torch.manual_seed(cfg.seed)
    model = models.build(cfg.arch, cfg.num_classes, mean=dataset.IMAGENET_MEAN, std=dataset.IMAGENET_STD)
    mask = pruning_utils.magnitude_prune(model, pruning_utils.full_mask(model), cfg.sparsity)
    pruning_utils.apply_mask(model, mask)
    return model, mask


SGD = optimizer_lib.SGDSettings(lr=5e-4, momentum=0.9, weight_decay=1e-4)  # A-IMP's


def build_step(section: str, variant: str, cfg: BenchConfig) -> Callable[[], None]:
    """A closure running one step of `section` ("train", "fgsm", "eval") the `variant` way on a fixed batch."""
    device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the original sets it too
    model, mask = _ticket(cfg)
    x, y = _batch(cfg, cfg.eval_batch if section == "eval" else cfg.batch, device)
    if section == "eval":
        attack_kw = dict(eps=EPS, alpha=cfg.eval_alpha, steps=cfg.eval_steps)
    elif section == "fgsm":
        attack_kw = dict(eps=EPS, alpha=FGSM_STEP * EPS, steps=1)
    else:
        attack_kw = dict(eps=EPS, alpha=cfg.train_alpha, steps=cfg.train_steps)

    if variant in ("baseline", NO_TF32):
        net = base.build_model(cfg.arch, cfg.num_classes, mask, model.state_dict()).to(device)
        if section == "eval":
            return lambda: base.eval_step(net, x, y, attack_kw)
        opt = torch.optim.SGD(net.parameters(), SGD.lr, momentum=SGD.momentum, weight_decay=SGD.weight_decay)

        def step() -> None:
            base.train_step(net, opt, x, y, attack_kw)
        return _without_tf32(step) if variant == NO_TF32 else step

    plain = variant == "ours-plain"
    amp, cl = (None, False) if plain else (cfg.amp, cfg.channels_last)
    if variant == "ours-dense":
        torch.manual_seed(cfg.seed)
        model, mask = models.build(cfg.arch, cfg.num_classes, mean=dataset.IMAGENET_MEAN, std=dataset.IMAGENET_STD), None
    model.to(device, memory_format=torch.channels_last if cl else torch.preserve_format)
    mask = None if mask is None else {k: v.to(device) for k, v in mask.items()}  # as the entry points hold it
    if cfg.compile and not plain:
        model.compile()
    attack = fgsm_rs(EPS) if section == "fgsm" else PGD(attack_kw["eps"], attack_kw["alpha"], attack_kw["steps"])
    batches = [(x, y)]
    run = engine.Step(DistEnv(device=device), amp=amp, channels_last=cl, attack=attack, mask=mask,
                      show_progress=False)
    if section == "eval":
        return lambda: engine.evaluate(model, batches, dataclasses.replace(run, mask=None))
    opt = optimizer_lib.make_sgd(model, SGD)  # the runs' fused SGD and GradScaler
    scaler = optimizer_lib.make_scaler(amp, device)

    def step() -> dict:
        return engine.train_one_epoch(model, batches, opt, run, scaler=scaler)
    step.model, step.mask = model, mask  # what the step trains, for the tests' checks
    return step


def _without_tf32(step: Callable[[], object]) -> Callable[[], None]:
    """`step` with TF32 off in cuDNN and cuBLAS (full fp32, as PyTorch 1.5 ran), the settings restored after."""
    def run() -> None:
        cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
        before = cudnn.allow_tf32, matmul.allow_tf32
        cudnn.allow_tf32 = matmul.allow_tf32 = False
        try:
            step()
        finally:
            cudnn.allow_tf32, matmul.allow_tf32 = before
    return run


def build_mask_ops(cfg: BenchConfig) -> Callable[[], None]:
    """What a ticket adds to a training step: `mask_grads` after backward and `apply_mask` after the step."""
    device = torch.device(cfg.device)
    model, mask = _ticket(cfg)
    model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    mask = {k: v.to(device) for k, v in mask.items()}

    def ops() -> None:
        pruning_utils.mask_grads(model, mask)
        pruning_utils.apply_mask(model, mask)
    return ops


# ---------------------------------------------------------------------------- input pipelines
def cifar_like(cfg: BenchConfig) -> tuple[np.ndarray, np.ndarray]:
    """`pipeline_images` random uint8 32x32 RGB images (HWC, as torchvision's CIFAR holds them) and labels."""
    rng = np.random.default_rng(cfg.seed)
    return (rng.integers(0, 256, (cfg.pipeline_images, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, cfg.pipeline_images))


def build_pipeline(variant: str, cfg: BenchConfig, data: np.ndarray, targets: np.ndarray) -> Callable[[], int]:
    """A closure producing `pipeline_batches` training batches on the device; returns the number of images.

    "baseline": the original's loader (PIL per image, 2 workers); "ours-host": the same PIL transforms with
    `runner.loader_settings` (a worker per core, deeper prefetch on CUDA); "ours-device": the
    uint8 images held on the device and augmented there per batch (pipeline.DeviceAugment).
    """
    device = torch.device(cfg.device)
    if variant == "ours-device":
        images = torch.from_numpy(data).permute(0, 3, 1, 2).contiguous().to(device)
        batches = pipeline.DeviceBatches(images, torch.from_numpy(targets).to(device), cfg.pipeline_batch,
                                            transform=pipeline.DeviceAugment(cfg.pipeline_size),
                                            shuffle=True, seed=cfg.seed, drop_last=True)
        state = {"epoch": 0}

        def device_block() -> int:
            state["epoch"] += 1
            batches.set_epoch(state["epoch"])
            n = 0
            for k, (x, _) in enumerate(batches):
                if k == cfg.pipeline_batches:
                    break
                n += len(x)
            _sync(device)
            return n
        return device_block

    if variant == "baseline":
        loader = base.pil_loader(data, targets, cfg.pipeline_batch, cfg.pipeline_size)
    else:
        settings = runner.loader_settings(device)  # a fresh loader per epoch, as the entry points make them
        loader = base.pil_loader(data, targets, cfg.pipeline_batch, cfg.pipeline_size, **settings)

    def loader_block() -> int:
        it = iter(loader)
        next(it)  # worker start-up is not throughput
        n = 0
        for _ in range(cfg.pipeline_batches):
            x, _ = next(it)
            n += len(x.to(device, non_blocking=True))
        _sync(device)
        del it
        return n
    return loader_block
