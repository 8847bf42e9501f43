"""How much ticket families agree: for the runs under a campaign ROOT, each family's tickets against a reference
family's at the same sparsity (mask IoU, `ticket_stats.compare`), per init. Written to ROOT/ticket_overlap.json,
which the double-win report reads (it never opens a ticket itself)."""
from __future__ import annotations

import json
import os
from collections import Counter

from infra import checkpoint
from infra.errors import UserError
from lottery.ticket_stats import compare
from pruning_utils import load_ticket
from reporting.runs import OVERLAP, SPARSITY_SLACK, init_label, read_sparsity


def tickets_under(root: str) -> dict[tuple[str, str, float], str]:
    """(init label, family, sparsity) -> the ticket file, from every results.json under `root` whose ticket file
    still exists (the first run seen for each)."""
    found: dict[tuple[str, str, float], str] = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        if checkpoint.RESULTS not in files:
            continue
        try:
            with open(os.path.join(folder, checkpoint.RESULTS)) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        meta = data.get("ticket_meta") if isinstance(data, dict) else None
        ticket, sparsity = (data.get("ticket"), read_sparsity(data)[0]) if isinstance(meta, dict) else (None, None)
        if ticket and sparsity and os.path.isfile(ticket):
            found.setdefault((init_label(data), str(meta.get("source") or "ticket"), sparsity), ticket)
    return found


def choose_reference(families: Counter, asked: str | None) -> str:
    if asked is not None:
        if asked not in families:
            raise UserError(f"--reference {asked}: no tickets of that family under ROOT (found: "
                            f"{', '.join(sorted(families)) or 'none'})")
        return asked
    return next((f for f in ("aimp", "imp") if f in families), families.most_common(1)[0][0])


def write_overlap(root: str, reference: str | None, *, trusted: bool = False) -> str:
    """Compare every family's tickets with the reference family's at the same sparsity (within SPARSITY_SLACK)
    and the same init; write ROOT/ticket_overlap.json. Returns its path."""
    if not os.path.isdir(root):
        raise UserError(f"ROOT {root} is not a folder: pass the root of the transfer runs")
    found = tickets_under(root)
    if not found:
        raise UserError(f"no transfer run under {root} names a ticket file that exists: nothing to compare")
    ref = choose_reference(Counter(family for _, family, _ in found), reference)
    pairs = []
    for (init, family, s), path in sorted(found.items()):
        other = next((p for (i, f, t), p in sorted(found.items())
                      if i == init and f == ref and abs(t - s) <= SPARSITY_SLACK), None)
        if family == ref or other is None:
            continue
        c = compare(load_ticket(path, trusted=trusted)[0], load_ticket(other, trusted=trusted)[0])
        pairs.append({"init": init, "family": family, "sparsity": s, "iou": c["iou"], "iou_random": c["iou_random"],
                      "ticket": path, "reference_ticket": other})
        print(f"{init} {family} at {100 * s:.2f}%: IoU {c['iou']:.4f} with {ref} (random: {c['iou_random']:.4f})")
    out = os.path.join(root, OVERLAP)
    checkpoint.atomic_write_json(out, {"reference": ref, "pairs": pairs})
    print(f"wrote {out}: {len(pairs)} pair(s) against {ref}")
    return out
