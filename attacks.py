"""L-inf PGD and FGSM with random start in [0, 1] pixel space, bit-identical to advertorch 0.2.3 given the same
loss (default: the original's mean cross-entropy); advertorch's `LinfPGDAttack` interface; eps-flag units.
Attacks never change `model.training` (the caller sets it; pass an unwrapped model, DDP's `.module`)."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn
from torch.nn import functional as F

from infra.errors import ConfigError, UserError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _summed_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


# The attack losses a run can choose (--attack-loss). "mean" is what the original passes to advertorch in A-IMP
# and transfer; "sum" (advertorch's default, and ours before it was recorded) has the same gradient sign in exact
# arithmetic, but not in floating point: at batch sizes that are not powers of two the batches drift apart.
LOSSES: dict[str, LossFn] = {"mean": F.cross_entropy, "sum": _summed_cross_entropy}

# ---------------------------------------------------------------------------------------------
# Units: eps and step-size flags are fractions of the [0, 1] pixel range, as in the original (8/255).


def parse_fraction(text: str) -> float:
    """argparse type for eps and step sizes: a number (0.0314) or a fraction written a/b (8/255, 16/765)."""
    try:
        if "/" in text:
            num, den = text.split("/")
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction like 8/255, got {text!r}") from None


def eps_from_flag(value: float, *, flag: str) -> float:
    """Check a command-line eps/step size, given like the original as a fraction of the [0, 1] pixel range."""
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise UserError(f"{flag} {value:g} must be a finite number >= 0")
    if value > 1:
        raise UserError(f"{flag} {value:g} is above 1: this flag takes a fraction of the pixel "
                        f"range, e.g. 8/255 = {8 / 255:.4f} (write it as 8/255)")
    return value


# ---------------------------------------------------------------------------------------------
# The attack.


class PGD:
    """L-inf projected gradient ascent on the loss, in pixel space.

    Random start: delta ~ U(-eps, eps) drawn as `uniform_(-1, 1) * eps` on a tensor shaped like x
    (advertorch's exact RNG call sequence, so the same seed gives the same start), then clamped so
    x + delta lies in [clip_min, clip_max]. Each step: delta += alpha * sign(grad), projected onto the
    eps-ball and the pixel range. The default loss is the original's mean cross-entropy. `loss_fn` may be
    any loss (advertorch's sum, or a scaled one for a caller that attacks under fp16 autocast, where the
    mean's small input gradients can underflow to a zero sign); only the gradient's sign is used.
    """

    def __init__(self, eps: float, alpha: float, steps: int, random_start: bool = True,
                 clip_min: float = 0.0, clip_max: float = 1.0, loss_fn: LossFn | None = None):
        if not eps >= 0 or not alpha >= 0 or int(steps) != steps or steps < 0:
            raise ValueError(f"PGD needs eps >= 0, alpha >= 0 and an integer steps >= 0, "
                             f"got eps={eps}, alpha={alpha}, steps={steps}")
        if not clip_min < clip_max:
            raise ValueError(f"PGD needs clip_min < clip_max, got {clip_min}, {clip_max}")
        self.eps, self.alpha, self.steps = float(eps), float(alpha), int(steps)
        self.random_start = random_start
        self.clip_min, self.clip_max = float(clip_min), float(clip_max)
        self.loss_fn = loss_fn if loss_fn is not None else LOSSES["mean"]

    def __repr__(self) -> str:
        return (f"PGD(eps={self.eps:.6g}, alpha={self.alpha:.6g}, steps={self.steps}, "
                f"random_start={self.random_start})")

    def __call__(self, model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 y: torch.Tensor) -> torch.Tensor:
        """Return detached adversarial examples with x's dtype and memory format."""
        if not x.is_floating_point():
            raise ValueError(f"PGD needs a floating-point image batch in [0, 1], got {x.dtype}")
        # Evaluation may call us under no_grad or inference_mode; the input gradient still needs autograd.
        with torch.inference_mode(False), torch.enable_grad():
            # Inference tensors cannot be saved for backward (the loss saves y): normal copies fix that.
            x = x.clone() if x.is_inference() else x.detach()
            y = y.clone() if y.is_inference() else y
            delta = self._start(x)
            delta.requires_grad_(True)
            step = torch.empty_like(delta)
            for _ in range(self.steps):
                loss = self.loss_fn(model(x + delta), y)
                # Gradient w.r.t. the input only: parameters' .grad stay untouched, no weight grads computed.
                (grad,) = torch.autograd.grad(loss, delta)
                with torch.no_grad():
                    delta.add_(torch.sign(grad, out=step).mul_(self.alpha))
                    self._project_(delta, x)
            with torch.no_grad():
                return (x + delta).clamp_(self.clip_min, self.clip_max)

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        if not self.random_start:
            return torch.zeros_like(x)
        delta = torch.empty_like(x).uniform_(-1, 1).mul_(self.eps)
        return delta.add_(x).clamp_(self.clip_min, self.clip_max).sub_(x)

    def _project_(self, delta: torch.Tensor, x: torch.Tensor) -> None:
        """In place: onto the eps-ball, then so that x + delta lies in the pixel range (advertorch's order)."""
        delta.clamp_(-self.eps, self.eps)
        delta.add_(x).clamp_(self.clip_min, self.clip_max).sub_(x)


def fgsm_rs(eps: float, alpha: float | None = None) -> PGD:
    """FGSM with random start ("fast" adversarial training, Wong et al. 2020): one step of 1.25 * eps."""
    return PGD(eps, 1.25 * eps if alpha is None else alpha, steps=1, random_start=True)


# ---------------------------------------------------------------------------------------------
# Config -> attack.


@dataclass(frozen=True)
class AttackConfig:
    kind: Literal["pgd", "fgsm"]
    eps: float                  # fraction of the pixel range (convert flags with eps_from_flag)
    alpha: float | None         # step size, same units; None only for fgsm (1.25 * eps)
    steps: int                  # pgd: number of steps; fgsm: must be 1
    random_start: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("pgd", "fgsm"):
            raise ConfigError(f"attack kind must be 'pgd' or 'fgsm', got {self.kind!r}")
        if not 0 <= self.eps <= 1:
            raise ConfigError(f"attack eps {self.eps} is outside [0, 1] (a fraction of the pixel range)")
        if self.alpha is None and self.kind == "pgd":
            raise ConfigError("a pgd attack needs a step size alpha")
        if self.alpha is not None and not 0 <= self.alpha <= 1:
            raise ConfigError(f"attack step size {self.alpha} is outside [0, 1] (a fraction of the pixel range)")
        if self.kind == "pgd" and (int(self.steps) != self.steps or self.steps < 1):
            raise ConfigError(f"a pgd attack needs an integer number of steps >= 1, got {self.steps}")
        if self.kind == "fgsm" and self.steps != 1:
            raise ConfigError(f"an fgsm attack takes exactly 1 step, got {self.steps}")

    def describe(self) -> str:
        """One line for logs, with eps and alpha in both 1/255 units and fractions."""
        alpha = 1.25 * self.eps if self.alpha is None else self.alpha
        name = f"PGD-{self.steps}" if self.kind == "pgd" else "FGSM"
        start = "random start" if self.random_start else "no random start"
        return (f"{name} L-inf eps={self.eps * 255:.4g}/255 ({self.eps:.5f}) "
                f"alpha={alpha * 255:.4g}/255 ({alpha:.5f}) {start}")


def build_attack(cfg: AttackConfig | None, loss: str = "mean") -> PGD | None:
    """The attack a config describes, on the named loss of `LOSSES`; None for clean training/evaluation."""
    if loss not in LOSSES:
        raise ConfigError(f"--attack-loss {loss!r}: choose one of {', '.join(LOSSES)}")
    if cfg is None:
        return None
    alpha = 1.25 * cfg.eps if cfg.alpha is None else cfg.alpha
    return PGD(cfg.eps, alpha, cfg.steps, random_start=cfg.random_start, loss_fn=LOSSES[loss])


# ---------------------------------------------------------------------------------------------
# advertorch-compatible front end for code ported from the original.


class LinfPGDAttack:
    """advertorch 0.2.3's `LinfPGDAttack` interface (scalar eps only) on top of `PGD`.

    Its defaults are advertorch's, the summed loss included: pass `loss_fn=F.cross_entropy` as the original
    did to get its attack. Unlike advertorch it leaves parameters' `.grad` untouched. Attributes are read at each
    `perturb`, so editing them after construction works as in advertorch.
    """

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], loss_fn: LossFn | None = None,
                 eps: float = 0.3, nb_iter: int = 40, eps_iter: float = 0.01, rand_init: bool = True,
                 clip_min: float = 0.0, clip_max: float = 1.0, targeted: bool = False):
        self.predict = model
        self.loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss(reduction="sum")  # advertorch's
        self.eps, self.nb_iter, self.eps_iter = eps, nb_iter, eps_iter
        self.rand_init, self.clip_min, self.clip_max, self.targeted = rand_init, clip_min, clip_max, targeted

    def perturb(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Adversarial x; y None means the model's predictions (untargeted only), like advertorch."""
        if y is None:
            if self.targeted:
                raise ValueError("a targeted attack needs the target labels y")
            with torch.no_grad():
                y = torch.max(self.predict(x), dim=1)[1]
        loss_fn = self.loss_fn
        if self.targeted:
            def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                return -self.loss_fn(out, target)
        attack = PGD(self.eps, self.eps_iter, self.nb_iter, random_start=self.rand_init,
                     clip_min=self.clip_min, clip_max=self.clip_max, loss_fn=loss_fn)
        return attack(self.predict, x, y)

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.perturb(x, y)
