"""The double-win report's data model: runs grouped by (init, dataset, data_number), one row per ticket
sparsity (its runs pooled over IMP seeds and transfer seeds), and a ticket called double-win when it matches the
dense model on SA and RA after both standard and adversarial transfer (reporting.verdict's test, or the older
point rule). It reads results.json files through reporting.runs, never a model."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, replace


from reporting import verdict
from reporting.runs import (WATCH, Options, Overlap, Problem, Run, column_name, match_columns, read_overlap,
                            scan)

SLACK = 1e-9  # float slack: a ticket exactly on the threshold matches


@dataclass(frozen=True)
class Cell:
    values: tuple[float, ...]
    samples: tuple[verdict.Sample, ...] = ()  # the same values with their seeds and test images

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def imp_seeds(self) -> int:
        """Distinct IMP seeds behind the cell's tickets (0: dense, or none recorded)."""
        return len({s.imp_seed for s in self.samples if s.imp_seed is not None})

    @property
    def replicates(self) -> str:
        """n and what it counts, e.g. "n=6 (2 IMP seeds x 3 transfer seeds)"."""
        if self.imp_seeds < 2:
            return f"n={self.n}"
        per = {}
        for s in self.samples:
            per.setdefault(s.imp_seed, set()).add(s.seed)
        counts = sorted({len(v) for v in per.values()})
        each = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        return f"n={self.n} ({self.imp_seeds} IMP seeds x {each} transfer seeds)"

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n >= 2 else None


@dataclass(frozen=True)
class Row:
    sparsity: float
    family: str
    cells: dict             # (mode, metric) -> Cell
    match: dict             # (mode, metric) -> bool | None, for the four matching columns (empty when dense);
    #                         with --verdict stat: True double-win, False not double-win, None inconclusive/missing
    failures: tuple[str, ...]  # why the row is not double-win
    ticket_hours: float | None = None  # device-hours that found the row's ticket (None: dense, or not recorded)
    transfer_hours: float = 0.0        # device-hours of the row's transfer runs
    ticket_flop: float | None = None   # ... in FLOPs (None: dense, or not recorded)
    transfer_flop: float | None = None
    tests: dict | None = None          # (mode, metric) -> verdict.Test (--verdict stat)
    call: str = ""                     # --verdict stat: verdict.WIN / LOSS / OPEN for the row

    @property
    def dense(self) -> bool:
        return self.sparsity == 0

    @property
    def double_win(self) -> bool:
        return not self.dense and not self.failures

    @property
    def status(self) -> str:
        if self.dense:
            return "dense reference"
        if not self.failures:
            return "double-win"
        return f"{self.call}: " + "; ".join(self.failures) if self.call else "; ".join(self.failures)


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

    def highest(self, family: str | None = None) -> Row | None:
        wins = [r for r in self.rows if r.double_win and family in (None, r.family)]
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
def _margin(cell: Cell | None, opts: Options) -> tuple[float | None, str]:
    if cell is None:
        return None, "no dense run"
    if opts.verdict == "stat":
        return opts.margin, f"--margin, one-sided {100 * opts.confidence:g}% bounds"
    tolerance = opts.tolerance
    if cell.n >= 2:
        return cell.std, f"std of {cell.n} dense seeds"
    return tolerance, "tolerance, 1 dense seed"


def _judge(sparsity: float, family: str, cells: dict, dense: dict, margins: dict, opts: Options) -> Row:
    if sparsity == 0:
        return Row(sparsity, family, cells, {}, ())
    if opts.verdict == "stat":
        return _test(sparsity, family, cells, dense, opts)
    cols = match_columns(opts)
    match = {c: None if c not in cells or c not in dense
             else cells[c].mean >= dense[c].mean - margins[c][0] - SLACK for c in cols}
    failures = []
    for what, chosen in (("missing", [c for c in cols if c not in cells]),
                         ("no dense run for", [c for c in cols if c in cells and c not in dense]),
                         ("fails", [c for c in cols if match[c] is False])):
        if chosen:
            failures.append(f"{what} {', '.join(column_name(c) for c in chosen)}")
    return Row(sparsity, family, cells, match, tuple(failures))


