"""What a ticket holds and how two tickets overlap: per-layer sparsity, intersection over union of kept
weights, aligned text tables and an optional per-layer sparsity bar chart (used by tickets.py)."""
from __future__ import annotations

import io
from typing import Any, Sequence

from infra.checkpoint import atomic_write_bytes
from infra.errors import MaskError
from lottery.shared_ticket import PACKED_FORMAT
from pruning_utils import TICKET_FORMAT, Mask, layer_sparsity, sparsity


# ---------------------------------------------------------------------------- numbers
def summarize(mask: Mask, meta: dict) -> dict[str, Any]:
    """Global and per-layer sparsity of one mask, with its level and plain metadata."""
    layers = layer_sparsity(mask)
    total = sum(row["total"] for row in layers.values())
    kept = sum(row["kept"] for row in layers.values())
    level = meta.get("level", meta.get("state_prune"))  # the original calls its round `state_prune`
    if meta.get("format") == TICKET_FORMAT:
        kind = f"ticket (version {meta.get('version')})"
    elif meta.get("format") == PACKED_FORMAT:
        kind = f"packed ticket (safetensors, version {meta.get('version')}; mask digest verified)"
    elif "state_prune" in meta:
        kind = "the original's IMP checkpoint"
    else:
        kind = "checkpoint or state dict with masks"
    return {"kind": kind, "sparsity": sparsity(mask), "total": total, "kept": kept, "level": level,
            "meta": {k: v for k, v in meta.items() if k not in ("format", "version")}, "layers": layers}


def compare(a: Mask, b: Mask) -> dict[str, Any]:
    """Overlap of the kept weights of two masks over the same layers, globally and per layer.

    `iou` is |A and B| / |A or B| (1 where both prune a layer entirely); `iou_random` is what two independent
    random masks with these per-layer densities would give in expectation, the baseline to read `iou` against.
    """
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise MaskError(f"the two tickets mask different layers (e.g. {only[0]!r}): compare tickets of one "
                        "architecture")
    layers: dict[str, dict] = {}
    sums = dict(total=0, kept_a=0, kept_b=0, both=0, either=0, both_random=0.0, either_random=0.0)
    for name in a:
        ma, mb = a[name].bool(), b[name].bool()
        if ma.shape != mb.shape:
            raise MaskError(f"layer {name!r} has shape {list(ma.shape)} in one ticket and {list(mb.shape)} in the "
                            "other: compare tickets of one architecture")
        n = ma.numel()
        ka, kb = int(ma.sum()), int(mb.sum())
        both, either = int((ma & mb).sum()), int((ma | mb).sum())
        both_r, either_r = ka * kb / n, ka + kb - ka * kb / n
        layers[name] = {"shape": list(ma.shape), "total": n, "kept_a": ka, "kept_b": kb, "both": both,
                        "either": either, "sparsity_a": 1 - ka / n, "sparsity_b": 1 - kb / n,
                        "iou": _ratio(both, either), "iou_random": _ratio(both_r, either_r)}
        for key, value in (("total", n), ("kept_a", ka), ("kept_b", kb), ("both", both), ("either", either),
                           ("both_random", both_r), ("either_random", either_r)):
            sums[key] += value
    return {"iou": _ratio(sums["both"], sums["either"]),
            "iou_random": _ratio(sums["both_random"], sums["either_random"]),
            "sparsity_a": 1 - sums["kept_a"] / sums["total"] if sums["total"] else 0.0,
            "sparsity_b": 1 - sums["kept_b"] / sums["total"] if sums["total"] else 0.0,
            "total": sums["total"], "both": sums["both"], "either": sums["either"], "layers": layers}


def _ratio(num: float, den: float) -> float:
    return num / den if den else 1.0


# ---------------------------------------------------------------------------- text
def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns aligned by width; the first column left-aligned, the rest right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _shape(shape: list[int]) -> str:
    return "x".join(map(str, shape))


def inspect_text(path: str, s: dict) -> str:
    meta = ", ".join(f"{k}={v}" for k, v in s["meta"].items()) or "-"
    head = [f"file      {path}", f"kind      {s['kind']}", f"level     {s['level'] if s['level'] is not None else '-'}",
            f"sparsity  {_pct(s['sparsity'])} of conv weights (kept {s['kept']:,} of {s['total']:,}, "
            f"{len(s['layers'])} layers)", f"meta      {meta}", ""]
    rows = [(name, _shape(r["shape"]), f"{r['kept']:,}", f"{r['total']:,}", _pct(r["sparsity"]))
            for name, r in s["layers"].items()]
    return "\n".join(head) + table(("layer", "shape", "kept", "total", "sparsity"), rows)


def compare_text(path_a: str, path_b: str, c: dict) -> str:
    head = [f"A  {path_a}  (sparsity {_pct(c['sparsity_a'])})",
            f"B  {path_b}  (sparsity {_pct(c['sparsity_b'])})",
            f"IoU of kept weights  {c['iou']:.4f}  (kept by both {c['both']:,}, by either {c['either']:,}; "
            f"independent random masks at these layer densities: {c['iou_random']:.4f})", ""]
    rows = [(name, _shape(r["shape"]), _pct(r["sparsity_a"]), _pct(r["sparsity_b"]), f"{r['both']:,}",
             f"{r['iou']:.4f}", f"{r['iou_random']:.4f}") for name, r in c["layers"].items()]
    return "\n".join(head) + table(("layer", "shape", "sparsity A", "sparsity B", "kept by both", "IoU",
                                    "IoU random"), rows)


# ---------------------------------------------------------------------------- picture
def plot_sparsity(path: str, tickets: dict[str, dict[str, dict]]) -> None:
    """Per-layer sparsity bars, side by side for up to a few tickets ({label: layer_sparsity(mask)}), to PNG."""
    # imported here, not at module import; an Agg canvas needs no display and touches no global backend state
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(next(iter(tickets.values())))
    width = 0.8 / len(tickets)
    fig = Figure(figsize=(max(6.0, 0.28 * len(names) + 2), 4.0))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, (label, layers) in enumerate(tickets.items()):
        xs = [j + (i - (len(tickets) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, [100 * layers[n]["sparsity"] if n in layers else 0.0 for n in names], width, label=label)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.removesuffix(".weight") for n in names], rotation=90, fontsize=7)
    ax.set_ylabel("sparsity (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())
