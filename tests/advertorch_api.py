"""advertorch 0.2.3's `LinfPGDAttack` interface on top of `attacks.PGD`, for the tests that compare our attack
with advertorch's call for call (the library itself takes an `attacks.AttackConfig`)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from attacks import PGD, LossFn


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
