"""Early-bird levels (You et al., ICLR 2020, "Drawing early-bird tickets"): a level stops training once the mask
it would prune to has stopped changing; and the mask distance every IMP run records each epoch.

After each epoch of a level, the mask the level would produce now (the same global magnitude rule and rate as
at the level's end) is drawn from the current weights, and its distance to the previous epoch's goes into the
epoch's metrics row (`mask_distance`). With --early-bird D the `window` newest such masks are kept; once the
window is full and every mask in it is within D of the newest, the level prunes and rewinds at once. The window
travels in the checkpoint (masks bit-packed), so a run killed in the middle of a level resumes to the same
ticket. How this differs from the paper and its code: docs/EARLY_BIRD.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lottery.shared_ticket import pack_masks, unpack_masks

Mask = dict[str, torch.Tensor]


def distance(a: Mask, b: Mask, alive: Mask) -> float:
    """How differently masks `a` and `b` prune the weights `alive` keeps, from 0 (the same mask) to 1: the
    number of those weights on which they disagree, divided by the most they can disagree on, 2 min(k, n - k)
    for n alive weights of which each prunes k. At --rate <= 0.5 it is the fraction of the weights a level
    prunes that the two masks choose differently (1: disjoint choices), whatever the rate."""
    n = sum(int(m.sum()) for m in alive.values())
    k = n - sum(int(a[key].logical_and(alive[key]).sum()) for key in alive)
    differ = sum(int((a[key] ^ b[key]).logical_and_(alive[key]).sum()) for key in alive)
    return differ / max(2 * min(k, n - k), 1)


@dataclass
class Watch:
    """A level's newest candidate masks (newest last) and, with a `threshold` (--early-bird), when it stops;
    without one it only measures the distance between consecutive epochs' masks."""
    threshold: float | None
    window: int
    masks: list[Mask] = field(default_factory=list)

    def observe(self, candidate: Mask, alive: Mask) -> tuple[float | None, bool]:
        """Add this epoch's candidate mask: (its distance to the previous epoch's, None on a level's first epoch;
        whether the level stops now)."""
        candidate = {k: v.to(torch.bool) for k, v in candidate.items()}
        previous = distance(candidate, self.masks[-1], alive) if self.masks else None
        self.masks = (self.masks + [candidate])[-self.window:]
        full = self.threshold is not None and len(self.masks) == self.window
        stop = full and all(distance(candidate, m, alive) < self.threshold for m in self.masks[:-1])
        return previous, stop

    def state_dict(self) -> list[dict]:
        """The window as bit-packed masks (weights_only-safe), for the checkpoint."""
        return [pack_masks({k: v.cpu() for k, v in m.items()}) for m in self.masks]

    def load(self, packed: list[dict], device: torch.device, where: str) -> None:
        self.masks = [{k: v.to(device) for k, v in unpack_masks(p, where).items()} for p in packed]
