"""The report's files: report.md, report.csv, report.json and the PNG figures, written atomically."""
from __future__ import annotations

import os
import re

from infra import checkpoint
from reporting import plots as report_plots
from reporting import tables as report_tables
from reporting.analysis import Group, Report


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
        if report_plots.plot_costs(list(report.groups), report.overlap, os.path.join(out, "cost.png")):
            figures[("cost",)] = "cost.png"
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
