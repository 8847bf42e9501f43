"""The ticket families' mask overlap as the report reads it: ROOT/ticket_overlap.json (written by
`tickets.py overlap`, lottery/overlap.py), each family's IoU with the reference family and the noise floors to
judge it by (the reference's IMP seeds against each other, OMP, random masks)."""
from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass

OVERLAP = "ticket_overlap.json"  # in ROOT, written by tickets.py overlap
SPARSITY_SLACK = 5e-4  # two families' tickets of one level differ in the 4th decimal (per-level rounding)


@dataclass(frozen=True)
class Overlap:
    reference: str | None
    pairs: tuple[dict, ...]      # {"init", "family", "sparsity", "iou", "iou_random", "iou_omp", ...}
    replicates: tuple[dict, ...] = ()  # {"init", "family", "sparsity", "iou", "iou_min", ...}: IMP seeds vs each other

    def _at(self, rows, init: str, family: str, sparsities: list[float]) -> list[dict]:
        return [p for p in rows if p.get("init") == init and p.get("family") == family
                and any(abs(p.get("sparsity", -1) - s) <= SPARSITY_SLACK for s in sparsities)]

    def iou(self, init: str, family: str, sparsities: list[float]) -> tuple[float | None, int]:
        found = [p["iou"] for p in self._at(self.pairs, init, family, sparsities)]
        return (statistics.fmean(found), len(found)) if found else (None, 0)

    def judged(self, init: str, family: str, sparsities: list[float]) -> str:
        """The family's IoU with the reference beside its floors at the same sparsities, and what it says:
        indistinguishable from another IMP seed of the reference, below every seed-to-seed pair (with the odds
        of that for another seed), no closer than OMP; or too few seed pairs (under MIN_PAIRS) to tell."""
        mine = self._at(self.pairs, init, family, sparsities)
        seeds = self._at(self.replicates, init, self.reference, [p["sparsity"] for p in mine] or sparsities)
        k = sum(_comparisons(r) for r in seeds)
        if family == self.reference:
            return f"seed-to-seed {_mean(seeds, 'iou'):.3f} ({_pairs(seeds)})" if seeds else "-"
        if not mine:
            return "-"
        iou, rand = _mean(mine, "iou"), _mean(mine, "iou_random")
        omp = [p for p in mine if isinstance(p.get("iou_omp"), (int, float))]
        own = self._at(self.replicates, init, family, [p["sparsity"] for p in mine])
        floors = ([f"seed-to-seed {_mean(seeds, 'iou'):.3f} ({_pairs(seeds)})"] if seeds else []) + \
            ([f"its own seeds {_mean(own, 'iou'):.3f}"] if own else []) + \
            ([f"OMP {_mean(omp, 'iou_omp'):.3f}"] if omp else []) + ([f"random {rand:.3f}"] if rand is not None else [])
        if seeds and iou >= _mean(seeds, "iou_min") - SLACK:
            word = f"indistinguishable from another IMP seed of {self.reference}"
        elif omp and iou <= _mean(omp, "iou_omp") + SLACK:
            word = f"no closer to {self.reference} than OMP"
        elif seeds and k >= MIN_PAIRS:
            word = f"below all {k} seed-to-seed pairs: a different mask (another IMP seed would land there about " \
                f"1 time in {k + 1})" + ("" if not omp else ", closer than OMP")
        elif seeds:
            word = f"below the seed-to-seed floor, but {k} seed pair{'s' * (k != 1)} cannot tell a different mask " \
                f"from seed noise (>= {MIN_PAIRS} pairs: 3 IMP seeds)"
        else:
            word = f"one IMP seed of {self.reference}: no seed-to-seed floor"
        return f"{iou:.3f} (n={len(mine)}); {', '.join(floors)}: {word}"


MIN_PAIRS = 3  # seed-to-seed IoUs needed before an IoU below all of them is called a different mask


def _comparisons(row: dict) -> int:
    """The seed pairs behind one replicate row (files without the count: every pair of its tickets)."""
    n = row.get("comparisons")
    if isinstance(n, int) and n > 0:
        return n
    t = row.get("tickets")
    return t * (t - 1) // 2 if isinstance(t, int) and t >= 2 else 1


def _pairs(rows: list[dict]) -> str:
    k = sum(_comparisons(r) for r in rows)
    low = min(r["iou_min"] for r in rows)
    return f"{k} pair{'s' * (k != 1)}, lowest {low:.3f}"


SLACK = 1e-9


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [p[key] for p in rows if isinstance(p.get(key), (int, float))]
    return statistics.fmean(vals) if vals else None


def read_overlap(root: str) -> Overlap:
    """ROOT/ticket_overlap.json, or an empty Overlap where it is missing or unreadable (the IoU column is empty)."""
    try:
        with open(os.path.join(root, OVERLAP)) as f:
            data = json.load(f)
        pairs = tuple(p for p in data["pairs"] if isinstance(p, dict) and isinstance(p.get("iou"), (int, float)))
        reps = tuple(p for p in data.get("replicates", []) if isinstance(p, dict)
                     and isinstance(p.get("iou"), (int, float)) and isinstance(p.get("iou_min"), (int, float)))
        return Overlap(data.get("reference"), pairs, reps)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return Overlap(None, ())
