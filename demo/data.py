"""The demo's built-in data: two small, learnable, deterministic texture tasks written as ImageFolder PNGs.

`pretrain` (6 classes) stands in for ImageNet; `downstream` (4 classes, other textures built from the same
primitives) stands in for CIFAR. Textures survive random-resized crops and horizontal flips, so the real
ImageNet-style transforms can be used unchanged at 32 px.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

SIZE = 32
PRETRAIN = ("hstripes", "vstripes", "checker", "dots", "rings", "cross")
DOWNSTREAM = ("grid", "hwide", "vwide", "blobs")


def _grid(rng: np.random.Generator):
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    return yy + rng.uniform(0, SIZE), xx + rng.uniform(0, SIZE)


def _texture(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A [SIZE, SIZE] pattern in [0, 1]."""
    y, x = _grid(rng)
    f = rng.uniform(0.55, 0.8)  # cycles per pixel * 2pi, high enough to survive crops
    wide = f / 2.5
    if kind == "hstripes":
        p = np.sin(f * y)
    elif kind == "vstripes":
        p = np.sin(f * x)
    elif kind == "checker":
        p = np.sin(f * x) * np.sin(f * y)
    elif kind == "dots":
        p = (np.sin(f * x) + np.sin(f * y)) - 1.0
    elif kind == "rings":
        cy, cx = rng.uniform(0, SIZE, 2)
        p = np.sin(f * np.hypot(y - cy - y.min(), x - cx - x.min()))
    elif kind == "cross":
        p = np.sin(f * (x + y) / 1.4) * np.sin(f * (x - y) / 1.4)
    elif kind == "grid":
        p = np.maximum(np.sin(f * x), np.sin(f * y))
    elif kind == "hwide":
        p = np.sin(wide * y)
    elif kind == "vwide":
        p = np.sin(wide * x)
    elif kind == "blobs":
        p = np.sin(wide * x) * np.sin(wide * y)
    else:
        raise ValueError(kind)
    p = (p - p.min()) / max(float(p.max() - p.min()), 1e-6)
    return p


def _image(kind: str, rng: np.random.Generator) -> np.ndarray:
    p = _texture(kind, rng)[..., None]
    # random colours with a contrast well above the demo's 8/255 attack budget
    base, d = rng.uniform(0.3, 0.7, 3), rng.uniform(0.2, 0.3) * rng.choice([-1.0, 1.0])
    img = p * (base + d) + (1 - p) * (base - d) + rng.normal(0, 0.04, (SIZE, SIZE, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_task(root: str, classes: tuple[str, ...], counts: dict[str, int], seed: int) -> str:
    """Write root/<split>/<class>/<i>.png for each split in `counts`; skips work if already complete."""
    marker = os.path.join(root, ".complete")
    if os.path.exists(marker):
        return root
    for s_i, (split, n) in enumerate(sorted(counts.items())):
        for c_i, cls in enumerate(classes):
            folder = os.path.join(root, split, cls)
            os.makedirs(folder, exist_ok=True)
            rng = np.random.default_rng([seed, s_i, c_i])
            for i in range(n):
                Image.fromarray(_image(cls, rng)).save(os.path.join(folder, f"{i:04d}.png"))
    with open(marker, "w") as f:
        f.write("ok\n")
    return root


def make_demo_data(root: str, *, scale: float = 1.0, seed: int = 0, test: int | None = None) -> tuple[str, str]:
    """Both tasks under root/; `scale` shrinks the image counts (tests use a small scale); `test` sets the
    downstream test images per class (default: 30, scaled)."""
    n = lambda k: max(4, int(k * scale))  # noqa: E731
    pre = write_task(os.path.join(root, "pretrain"), PRETRAIN, {"train": n(80), "val": n(24)}, seed)
    down = write_task(os.path.join(root, "downstream"), DOWNSTREAM,
                      {"train": n(60), "val": n(20), "test": test or n(30)}, seed + 1)
    return pre, down
