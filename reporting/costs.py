"""The verdict weighed against its cost: per group and ticket family, the highest double-win sparsity, the
device-hours measured finding the family's tickets (each ticket carries the cumulative cost of the levels that made
it) and transferring them, and how much the family's tickets overlap those of a reference family at the same
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
    find_hours: float | None     # device-hours that found all its tickets here (the costliest ticket's cumulative)
    reach_hours: float | None    # ... that found its highest double-win ticket
    transfer_hours: float        # device-hours of its transfer runs in the group
    iou: float | None            # mean mask IoU with the reference family's tickets at the same sparsities
    iou_n: int                   # sparsities that mean covers


def family_costs(group: Group, overlap: Overlap) -> list[FamilyCost]:
    """One FamilyCost per ticket family of the group, sorted by family."""
    out = []
    for family in sorted({r.source for r in group.rows if not r.dense}):
        rows = [r for r in group.rows if r.source == family]
        best = group.highest(family)
        found = [r.ticket_hours for r in rows if r.ticket_hours is not None]
        iou, n = overlap.iou(group.key[0], family, [r.sparsity for r in rows]) if family != overlap.reference \
            else (None, 0)
        out.append(FamilyCost(family, len(rows), best.sparsity if best else None, max(found) if found else None,
                              best.ticket_hours if best else None, sum(r.transfer_hours for r in rows), iou, n))
    return out


def _hours(h: float | None) -> str:
    return "-" if h is None else f"{h:.3g}"


def cost_table(group: Group, overlap: Overlap) -> tuple[list[str], list[list[str]]]:
    ref = overlap.reference or "reference"
    header = ["family", "tickets", "highest double-win", "device-h finding all", "device-h to highest",
              "device-h transfer", f"IoU vs {ref}"]
    rows = [[c.family, str(c.tickets), "none" if c.highest is None else f"{100 * c.highest:.2f}%",
             _hours(c.find_hours), _hours(c.reach_hours), _hours(c.transfer_hours),
             overlap.judged(group.key[0], c.family, [r.sparsity for r in group.rows if r.source == c.family])]
            for c in family_costs(group, overlap)]
    return header, rows


def costs_json(group: Group, overlap: Overlap) -> list[dict]:
    return [dict(vars(c)) for c in family_costs(group, overlap)]
