"""Accuracy-vs-sparsity figures of the double-win report, drawn as the lottery-ticket literature does: remaining
weights (%) on a log axis reversed so sparsity grows to the right, the dense model as its mean (dotted) and a band
of +- the margin (--margin with the statistical verdict; the point rule's dense spread or --tolerance with
--verdict point), tickets as means with seed standard deviations, and double-win tickets as gold stars. The band
shows the margin's size only: a call comes from the verdict's bounds (seeds and test images), not from a point
falling inside it.
"""
from __future__ import annotations

import io
from typing import TYPE_CHECKING

from infra.checkpoint import atomic_write_bytes
from reporting.runs import LABELS, REGIMES, Options, match_columns, pairing

if TYPE_CHECKING:
    from reporting.analysis import Group
    from reporting.runs import Overlap

COLORS = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:olive", "tab:cyan")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
STYLES = ("-", "--", "-.", ":")


def _families(group: Group) -> list[str]:
    return sorted({r.family for r in group.rows if not r.dense})


def _line(ax, group: Group, col: tuple[str, str], family: str, color: str, k: int, label: str) -> list[float]:
    """One ticket family in one column: the dense point at 100% first, then its tickets; stars where double-win.
    `k` numbers the family (marker and line style). Returns the x positions drawn."""
    rows = [r for r in group.rows if (r.dense or r.family == family) and col in r.cells]
    if all(r.dense for r in rows):
        return []
    xs = [100 * (1 - r.sparsity) for r in rows]
    ys = [r.cells[col].mean for r in rows]
    errs = [r.cells[col].std or 0.0 for r in rows]
    ax.errorbar(xs, ys, yerr=errs if any(errs) else None, color=color, marker=MARKERS[k % len(MARKERS)],
                ls=STYLES[k % len(STYLES)], ms=4, lw=1.2, capsize=2, label=label)
    stars = [(x, y) for x, y, r in zip(xs, ys, rows) if r.double_win]
    if stars:
        ax.scatter(*zip(*stars), marker="*", s=170, color="gold", edgecolors="black", linewidths=0.6, zorder=5)
    return xs


def _band(ax, group: Group, col: tuple[str, str], color: str, label: str) -> None:
    dense = next((r for r in group.rows if r.dense), None)
    cell = dense.cells.get(col) if dense else None
    margin = group.margins.get(col, (None, ""))[0]
    if cell is None or margin is None:
        return
    ax.axhspan(cell.mean - margin, cell.mean + margin, color=color, alpha=0.15, lw=0)
    ax.axhline(cell.mean, color=color, ls=":", lw=1, label=label)


