"""Robust validation while A-IMP finds tickets (--robust-val K): each epoch, PGD-K accuracy and clean accuracy on
a fixed slice of the validation split, through the one evaluation loop, so that a collapse of FGSM-RS training
(catastrophic overfitting, Wong et al. 2020) shows while tickets are found, not first after transfer."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from attacks import LOSSES, PGD
from infra.distributed import DistEnv
from training import engine, runner

STEP = 2.5  # the attack's step size in units of eps / K (Madry et al. 2018): its K steps can cross the eps-ball


def slice_indices(size: int, images: int) -> list[int]:
    """`images` indices spread evenly over a split of `size` (ImageFolder orders by class: every class is in the
    slice), all of them when the split is smaller."""
    count = min(size, images)
    return [i * size // count for i in range(count)]


def attack_of(eps: float, steps: int, loss: str) -> PGD:
    """PGD-`steps` at the run's training eps, step STEP * eps / steps, random start, on the run's attack loss."""
    return PGD(eps, STEP * eps / steps, steps, random_start=True, loss_fn=LOSSES[loss])


def describe(attack: PGD, images: int) -> str:
    return f"PGD-{attack.steps} eps={attack.eps * 255:.4g}/255 step={attack.alpha * 255:.4g}/255 on {images} val images"


@dataclass(frozen=True)
class RobustVal:
    """The slice's loader and the attack; `measure` gives one epoch's numbers."""
    loader: DataLoader
    attack: PGD
    images: int

    def measure(self, model: torch.nn.Module, step: engine.Step) -> tuple[dict, list[dict]]:
        """({"val_ra", "val_slice_sa", "val_ra_images"} for the metrics row, the two passes' stats for the
        ledger): the slice's accuracy against the attack, and without it."""
        clean = engine.evaluate(model, self.loader, replace(step, attack=None), desc="val slice")
        robust = engine.evaluate(model, self.loader, replace(step, attack=self.attack),
                                 desc=f"val slice PGD-{self.attack.steps}")
        return {"val_ra": robust["top1"], "val_slice_sa": clean["top1"], "val_ra_images": robust["n"]}, [clean, robust]


def build(steps: int | None, images: int, eps: float, loss: str, val: Dataset, batch: int, env: DistEnv,
          workers: int) -> RobustVal | None:
    """The robust validation of --robust-val `steps` on `images` of `val` (None without the flag)."""
    if steps is None:
        return None
    chosen = Subset(val, slice_indices(len(val), images))
    loader = runner.eval_loader(chosen, batch, env=env, workers=workers)
    return RobustVal(loader, attack_of(eps, steps, loss), len(chosen))


def collapsed(previous: float | None, now: float) -> bool:
    """Whether robust accuracy fell to under half of the previous epoch's (from at least 10%): the sign of
    catastrophic overfitting, which the log warns about."""
    return previous is not None and previous >= 10 and now < previous / 2


def summary(rows: list[dict], description: str) -> dict | None:
    """A level's robust validation from its metrics rows (None when it had none): the last epoch's numbers, the
    lowest robust accuracy of the level, and the attack."""
    rows = [r for r in rows if isinstance(r.get("val_ra"), (int, float))]
    if not rows:
        return None
    last = rows[-1]
    return {"val_ra": last["val_ra"], "val_slice_sa": last.get("val_slice_sa"), "min_val_ra":
            min(r["val_ra"] for r in rows), "images": last.get("val_ra_images"), "attack": description}
