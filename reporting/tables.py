"""Renders a double-win Report as text: a fixed-width terminal table, Markdown, CSV and a JSON summary.

Everything is sorted, so the same runs always give byte-identical output.
"""
from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

from reporting import costs
from reporting.runs import METRICS, REGIMES, Options, column_name, match_columns, pairing

if TYPE_CHECKING:
    from reporting.analysis import Cell, Group, Report, Row

ALL_COLUMNS = [(m, k) for m in REGIMES for k in METRICS]  # every column the CSV carries, present or not


def rule_lines(report: Report) -> list[str]:
    """What the numbers mean: stated with every table."""
    o = report.opts
    ra = "PGD (test_ra)" if o.ra == "pgd" else "AutoAttack (test_aa_ra)"
    return [f"{report.runs_read} runs read under {report.root}; {len(report.problems)} problem(s) listed below",
            f"test numbers: {pairing(o)}",
            f"robust accuracy deciding the match: {ra} (--ra {o.ra})", *verdict_lines(o),
            "double-win: matches the dense model on SA and RA after both standard and adversarial transfer"]


def verdict_lines(o: Options) -> list[str]:
    if o.verdict == "point":
        return ["match (--verdict point): ticket mean >= dense mean - margin; margin = sample std (ddof=1) of the "
                f"dense seeds when the dense cell has >= 2 seeds, else --tolerance {o.tolerance:g} accuracy points"]
    c = f"{100 * o.confidence:g}%"
    return [f"match (--verdict stat): per column, one-sided {c} bounds on ticket - dense (seed-to-seed variance, "
            "IMP seeds as units where a ticket has several, paired with the dense run of the same transfer seed "
            "where each unit has its own seeds; plus the test set's sampling, paired per image where runs stored "
            "it); yes: lower bound > "
            f"-{o.margin:g} (--margin, accuracy points); no: upper bound < -{o.margin:g}; ?: inconclusive"]


def shown_columns(group: Group, opts: Options) -> list[tuple[str, str]]:
    """The four matching columns, plus the other robust accuracy where any run of the group has it."""
    cols = set(match_columns(opts))
    cols |= {c for row in group.rows for c in row.cells if c[1] != "sa"}
    return [c for c in ALL_COLUMNS if c in cols]


def percent(sparsity: float) -> str:
    return f"{100 * sparsity:.2f}%"


def cell_text(cell: Cell | None, match: bool | None, judged: bool = False, stat: bool = False) -> str:
    """mean+-std n=..., then yes / - (point rule) or yes / no / ? (the test; ? when judged but inconclusive)."""
    if cell is None:
        return "missing"
    text = f"{cell.mean:.2f}" + (f"+-{cell.std:.2f}" if cell.std is not None else "") + f" {cell.replicates}"
    if stat:
        return text + ({True: " yes", False: " no"}[match] if match is not None else " ?" if judged else "")
    return text + {True: " yes", False: " -", None: ""}[match]


def headline(group: Group) -> str:
    best = group.highest()
    text = f"{percent(best.sparsity)} ({best.family})" if best else "none"
    families = sorted({r.family for r in group.rows if not r.dense})
    if len(families) > 1:
        per = [f"{s} {percent(group.highest(s).sparsity) if group.highest(s) else 'none'}" for s in families]
        text += "; by family: " + ", ".join(per)
    return text


def margin_line(group: Group) -> str:
    if len(set(group.margins.values())) == 1 and next(iter(group.margins.values()))[0] is not None:
        m, why = next(iter(group.margins.values()))
        return f"margin in every column: {m:.2f} ({why})"
    parts = [f"{column_name(c)} " + (f"{m:.2f} ({why})" if m is not None else f"- ({why})")
             for c, (m, why) in group.margins.items()]
    return "margins: " + ", ".join(parts)


def table(group: Group, opts: Options) -> tuple[list[str], list[list[str]]]:
    cols = shown_columns(group, opts)
    header = ["sparsity", "remaining", "family", *map(column_name, cols), "double-win", "status"]
    rows = [[percent(r.sparsity), percent(1 - r.sparsity), r.family,
             *(cell_text(r.cells.get(c), r.match.get(c), c in (r.tests or {}), opts.verdict == "stat")
               for c in cols),
             "yes" if r.double_win else "-", r.status] for r in group.rows]
    return header, rows


