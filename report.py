"""The double-win report (library + CLI): groups downstream runs by (init, dataset, data_number), one row per
ticket sparsity, and marks a ticket double-win when it matches the dense model on SA and RA after both standard
and adversarial transfer. Reading lives in report_runs.py, rendering in report_tables.py and report_plots.py.

    python report.py ROOT [--out DIR] [--checkpoint sa|ra] [--ra pgd|aa] [--tolerance 0.5] [--group-by KEY,...]
"""
from __future__ import annotations

import argparse
import math
import os
import re
import statistics
from dataclasses import dataclass

import checkpoint
import report_plots
import report_tables
from errors import OneLineParser, UserError, run_cli
from report_runs import WATCH, Options, Problem, Run, column_name, match_columns, scan

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


def analyse(runs: list[Run], opts: Options) -> list[Group]:
    """Group runs by (init, dataset, data_number, *group_by); one row per (sparsity, source), dense first."""
    by_group: dict[tuple, list[Run]] = {}
    for r in runs:
        by_group.setdefault(r.group, []).append(r)
    groups = []
    for key in sorted(by_group):
        members = by_group[key]
        values: dict[tuple, dict] = {}
        for r in members:
            row = values.setdefault((r.sparsity, r.source), {})
            for metric, v in r.values.items():
                if v is not None:
                    row.setdefault((r.mode, metric), []).append(v)
        cells = {rk: {c: Cell(tuple(v)) for c, v in row.items()} for rk, row in values.items()}
        dense = cells.get((0.0, "dense"), {})
        margins = {c: _margin(dense.get(c), opts.tolerance) for c in match_columns(opts)}
        rows = tuple(_judge(sp, src, cells[(sp, src)], dense, margins, opts) for sp, src in sorted(cells))
        notes = [f"runs differ in {k} ({', '.join(sorted({r.settings[k] for r in members}))}); "
                 f"split them with --group-by {k}" for k in WATCH if len({r.settings[k] for r in members}) > 1]
        if not dense:
            notes.append("no dense run (ticket: null / sparsity 0): nothing to match against")
        groups.append(Group(key, rows, margins, tuple(notes), len(members), opts.group_by))
    return groups


def collect(root: str, opts: Options) -> Report:
    runs, problems = scan(root, opts)
    return Report(root, opts, tuple(analyse(runs, opts)), tuple(problems), len(runs))


# ---------------------------------------------------------------------------- outputs
def _slug(*parts) -> str:
    text = "_".join(f"{p:g}" if isinstance(p, float) else str(p) for p in parts)
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_") or "group"


def write_report(report: Report, out: str, *, plots: bool = True) -> list[str]:
    """report.md, report.csv, report.json and (with `plots`) one PNG per group plus one per dataset/fraction
    comparing several inits. Returns the paths written."""
    os.makedirs(out, exist_ok=True)
    figures: dict[tuple, str] = {}
    if plots:
        taken: set[str] = set()
        by_data: dict[tuple, list[Group]] = {}
        for g in report.groups:
            by_data.setdefault((g.key[1], *g.key[2:]), []).append(g)
        jobs = [(g.key, _slug(*g.key), report_plots.plot_group, g) for g in report.groups]
        jobs += [(("overview", *k), _slug("overview", *k), report_plots.plot_overview, gs)
                 for k, gs in sorted(by_data.items()) if len(gs) > 1]
        for key, stem, plot, what in jobs:
            name, i = stem + ".png", 1
            while name in taken:  # two labels that slug alike
                name, i = f"{stem}_{i}.png", i + 1
            taken.add(name)
            plot(what, report.opts, os.path.join(out, name))
            figures[key] = name
    texts = {"report.md": report_tables.render_markdown(report, figures),
             "report.csv": report_tables.render_csv(report)}
    for name, text in texts.items():
        checkpoint.atomic_write_text(os.path.join(out, name), text)
    checkpoint.atomic_write_json(os.path.join(out, "report.json"), report_tables.summary(report))
    return [os.path.join(out, n) for n in (*texts, "report.json", *sorted(figures.values()))]


# ---------------------------------------------------------------------------- command line
def get_args_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description="Double-win table and plots from downstream runs' results.json.")
    p.add_argument("root", metavar="ROOT", help="folder tree holding the downstream run folders")
    p.add_argument("--out", default=None, help="folder for report.md/.csv/.json and PNGs (default: ROOT/report)")
    p.add_argument("--checkpoint", choices=("sa", "ra"), default="sa",
                   help="take test numbers from the best-validation-SA or best-validation-RA checkpoint")
    p.add_argument("--ra", choices=("pgd", "aa"), default="pgd",
                   help="robust accuracy that decides matching: PGD (test_ra) or AutoAttack (test_aa_ra)")
    p.add_argument("--tolerance", type=float, default=0.5,
                   help="accuracy points a ticket may lose when the dense model has one seed (else its std is used)")
    p.add_argument("--group-by", default="", metavar="KEY[,KEY]",
                   help="extra results.json keys (dotted for nested, e.g. subset,test_attack.eps_255) that split "
                        "groups beyond init/dataset/data_number")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise UserError(f"--tolerance {args.tolerance} must be a number >= 0 (accuracy points)")
    opts = Options(checkpoint=args.checkpoint, ra=args.ra, tolerance=args.tolerance,
                   group_by=tuple(k.strip() for k in args.group_by.split(",") if k.strip()))
    report = collect(args.root, opts)
    print(report_tables.render_text(report), end="")
    for path in write_report(report, args.out or os.path.join(args.root, "report"), plots=not args.no_plots):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
