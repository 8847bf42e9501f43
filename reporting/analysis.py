"""The double-win report's data model: runs grouped by (init, dataset, data_number), one row per ticket
sparsity, and a ticket marked double-win when it matches the dense model on SA and RA after both standard and
adversarial transfer. It reads results.json files through reporting.runs, never a model."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, replace


from reporting.runs import (WATCH, Options, Overlap, Problem, Run, column_name, match_columns, read_overlap,
                            scan)

SLACK = 1e-9  # float slack: a ticket exactly on the threshold matches


@dataclass(frozen=True)
class Cell:
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n >= 2 else None


@dataclass(frozen=True)
class Row:
    sparsity: float
    source: str
    cells: dict             # (mode, metric) -> Cell
    match: dict             # (mode, metric) -> bool | None, for the four matching columns (empty when dense)
    failures: tuple[str, ...]  # why the row is not double-win
    ticket_hours: float | None = None  # device-hours that found the row's ticket (None: dense, or not recorded)
    transfer_hours: float = 0.0        # device-hours of the row's transfer runs
    ticket_flop: float | None = None   # ... in FLOPs (None: dense, or not recorded)
    transfer_flop: float | None = None

    @property
    def dense(self) -> bool:
        return self.sparsity == 0

    @property
    def double_win(self) -> bool:
        return not self.dense and not self.failures

    @property
    def status(self) -> str:
        return "dense reference" if self.dense else "double-win" if not self.failures else "; ".join(self.failures)


@dataclass(frozen=True)
class Group:
    key: tuple
    rows: tuple[Row, ...]
    margins: dict           # (mode, metric) -> (margin or None, how it was chosen)
    notes: tuple[str, ...]
    runs: int
    group_by: tuple[str, ...]  # names of key[3:]

    @property
    def title(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in zip(self.group_by, self.key[3:]))
        return f"init {self.key[0]}, {self.key[1]}, data_number {self.key[2]:g}{extra}"

    def highest(self, source: str | None = None) -> Row | None:
        wins = [r for r in self.rows if r.double_win and source in (None, r.source)]
        return max(wins, key=lambda r: r.sparsity) if wins else None


@dataclass(frozen=True)
class Report:
    root: str
    opts: Options
    groups: tuple[Group, ...]
    problems: tuple[Problem, ...]
    runs_read: int
    overlap: Overlap = Overlap(None, ())  # mask IoU between ticket families (tickets.py overlap ROOT)


# ---------------------------------------------------------------------------- analysis
def _margin(cell: Cell | None, tolerance: float) -> tuple[float | None, str]:
    if cell is None:
        return None, "no dense run"
    if cell.n >= 2:
        return cell.std, f"std of {cell.n} dense seeds"
    return tolerance, "tolerance, 1 dense seed"


def _judge(sparsity: float, source: str, cells: dict, dense: dict, margins: dict, opts: Options) -> Row:
    if sparsity == 0:
        return Row(sparsity, source, cells, {}, ())
    cols = match_columns(opts)
    match = {c: None if c not in cells or c not in dense
             else cells[c].mean >= dense[c].mean - margins[c][0] - SLACK for c in cols}
    failures = []
    for what, chosen in (("missing", [c for c in cols if c not in cells]),
                         ("no dense run for", [c for c in cols if c in cells and c not in dense]),
                         ("fails", [c for c in cols if match[c] is False])):
        if chosen:
            failures.append(f"{what} {', '.join(column_name(c) for c in chosen)}")
    return Row(sparsity, source, cells, match, tuple(failures))


def _costed(row: Row, spent: list[tuple[float | None, ...]]) -> Row:
    """The row with its ticket's finding cost (the largest its runs record) and its transfer runs' cost, in
    device-hours and FLOPs (`spent`: ticket hours, run hours, ticket FLOPs, run FLOPs per run)."""
    found, flops = [t for t, *_ in spent if t is not None], [s[2] for s in spent if s[2] is not None]
    runs = [s[3] for s in spent if s[3] is not None]
    return replace(row, ticket_hours=max(found) if found else None,
                   transfer_hours=sum(s[1] for s in spent if s[1] is not None),
                   ticket_flop=max(flops) if flops else None, transfer_flop=sum(runs) if runs else None)


def analyse(runs: list[Run], opts: Options) -> list[Group]:
    """Group runs by (init, dataset, data_number, *group_by); one row per (sparsity, source), dense first."""
    by_group: dict[tuple, list[Run]] = {}
    for r in runs:
        by_group.setdefault(r.group, []).append(r)
    groups = []
    for key in sorted(by_group):
        members = by_group[key]
        values: dict[tuple, dict] = {}
        spent: dict[tuple, list] = {}
        for r in members:
            spent.setdefault((r.sparsity, r.source), []).append((r.ticket_hours, r.run_hours, r.ticket_flop,
                                                                 r.run_flop))
            row = values.setdefault((r.sparsity, r.source), {})
            for metric, v in r.values.items():
                if v is not None:
                    row.setdefault((r.mode, metric), []).append(v)
        cells = {rk: {c: Cell(tuple(v)) for c, v in row.items()} for rk, row in values.items()}
        dense = cells.get((0.0, "dense"), {})
        margins = {c: _margin(dense.get(c), opts.tolerance) for c in match_columns(opts)}
        rows = tuple(_costed(_judge(sp, src, cells[(sp, src)], dense, margins, opts), spent[(sp, src)])
                     for sp, src in sorted(cells))
        notes = [f"runs differ in {k} ({', '.join(sorted({r.settings[k] for r in members}))}); "
                 f"split them with --group-by {k}" for k in WATCH if len({r.settings[k] for r in members}) > 1]
        if not dense:
            notes.append("no dense run (ticket: null / sparsity 0): nothing to match against")
        groups.append(Group(key, rows, margins, tuple(notes), len(members), opts.group_by))
    return groups


def collect(root: str, opts: Options) -> Report:
    runs, problems = scan(root, opts)
    return Report(root, opts, tuple(analyse(runs, opts)), tuple(problems), len(runs), read_overlap(root))
