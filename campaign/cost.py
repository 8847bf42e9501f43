"""GPU-hours of what is left, estimated from FLOP counts as the README's table (not measured): a forward pass
of ResNet-50 at 224 px is 4.1 GFLOP, forward + backward about 3x that, 150 TFLOP/s in bf16, 3x less in fp32."""
from __future__ import annotations

import functools
import os
import re

from campaign.spec import Run

GFLOP = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 4.1, "resnet101": 7.8, "resnet152": 11.5}
TRAIN_IMAGES = {"cifar10": 45000, "cifar10_2": 45000, "cifar100": 45000, "svhn": 68257}
VAL_IMAGES = {"cifar10": 5000, "cifar10_2": 5000, "cifar100": 5000, "svhn": 5000}
IMAGENET = 1281167
BF16, FP32 = 150e12, 50e12  # FLOP/s sustained on one H100-class card


@functools.cache
def driver_defaults(script: str) -> dict[str, str]:
    """`--flag value` pairs of a bash driver's argument block (the values a run gets unless overridden)."""
    out: dict[str, str] = {}
    with open(script) as f:
        for line in f:
            m = re.match(r"\s+(-{1,2}[\w-]+)\s+([^\s#\"]+)", line)
            if m:
                out[m.group(1)] = m.group(2)
    return out


def flags(run: Run) -> dict[str, str]:
    """Driver defaults, then the command's own `--flag value` pairs (argparse keeps the last value)."""
    script = next(a for a in run.command if a.endswith(".sh"))
    out = dict(driver_defaults(script))
    args = list(run.command)
    for a, b in zip(args, args[1:]):
        if a.startswith("-") and not a.startswith("---"):
            out[a] = b
    return out


def _num(v: str | None, default: float) -> float:
    try:
        return float(v) if v is not None else default
    except ValueError:
        return default


def _folder_images(root: str, split: str) -> int:
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        return 0
    return sum(len(files) for _, _, files in os.walk(folder))


def run_flop(run: Run, epochs_done: int = 0) -> float:
    """FLOP of the epochs of `run` not done yet (training with its attack, validation with the test attack)."""
    f = flags(run)
    arch = f.get("--arch", f.get("-a", "resnet50"))
    size = _num(f.get("--image-size"), 224)
    per_pass = 3 * GFLOP.get(arch, 4.1) * 1e9 * (size / 224) ** 2
    if run.kind == "imp":
        data = run.command[4]
        images = _folder_images(data, "train") or IMAGENET
        epochs = _num(f.get("--epochs"), 570)
        passes = 1 + (_num(f.get("--train_step"), 3) if run.mode == "adv" else 0)
        return images * max(0.0, epochs - epochs_done) * passes * per_pass
    data = f.get("--data", "")
    n = TRAIN_IMAGES.get(run.dataset) or _folder_images(data, "train")
    n_val = VAL_IMAGES.get(run.dataset) or _folder_images(data, "val") or _folder_images(data, "validation")
    n *= _num(f.get("--data_number"), 1)
    epochs = _num(f.get("--epochs"), 100)
    steps = _num(f.get("--train_step"), 10) if run.mode == "adv" else 0
    test_steps = _num(f.get("--test_step"), 20)
    eval_epochs = max(0.0, epochs - max(_num(f.get("--eval_from"), 0), epochs_done))
    train = n * max(0.0, epochs - epochs_done) * (1 + steps)
    val = n_val * eval_epochs * (1 + test_steps)
    return (train + val) * per_pass


def gpu_hours(flop: float, amp: bool = True) -> float:
    return flop / (BF16 if amp else FP32) / 3600
