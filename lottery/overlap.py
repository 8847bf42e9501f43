"""How much ticket families agree: for the runs under a campaign ROOT, each family's tickets against a reference
family's at the same sparsity (mask IoU, `ticket_stats.compare`), per init, beside the noise floors to read it
against: the reference's IMP seeds against each other, OMP against the reference, and random masks of the same
per-layer sparsity. Written to ROOT/ticket_overlap.json, which the double-win report reads."""
from __future__ import annotations

import itertools
import json
import os
import statistics
from collections import Counter

from infra import checkpoint
from infra import paths
from infra.errors import UserError
from lottery.ticket_stats import compare
from pruning_utils import load_ticket
from reporting.runs import OVERLAP, SPARSITY_SLACK, init_label, read_sparsity, ticket_family

OMP = "omp"  # the one-shot family: a training-free mask, the floor a trained family should beat


def tickets_under(root: str) -> dict[tuple[str, str, float], list[str]]:
    """(init label, family, sparsity) -> its distinct ticket files (one per IMP seed; sorted), from every
    results.json under `root` whose ticket file still exists."""
    found: dict[tuple[str, str, float], set[str]] = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        if paths.RESULTS not in files:
            continue
        try:
            with open(os.path.join(folder, paths.RESULTS)) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        meta = data.get("ticket_meta") if isinstance(data, dict) else None
        ticket, sparsity = (data.get("ticket"), read_sparsity(data)[0]) if isinstance(meta, dict) else (None, None)
        if ticket and sparsity and os.path.isfile(ticket):
            found.setdefault((init_label(data), ticket_family(meta), sparsity), set()).add(ticket)
    return {k: sorted(v) for k, v in found.items()}


def choose_reference(families: Counter, asked: str | None) -> str:
    if asked is not None:
        if asked not in families:
            raise UserError(f"--reference {asked}: no tickets of that family under ROOT (found: "
                            f"{', '.join(sorted(families)) or 'none'})")
        return asked
    return next((f for f in ("aimp", "imp") if f in families), families.most_common(1)[0][0])


def _near(found: dict, init: str, family: str, s: float) -> list[str]:
    return next((p for (i, f, t), p in sorted(found.items())
                 if i == init and f == family and abs(t - s) <= SPARSITY_SLACK), [])


def write_overlap(root: str, reference: str | None, *, trusted: bool = False) -> str:
    """Compare every family's tickets with the reference family's at the same sparsity (within SPARSITY_SLACK)
    and init, and measure the floors; write ROOT/ticket_overlap.json. Returns its path."""
    if not os.path.isdir(root):
        raise UserError(f"ROOT {root} is not a folder: pass the root of the transfer runs")
    found = tickets_under(root)
    if not found:
        raise UserError(f"no transfer run under {root} names a ticket file that exists: nothing to compare")
    ref = choose_reference(Counter(family for _, family, _ in found), reference)
    masks: dict[str, dict] = {}

    def iou(a: str, b: str) -> dict:
        for p in (a, b):
            if p not in masks:
                masks[p] = load_ticket(p, trusted=trusted)[0]
        return compare(masks[a], masks[b])
    pairs, replicates = [], []
    for (init, family, s), paths in sorted(found.items()):
        if len(paths) >= 2:  # the family's IMP seeds against each other
            seen = [iou(a, b)["iou"] for a, b in itertools.combinations(paths, 2)]
            replicates.append({"init": init, "family": family, "sparsity": s, "iou": statistics.fmean(seen),
                               "iou_min": min(seen), "comparisons": len(seen), "tickets": len(paths)})
        others = _near(found, init, ref, s)
        if family == ref or not others:
            continue
        cs = [iou(a, b) for a in paths for b in others]
        omp = _near(found, init, OMP, s) if OMP not in (ref, family) else []
        pairs.append({"init": init, "family": family, "sparsity": s, "iou": statistics.fmean(c["iou"] for c in cs),
                      "iou_random": statistics.fmean(c["iou_random"] for c in cs), "comparisons": len(cs),
                      "iou_omp": statistics.fmean(iou(a, b)["iou"] for a in omp for b in others) if omp else None,
                      "ticket": paths[0], "reference_ticket": others[0]})
        print(f"{init} {family} at {100 * s:.2f}%: IoU {pairs[-1]['iou']:.4f} with {ref} "
              f"(random: {pairs[-1]['iou_random']:.4f})")
    for r in replicates:
        print(f"{r['init']} {r['family']} at {100 * r['sparsity']:.2f}%: IoU {r['iou']:.4f} between its "
              f"{r['tickets']} IMP seeds (lowest {r['iou_min']:.4f})")
    out = os.path.join(root, OVERLAP)
    checkpoint.atomic_write_json(out, {"reference": ref, "pairs": pairs, "replicates": replicates})
    print(f"wrote {out}: {len(pairs)} pair(s) against {ref}, {len(replicates)} with several IMP seeds")
    return out
