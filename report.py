"""The double-win report over a tree of downstream runs: the table on stdout, and report.md/.csv/.json and plots
in --out. The data model is reporting/analysis.py (reading: reporting/runs.py), the renderers
reporting/tables.py and reporting/plots.py, the files reporting/output.py.

    python report.py ROOT [--out DIR] [--checkpoint sa|ra|each|last] [--ra pgd|aa] [--verdict stat|point] [--margin 1] [--confidence 0.95]
                     [--tolerance 0.5] [--group-by KEY,...]
"""
from __future__ import annotations

import argparse
import math
import os

from infra.errors import OneLineParser, UserError, run_cli
from reporting import tables as report_tables
from reporting.analysis import collect
from reporting.output import write_report
from reporting.runs import CHECKPOINTS, VERDICTS, Options


def get_args_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description="Double-win table and plots from downstream runs' results.json.")
    p.add_argument("root", metavar="ROOT", help="folder tree holding the downstream run folders")
    p.add_argument("--out", default=None, help="folder for report.md/.csv/.json and PNGs (default: ROOT/report)")
    p.add_argument("--checkpoint", choices=list(CHECKPOINTS), default="sa",
                   help="test numbers of the best-validation-SA checkpoint, of the best-validation-RA one, "
                        "each: SA of the best-SA checkpoint and RA of the best-RA one (the original printed all four), "
                        "or last: the weights after the last epoch (no choice on the validation set)")
    p.add_argument("--ra", choices=("pgd", "aa"), default="pgd",
                   help="robust accuracy that decides matching: PGD (test_ra) or AutoAttack (test_aa_ra)")
    p.add_argument("--tolerance", type=float, default=0.5,
                   help="--verdict point: accuracy points a ticket may lose when the dense model has one seed (else its "
                        "std is used)")
    p.add_argument("--verdict", choices=VERDICTS, default="stat",
                   help="stat: a one-sided non-inferiority test per column (double-win / not double-win / "
                        "inconclusive; docs/VERDICT.md); point: the older rule (ticket mean >= dense mean - std)")
    p.add_argument("--margin", type=float, default=Options.margin,
                   help="accuracy points a ticket may lose and still match the dense model (--verdict stat)")
    p.add_argument("--confidence", type=float, default=Options.confidence,
                   help="confidence of each one-sided bound (--verdict stat), between 0.5 and 1")
    p.add_argument("--group-by", default="", metavar="KEY[,KEY]",
                   help="extra results.json keys (dotted for nested, e.g. subset,test_attack.eps_255) that split "
                        "groups beyond init/dataset/data_number")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise UserError(f"--tolerance {args.tolerance} must be a number >= 0 (accuracy points)")
    opts = Options(checkpoint=args.checkpoint, ra=args.ra, tolerance=args.tolerance, verdict=args.verdict,
                   margin=args.margin, confidence=args.confidence,
                   group_by=tuple(k.strip() for k in args.group_by.split(",") if k.strip()))
    report = collect(args.root, opts)
    print(report_tables.render_text(report), end="")
    for path in write_report(report, args.out or os.path.join(args.root, "report"), plots=not args.no_plots):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
