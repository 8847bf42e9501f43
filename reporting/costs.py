"""The verdict weighed against its cost: per group and ticket family, the highest double-win sparsity, the
FLOPs and device-hours measured finding the family's tickets (each ticket carries the cumulative cost of the levels
that made it) and transferring them, and how much the family's tickets overlap those of a reference family at the same
sparsity (mask IoU, from ROOT/ticket_overlap.json, which `tickets.py overlap ROOT` writes: the report itself
never opens a ticket)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from reporting.runs import Overlap

if TYPE_CHECKING:
    from reporting.analysis import Group



@dataclass(frozen=True)
class FamilyCost:
    family: str
    tickets: int                 # distinct ticket sparsities of the family in the group
    highest: float | None        # highest double-win sparsity (None: no double-win ticket)
    deepest: bool                # `highest` is the family's sparsest transferred ticket: the family wins at least there
    find_hours: float | None     # device-hours that found all its tickets here (the costliest ticket's cumulative)
    reach_hours: float | None    # ... that found its highest double-win ticket
    transfer_hours: float | None  # device-hours of its transfer runs in the group (None: none recorded)
    find_flop: float | None      # the same three in FLOPs (2 per multiply-add; None: not recorded)
    reach_flop: float | None
    transfer_flop: float | None
    iou: float | None            # mean mask IoU with the reference family's tickets at the same sparsities
    iou_n: int                   # sparsities that mean covers


def family_costs(group: Group, overlap: Overlap) -> list[FamilyCost]:
    """One FamilyCost per ticket family of the group, sorted by family. A cost no file records is None, never
    0 (0 is a genuine zero: one-shot pruning trains nothing beyond the pre-trained weights)."""
    out = []
    for family in sorted({r.family for r in group.rows if not r.dense}):
        rows = [r for r in group.rows if r.family == family]
        best = group.highest(family)
        found = [r.ticket_hours for r in rows if r.ticket_hours is not None]
        flops = [r.ticket_flop for r in rows if r.ticket_flop is not None]
        moved = [r.transfer_flop for r in rows if r.transfer_flop is not None]
        iou, n = overlap.iou(group.key[0], family, [r.sparsity for r in rows]) if family != overlap.reference \
            else (None, 0)
        out.append(FamilyCost(
            family, len(rows), best.sparsity if best else None,
            best is not None and best.sparsity == max(r.sparsity for r in rows),
            max(found) if found else None, best.ticket_hours if best else None,
            sum(r.transfer_hours for r in rows) if moved or any(r.transfer_hours for r in rows) else None,
            max(flops) if flops else None, best.ticket_flop if best else None, sum(moved) if moved else None,
            iou, n))
    return out


NOT_RECORDED = "n/r"


def _hours(h: float | None) -> str:
    return NOT_RECORDED if h is None else f"{h:.3g}"


def flop_text(f: float | None) -> str:
    """FLOPs with an SI prefix ("144 G", "1.93 E"); "n/r" where not recorded."""
    if f is None:
        return NOT_RECORDED
    for exp, prefix in ((18, "E"), (15, "P"), (12, "T"), (9, "G"), (6, "M")):
        if f >= 10 ** exp:
            return f"{f / 10 ** exp:.3g} {prefix}"
    return f"{f:.3g}"


def _highest(c: FamilyCost) -> str:
    if c.highest is None:
        return "none"
    return ("≥" if c.deepest else "") + f"{100 * c.highest:.2f}%"


def cost_table(group: Group, overlap: Overlap) -> tuple[list[str], list[list[str]]]:
    """The family table: FLOPs (hardware-independent) beside device-hours; "n/r": not recorded; "-": no
    double-win ticket to reach; "≥": double-win at the family's sparsest transferred ticket (sparser ones
    untested)."""
    ref = overlap.reference or "reference"
    header = ["family", "tickets", "highest double-win", "FLOP finding all", "device-h finding all",
              "FLOP to highest", "device-h to highest", "FLOP transfer", "device-h transfer", f"IoU vs {ref}"]
    rows = [[c.family, str(c.tickets), _highest(c), flop_text(c.find_flop), _hours(c.find_hours),
             *(["-", "-"] if c.highest is None else [flop_text(c.reach_flop), _hours(c.reach_hours)]),
             flop_text(c.transfer_flop), _hours(c.transfer_hours),
             overlap.judged(group.key[0], c.family, [r.sparsity for r in group.rows if r.family == c.family])]
            for c in family_costs(group, overlap)]
    return header, rows


def costs_json(group: Group, overlap: Overlap) -> list[dict]:
    return [dict(vars(c)) for c in family_costs(group, overlap)]
