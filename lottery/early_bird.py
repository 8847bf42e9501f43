"""Early-bird levels (You et al., ICLR 2020, "Drawing early-bird tickets"): a level stops training once the mask
it would prune to has stopped changing.

After each epoch of a level, the mask the level would produce now (the same global magnitude rule and rate as
at the level's end) is drawn from the current weights. The `window` newest such masks are kept; once the window
is full and every mask in it is within `threshold` of the newest (normalised Hamming distance: the fraction of
the weights the level's mask keeps on which the two disagree), the level prunes and rewinds at once. The window
travels in the checkpoint (masks bit-packed), so a run killed in the middle of a level resumes to the same
ticket.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

import pruning_utils
from pruning_utils import Mask


def distance(a: Mask, b: Mask, alive: Mask) -> float:
    """Fraction of the weights `alive` keeps on which masks `a` and `b` disagree."""
    differ = sum(int((a[k] ^ b[k]).logical_and_(alive[k]).sum()) for k in alive)
    return differ / max(sum(int(m.sum()) for m in alive.values()), 1)


@dataclass
class Watch:
    """The window of a level's candidate masks, newest last, and the distances seen (for the metrics rows)."""
    threshold: float
    window: int
    masks: list[Mask] = field(default_factory=list)

    def observe(self, candidate: Mask, alive: Mask) -> tuple[float | None, bool]:
        """Add this epoch's candidate mask: (its distance to the previous epoch's, None on a level's first epoch;
        whether the level stops now)."""
        candidate = {k: v.to(torch.bool) for k, v in candidate.items()}
        previous = distance(candidate, self.masks[-1], alive) if self.masks else None
        self.masks = (self.masks + [candidate])[-self.window:]
        full = len(self.masks) == self.window
        stop = full and all(distance(candidate, m, alive) < self.threshold for m in self.masks[:-1])
        return previous, stop

    def state_dict(self) -> list[dict]:
        """The window as bit-packed masks (weights_only-safe), for the checkpoint."""
        return [pruning_utils.pack_masks({k: v.cpu() for k, v in m.items()}) for m in self.masks]

    def load(self, packed: list[dict], device: torch.device, where: str) -> None:
        self.masks = [{k: v.to(device) for k, v in pruning_utils.unpack_masks(p, where).items()} for p in packed]