def _test(sparsity: float, family: str, cells: dict, dense: dict, opts: Options) -> Row:
    """The statistical call: per column a non-inferiority test; the row is double-win when all four columns are,
    not double-win when any column is, else inconclusive (the reasons name the columns)."""
    cols = match_columns(opts)
    tests = {c: verdict.compare(cells[c].samples, dense[c].samples, opts.margin, opts.confidence)
             for c in cols if c in cells and c in dense}
    calls = {c: t.call for c, t in tests.items()}
    match = {c: {verdict.WIN: True, verdict.LOSS: False}.get(calls.get(c)) for c in cols}
    missing = [c for c in cols if c not in cells]
    no_dense = [c for c in cols if c in cells and c not in dense]
    losses = [c for c in cols if calls.get(c) == verdict.LOSS]
    opens = [c for c in cols if calls.get(c) == verdict.OPEN]
    failures = [f"{column_name(c)} {tests[c].why}" for c in (losses or opens)]
    failures += [verdict.settle([tests[c] for c in opens])] if opens and not losses else []
    failures += [f"{what} {', '.join(column_name(c) for c in chosen)}"
                 for what, chosen in (("missing", missing), ("no dense run for", no_dense)) if chosen]
    call = verdict.LOSS if losses else verdict.OPEN if failures else verdict.WIN
    return Row(sparsity, family, cells, match, tuple(failures), tests=tests, call=call)


def _cell(runs: list[Run], metric: str) -> Cell | None:
    samples = tuple(verdict.Sample(r.values[metric], r.imp_seed, r.seed, (r.images or {}).get(metric),
                                   (r.correct or {}).get(metric)) for r in runs if r.values[metric] is not None)
    return Cell(tuple(s.value for s in samples), samples) if samples else None


def _costed(row: Row, spent: list[tuple[float | None, ...]]) -> Row:
    """The row with its ticket's finding cost (the largest its runs record) and its transfer runs' cost, in
    device-hours and FLOPs (`spent`: ticket hours, run hours, ticket FLOPs, run FLOPs per run)."""
    found, flops = [t for t, *_ in spent if t is not None], [s[2] for s in spent if s[2] is not None]
    runs = [s[3] for s in spent if s[3] is not None]
    return replace(row, ticket_hours=max(found) if found else None,
                   transfer_hours=sum(s[1] for s in spent if s[1] is not None),
                   ticket_flop=max(flops) if flops else None, transfer_flop=sum(runs) if runs else None)


def analyse(runs: list[Run], opts: Options) -> list[Group]:
    """Group runs by (init, dataset, data_number, *group_by); one row per (sparsity, family), dense first."""
    by_group: dict[tuple, list[Run]] = {}
    for r in runs:
        by_group.setdefault(r.group, []).append(r)
    groups = []
    for key in sorted(by_group):
        members = by_group[key]
        by_cell: dict[tuple, list[Run]] = {}
        spent: dict[tuple, list] = {}
        for r in members:
            spent.setdefault((r.sparsity, r.family), []).append((r.ticket_hours, r.run_hours, r.ticket_flop,
                                                                 r.run_flop))
            by_cell.setdefault((r.sparsity, r.family, r.mode), []).append(r)
        cells: dict[tuple, dict] = {}
        for (sp, src, mode), rs in by_cell.items():
            row = cells.setdefault((sp, src), {})
            row.update({(mode, m): c for m in rs[0].values if (c := _cell(rs, m)) is not None})
        dense = cells.get((0.0, "dense"), {})
        margins = {c: _margin(dense.get(c), opts) for c in match_columns(opts)}
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