def _axis(ax, xs: list[float], title: str, ylabel: str, stars: bool) -> None:
    from matplotlib.ticker import NullLocator
    ticks = sorted({round(x, 1) for x in xs} | {100.0}, reverse=True)
    shown = ticks[:: max(1, len(ticks) // 10)]  # at most ~10 labels
    ax.set_xscale("log")
    ax.set_xticks(shown)
    ax.set_xticklabels([f"{t:g}" for t in shown], fontsize=7)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(ticks[0] * 1.15, ticks[-1] / 1.15)  # reversed: sparser to the right
    if stars:
        ax.scatter([], [], marker="*", s=120, color="gold", edgecolors="black", label="double-win")
    ax.set(title=title, xlabel="remaining weights (%)", ylabel=ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)


def _figure(rows: int, cols: int, size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig, path: str) -> None:
    """Atomically, like every other output."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def plot_group(group: Group, opts: Options, path: str) -> None:
    """One init/dataset/fraction: SA and RA panels, a line per (transfer regime x ticket family)."""
    fig, axes = _figure(1, 2, (11, 4.2))
    for ax, (_, metric) in zip(axes[0], match_columns(opts)[:2]):
        xs, stars = [100.0], any(r.double_win for r in group.rows)
        for i, mode in enumerate(REGIMES):
            col = (mode, metric)
            _band(ax, group, col, COLORS[i], f"dense, {mode} transfer")
            for j, family in enumerate(_families(group)):
                xs += _line(ax, group, col, family, COLORS[i], j, f"{family}, {mode} transfer")
        _axis(ax, xs, f"{LABELS[metric]} (test)", f"{LABELS[metric]} (%)", stars)
    fig.suptitle(f"{group.title}; {pairing(opts, short=True)}", fontsize=9)
    _save(fig, path)


def plot_overview(groups: list[Group], opts: Options, path: str) -> None:
    """Several pre-trained inits on one dataset/fraction: rows SA/RA, columns standard/adversarial transfer,
    a line per (init x ticket family), each init's dense band in its colour."""
    fig, axes = _figure(2, 2, (11, 8))
    for i, (_, metric) in enumerate(match_columns(opts)[:2]):
        for j, mode in enumerate(REGIMES):
            ax, col, xs = axes[i][j], (mode, metric), [100.0]
            for k, g in enumerate(groups):
                color = COLORS[k % len(COLORS)]
                _band(ax, g, col, color, f"dense, {g.key[0]}")
                for m, family in enumerate(_families(g)):
                    xs += _line(ax, g, col, family, color, m, f"{g.key[0]}, {family}")
            stars = any(r.double_win for g in groups for r in g.rows)
            _axis(ax, xs, f"{LABELS[metric]} after {mode} transfer", f"{LABELS[metric]} (%)", stars)
    g0 = groups[0]
    fig.suptitle(f"{g0.key[1]}, data_number {g0.key[2]:g}; {pairing(opts, short=True)}", fontsize=9)
    _save(fig, path)


def _cost_panel(ax, points: list, value, xlabel: str) -> list[str]:
    """One panel of cost.png: a point per (group x family) at x = `value(c)` (symlog, so one-shot's 0 shows), y =
    the highest double-win sparsity (open and at 0 where none; "≥" where the family wins at its sparsest
    transferred ticket). Returns the families left out (no recorded cost)."""
    shown = [(k, c) for k, c in points if value(c) is not None]
    positive = [value(c) for _, c in shown if value(c) > 0]
    if positive:
        ax.set_xscale("symlog", linthresh=min(positive) / 2)
    for k, c in shown:
        color = COLORS[k % len(COLORS)]
        x, y = value(c), 100 * c.highest if c.highest is not None else 0.0
        ax.scatter([x], [y], s=40, color=color if c.highest is not None else "none", edgecolors=color,
                   marker=MARKERS[k % len(MARKERS)], zorder=3)
        ax.annotate(("≥ " if c.deepest else "") + c.family, (x, y), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    ax.set(xlabel=xlabel, ylabel="highest double-win sparsity (%)")
    ax.grid(alpha=0.3)
    return [c.family for k, c in points if value(c) is None]


def plot_costs(groups: list[Group], overlap: Overlap, path: str) -> bool:
    """Highest double-win sparsity against what finding each family's tickets cost, measured: FLOPs (the same on
    any hardware) and device-hours, each on a symlog axis (one-shot pruning's 0 is drawn), a colour per group.
    A family whose ledgers record no cost is left out and named under the figure. Returns False (nothing drawn)
    where no ticket records its cost."""
    from reporting.costs import family_costs
    points = [(k, c) for k, g in enumerate(groups) for c in family_costs(g, overlap)]
    if not any(c.find_hours is not None or c.find_flop is not None for _, c in points):
        return False
    fig, axes = _figure(1, 2, (12, 4.8))
    for k, g in enumerate(groups):
        axes[0][0].scatter([], [], color=COLORS[k % len(COLORS)], label=g.title)
    left = _cost_panel(axes[0][0], points, lambda c: c.find_flop, "FLOPs measured finding the family's tickets")
    left += _cost_panel(axes[0][1], points, lambda c: c.find_hours, "device-hours measured finding them")
    axes[0][0].legend(fontsize=6)
    fig.suptitle("double-win sparsity against what finding the tickets cost (≥: double-win at the sparsest ticket "
                 "transferred)", fontsize=9)
    if left:
        fig.text(0.01, 0.01, f"not recorded, left out: {', '.join(sorted(set(left)))}", fontsize=7)
    _save(fig, path)
    return True