def _fixed(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(map(len, col)) for col in zip(header, *rows)]
    return ["  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in (header, *rows)]


def render_text(report: Report) -> str:
    out = ["== double-win report", *rule_lines(report)]
    for g in report.groups:
        out += ["", f"== {g.title} ({g.runs} runs; {pairing(report.opts, short=True)})", margin_line(g),
                *_fixed(*table(g, report.opts)),
                f"highest double-win sparsity: {headline(g)}", *(f"note: {n}" for n in g.notes),
                "ticket families, the verdict against what it cost (FLOPs and device-hours measured):",
                *("  " + line for line in _fixed(*costs.cost_table(g, report.overlap)))]
    out += ["", f"runs with problems ({len(report.problems)}):" if report.problems else "runs with problems: none"]
    out += [f"  {p.path}: {p.reason}" for p in report.problems]
    return "\n".join(out) + "\n"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def render_markdown(report: Report, figures: dict[tuple, str]) -> str:
    """`figures`: group key (or ("overview", dataset, data_number, ...)) -> PNG file name next to report.md."""
    out = ["# Double-win report", "", *(f"- {line}" for line in rule_lines(report)), "",
           "## Highest double-win sparsity", "",
           _md_row(["init", "dataset", "data_number", *report.opts.group_by, "highest double-win sparsity"]),
           _md_row(["---"] * (4 + len(report.opts.group_by)))]
    out += [_md_row([g.key[0], g.key[1], f"{g.key[2]:g}", *g.key[3:], headline(g)]) for g in report.groups]
    out += [f"\n![{k[1]} data_number {k[2]:g}]({name})" for k, name in sorted(figures.items()) if k[0] == "overview"]
    out += [f"\n![double-win sparsity against the cost of finding the tickets]({figures[('cost',)]})"] \
        if ("cost",) in figures else []
    for g in report.groups:
        header, rows = table(g, report.opts)
        out += ["", f"## {g.title}", "", f"{g.runs} runs; test numbers: {pairing(report.opts)}; {margin_line(g)}",
                "", _md_row(header),
                _md_row(["---"] * len(header)), *map(_md_row, rows), "",
                f"Highest double-win sparsity: **{headline(g)}**", *(f"\n> note: {n}" for n in g.notes)]
        header, rows = costs.cost_table(g, report.overlap)
        out += ["", "Ticket families, the verdict against what it cost (FLOPs and device-hours measured):", "",
                _md_row(header), _md_row(["---"] * len(header)), *map(_md_row, rows)]
        if g.key in figures:
            out += ["", f"![{g.title}]({figures[g.key]})"]
    out += ["", "## Runs with problems", ""]
    out += [f"- `{p.path}`: {p.reason}" for p in report.problems] or ["none"]
    return "\n".join(out) + "\n"


def _num(v: float | None) -> str:
    return "" if v is None or v != v else f"{v:.4f}"


def render_csv(report: Report) -> str:
    """One line per group x (sparsity, family): every cell's mean/std/n/match (1/0, empty when not judged)."""
    metric_cols = [f"{m}_{k}_{f}" for m, k in ALL_COLUMNS
                   for f in ("mean", "std", "n", "match", "imp_seeds", "lower", "upper", "call")]
    header = ["init", "dataset", "data_number", *report.opts.group_by, "family", "sparsity", "remaining",
              *metric_cols, "double_win", "call", "status", "ticket_device_hours", "transfer_device_hours",
              "checkpoint", "ra", "verdict", "tolerance", "margin", "confidence"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for g in report.groups:
        for r in g.rows:
            cells = []
            for c in ALL_COLUMNS:
                cell, match, test = r.cells.get(c), r.match.get(c), (r.tests or {}).get(c)
                cells += [_num(cell.mean), _num(cell.std), cell.n] if cell else ["", "", 0]
                cells.append("" if match is None else int(match))
                cells += [cell.imp_seeds if cell else 0, *((_num(test.lower), _num(test.upper), test.call)
                                                            if test else ("", "", ""))]
            o = report.opts
            w.writerow([g.key[0], g.key[1], f"{g.key[2]:g}", *g.key[3:], r.family, f"{r.sparsity:.4f}",
                        f"{1 - r.sparsity:.4f}", *cells, int(r.double_win), r.call, r.status, _num(r.ticket_hours),
                        _num(r.transfer_hours), o.checkpoint, o.ra, o.verdict, o.tolerance, o.margin, o.confidence])
    return buf.getvalue()


def _test_json(test) -> dict | None:
    if test is None:
        return None
    finite = {k: (v if abs(v) != float("inf") else None) for k, v in
              (("diff", test.diff), ("lower", test.lower), ("upper", test.upper), ("se", test.se), ("df", test.df))}
    return {"call": test.call, **finite, "paired": test.paired, "by_seed": test.by_seed, "why": test.why,
            "seeds_to_settle": test.seeds, "advice": test.advice}


def _row_json(r: Row) -> dict:
    cells = {column_name(c): {"mean": cell.mean, "std": cell.std, "n": cell.n, "values": list(cell.values),
                              "imp_seeds": cell.imp_seeds, "replicates": cell.replicates, "match": r.match.get(c),
                              "test": _test_json((r.tests or {}).get(c))} for c, cell in sorted(r.cells.items())}
    return {"sparsity": r.sparsity, "family": r.family, "double_win": r.double_win, "call": r.call,
            "status": r.status,
            "cells": cells, "ticket_device_hours": r.ticket_hours, "transfer_device_hours": r.transfer_hours}


def summary(report: Report) -> dict:
    groups = []
    for g in report.groups:
        families = sorted({r.family for r in g.rows if not r.dense})
        best = {s: (g.highest(s).sparsity if g.highest(s) else None) for s in families}
        top = g.highest()
        groups.append({
            "init": g.key[0], "dataset": g.key[1], "data_number": g.key[2], "group_by": dict(zip(g.group_by, g.key[3:])),
            "runs": g.runs, "highest_double_win": {"sparsity": top.sparsity, "family": top.family} if top else None,
            "highest_double_win_by_family": best, "notes": list(g.notes),
            "margins": {column_name(c): {"value": m, "rule": why} for c, (m, why) in g.margins.items()},
            "rows": [_row_json(r) for r in g.rows], "families": costs.costs_json(g, report.overlap),
            "overlap": {f: report.overlap.judged(g.key[0], f, [r.sparsity for r in g.rows if r.family == f])
                        for f in sorted({r.family for r in g.rows if not r.dense})}})
    o = report.opts
    return {"root": report.root, "checkpoint": o.checkpoint, "ra": o.ra, "tolerance": o.tolerance,
            "verdict": o.verdict, "margin": o.margin, "confidence": o.confidence,
            "overlap_reference": report.overlap.reference,
            "group_by": list(o.group_by), "runs_read": report.runs_read,
            "problems": [{"path": p.path, "reason": p.reason} for p in report.problems], "groups": groups}
