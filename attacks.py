"""L-inf PGD and FGSM with random start in [0, 1] pixel space, bit-identical to advertorch 0.2.3 given the same
loss (default: the original's mean cross-entropy); the attack flags of both stages and their eps units.
Attacks never change `model.training` (the caller sets it; pass an unwrapped model, DDP's `.module`)."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

import torch
from torch.nn import functional as F

from infra.errors import ConfigError, UserError
from infra.flags import Flag

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _summed_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


# The attack losses a run can choose (--attack-loss). "mean" is what the original passes to advertorch in A-IMP
# and transfer; "sum" (advertorch's default, and ours before it was recorded) has the same gradient sign in exact
# arithmetic, but not in floating point: at batch sizes that are not powers of two the batches drift apart.
LOSSES: dict[str, LossFn] = {"mean": F.cross_entropy, "sum": _summed_cross_entropy}
FGSM_STEP = 1.25  # FGSM-RS's step size in units of eps ("fast" adversarial training, Wong et al. 2020)

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


def fraction_text(value: float) -> str:
    """How a user writes `value` on the command line: 8/255, 16/765, or the plain number."""
    for den in (255, 765):
        if abs(value * den - round(value * den)) < 1e-9:
            return f"{round(value * den)}/{den}"
    return f"{value:g}"


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
    """FGSM with random start ("fast" adversarial training): one step of `alpha`, by default FGSM_STEP * eps."""
    return PGD(eps, AttackConfig("fgsm", eps, alpha, 1).step_size, steps=1, random_start=True)


# ---------------------------------------------------------------------------------------------
# Config -> attack.


@dataclass(frozen=True)
class AttackConfig:
    kind: Literal["pgd", "fgsm"]
    eps: float                  # fraction of the pixel range (convert flags with eps_from_flag)
    alpha: float | None         # step size, same units; None only for fgsm (FGSM_STEP * eps)
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

    @property
    def step_size(self) -> float:
        """alpha; for fgsm without one, FGSM_STEP * eps."""
        return FGSM_STEP * self.eps if self.alpha is None else self.alpha

    def describe(self) -> str:
        """One line for logs, with eps and alpha in both 1/255 units and fractions."""
        alpha = self.step_size
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
    return PGD(cfg.eps, cfg.step_size, cfg.steps, random_start=cfg.random_start, loss_fn=LOSSES[loss])


# ---------------------------------------------------------------------------------------------
# Flags -> config, the same for both stages.


@dataclass(frozen=True)
class AttackFlags:
    """The flags of one attack, --<prefix>_eps/_step/_gamma (with `kinds`, also --attack pgd|fgsm; with
    `randinit`, the original IMP's --train_randinit), and their one conversion into an `AttackConfig`. fgsm is
    one step of FGSM_STEP * eps: the step flags apply to pgd only (so the scripts' pgd values stay harmless)."""
    prefix: str                 # "train" or "test"
    steps: int                  # pgd's defaults
    gamma: float
    eps: float = 8 / 255
    kinds: bool = False
    randinit: bool = False

    def flags(self) -> tuple[Flag, ...]:
        p, name = f"--{self.prefix}", self.prefix
        out = [Flag((f"{p}_eps",), f"eps (default: {fraction_text(self.eps)})", type=parse_fraction,
                    dest=f"{name}_eps", default=self.eps, metavar="EPS"),
               Flag((f"{p}_step",), f"PGD steps (default: {self.steps})", type=int, dest=f"{name}_step",
                    default=self.steps, metavar="N"),
               Flag((f"{p}_gamma",), f"PGD step size (default: {fraction_text(self.gamma)})", type=parse_fraction,
                    dest=f"{name}_gamma", default=self.gamma, metavar="ALPHA")]
        if self.kinds:
            out.insert(0, Flag(("--attack",), f"pgd: {p}_step steps of {p}_gamma; fgsm: one step of "
                               f"{FGSM_STEP:g} * eps from a random start ('fast' adversarial training)",
                               choices=("pgd", "fgsm"), dest="attack_kind", default="pgd"))
        if self.randinit:
            out.append(Flag(("--train_randinit",), "turn the attack's random start OFF (the original's flag: random "
                            "start is on by default and passing this flag disables it)", action="store_false",
                            dest="train_randinit", default=True))
        return tuple(out)

    def build(self, values: Mapping[str, Any]) -> AttackConfig:
        """The attack of the parsed flags, eps and step sizes checked in the flags' units."""
        p, name = f"--{self.prefix}", self.prefix
        eps = eps_from_flag(values[f"{name}_eps"], flag=f"{p}_eps")
        steps, gamma = values[f"{name}_step"], eps_from_flag(values[f"{name}_gamma"], flag=f"{p}_gamma")
        if steps < 1:
            raise ConfigError(f"{p}_step {steps} must be at least 1")
        random_start = values.get(f"{name}_randinit", True)
        if self.kinds and values["attack_kind"] == "fgsm":
            return AttackConfig("fgsm", eps, None, 1, random_start)
        return AttackConfig("pgd", eps, gamma, steps, random_start)

    def default(self) -> AttackConfig:
        """The attack of the flags' defaults, pgd."""
        return AttackConfig("pgd", self.eps, self.gamma, self.steps)
