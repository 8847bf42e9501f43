"""The pruning criteria, declared once: each one's name (the --prune-method value), how its tickets' family is
named, whether its masks are watched while a level trains (mask_distance, --early-bird), and its selection. The
flags, their help, the levels loop, the family names and the early-bird check all read `CRITERIA`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

import pruning_utils
from pruning_utils import Mask

Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass(frozen=True)
class Context:
    """What a selection may use besides the model, the mask and the rate. `generator` is seeded by (--seed,
    level) alone, so a random rule draws the same mask whenever the level is pruned again (a resume, another
    rank). `batches`, for rules that need data (gradients, activations), returns an iterable of (images,
    labels) batches of the run's training data, on the CPU, as the training loader yields them for the next
    epoch (rank 0's share when several processes train); the run always gives it (calling it starts the
    loader), `levels.prune` called without it gives None."""
    generator: torch.Generator
    batches: Batches | None = None


Select = Callable[[nn.Module, Mask, float, Context], Mask]


@dataclass(frozen=True)
class Criterion:
    """A pruning rule. `select(model, mask, rate, context)` returns the new mask: `rate` of the weights `mask`
    keeps removed (the Conv2d weights, `pruning_utils.prunable_names`), every pruned weight left pruned; it must
    not change the model. `family_suffix` is appended to the ticket family (imp, aimp, omp... ; None: "-<name>").
    `early_bird`: its masks follow the trained weights, so each epoch's candidate mask is compared with the
    previous one (the metrics rows' mask_distance) and --early-bird may stop a level on them."""
    name: str
    select: Select
    help: str
    family_suffix: str | None = None
    early_bird: bool = False

    @property
    def suffix(self) -> str:
        return f"-{self.name}" if self.family_suffix is None else self.family_suffix


CRITERIA: dict[str, Criterion] = {}


def register(criterion: Criterion) -> Criterion:
    """Add a criterion: --prune-method accepts its name, --help lists it, its tickets carry its family suffix."""
    if criterion.name in CRITERIA:
        raise ValueError(f"a pruning criterion named {criterion.name!r} is registered already")
    if not criterion.name or criterion.name.startswith("-") or any(ch.isspace() for ch in criterion.name):
        raise ValueError(f"pruning criterion name {criterion.name!r}: a word, e.g. 'magnitude'")
    CRITERIA[criterion.name] = criterion
    return criterion


def get(name: str) -> Criterion:
    """The criterion `name`; a ValueError naming the known ones when there is none."""
    if name not in CRITERIA:
        raise ValueError(f"no pruning criterion named {name!r}: the known ones are {', '.join(CRITERIA)}")
    return CRITERIA[name]


def help_text() -> str:
    """--prune-method's help: every registered criterion with its own line of help, as --help is printed."""
    return "; ".join(f"{c.name}: {c.help}" for c in CRITERIA.values())


def watched() -> list[str]:
    """The criteria whose masks follow the trained weights (mask_distance, --early-bird)."""
    return [c.name for c in CRITERIA.values() if c.early_bird]


def family_suffix(name: str) -> str:
    """The family suffix of the criterion `name`; "-<name>" for one not registered in this process (e.g. the
    config of a checkpoint made with a criterion registered elsewhere)."""
    return CRITERIA[name].suffix if name in CRITERIA else f"-{name}"


register(Criterion("magnitude", lambda model, mask, rate, ctx: pruning_utils.magnitude_prune(model, mask, rate),
                   "global magnitude pruning, smallest |w| over all conv layers at once", family_suffix="",
                   early_bird=True))
register(Criterion("random", lambda model, mask, rate, ctx: pruning_utils.random_prune(model, mask, rate,
                                                                                         ctx.generator),
                   "random pruning over all conv layers at once (the paper's baseline)", family_suffix="-random"))
