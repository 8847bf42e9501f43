"""The paper's campaign from one TOML spec (see README, "The campaign"): every ticket x dataset x fraction x
transfer mode x seed, run as the bash drivers a user would type, on this machine or on SLURM.

    python sweep.py plan campaign/example.toml                  # every run and its state, GPU-hours left
    python sweep.py run SPEC --local --gpus 0,1,2,3             # a queue on this machine (--jobs N on CPU)
    python sweep.py run SPEC --slurm --partition gpu --time 24:00:00 --follow
    python sweep.py run SPEC --print                            # the plain commands, one per line
    python sweep.py status SPEC                                 # progress;  report SPEC: the double-win report
    python sweep.py check-data DIR                              # every image decodes, same classes in each split
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

from infra import errors
from campaign import datacheck, local, observe, slurm, slurmstate, spec, state, status
from infra.checkpoint import atomic_write_json
from infra.errors import OneLineParser, UserError


def _extra(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--sbatch {item!r}: expected KEY=VALUE (an sbatch option without its dashes)")
        out[key.replace("-", "_")] = value
    return out


def _hours_text(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def get_args_parser() -> OneLineParser:
    d = slurm.SlurmOptions()  # the --slurm flags' defaults, declared there
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    q = sub.add_parser("plan", help="every run with its state, counts, GPU-hours left")
    q.add_argument("spec", metavar="SPEC")
    q.add_argument("--json", metavar="FILE", help="also write the plan as JSON")
    q = sub.add_parser("status", help="progress per group and a bar")
    q.add_argument("spec", metavar="SPEC")
    q = sub.add_parser("report", help="the double-win report over the campaign's root (after tickets.py overlap)")
    q.add_argument("spec", metavar="SPEC")
    q.add_argument("report_args", nargs="*", metavar="REPORT_FLAG", help="passed to report.py (after --)")
    q = sub.add_parser("check-data", help="check folder datasets before a long run")
    q.add_argument("dirs", nargs="+", metavar="DIR", help="folder with train/ and val/ and/or test/")
    q = sub.add_parser("run", help="launch what is not done and not running")
    q.add_argument("spec", metavar="SPEC")
    how = q.add_mutually_exclusive_group(required=True)
    how.add_argument("--local", action="store_true", help="a queue on this machine")
    how.add_argument("--slurm", action="store_true", help="job arrays on SLURM through submitit")
    how.add_argument("--print", action="store_true", help="print the commands, one per line, and stop")
    g = q.add_argument_group("--local")
    g.add_argument("--gpus", default=None, metavar="0,1,...", help="one run per GPU (IMP stages take their gpus)")
    g.add_argument("--jobs", type=int, default=1, metavar="N", help="CPU runs at once, each with its share of cores")
    g = q.add_argument_group("--slurm")
    g.add_argument("--partition", default=d.partition)
    g.add_argument("--time", default=_hours_text(d.time_min), help="time limit per job; a run that hits it is requeued")
    g.add_argument("--gpus-per-run", type=int, default=d.gpus_per_run, help="GPUs of each transfer run (0: CPU)")
    g.add_argument("--cpus-per-run", type=int, default=d.cpus_per_run, help="CPUs of each run (OMP_NUM_THREADS too)")
    g.add_argument("--array-parallelism", type=int, default=d.array_parallelism, metavar="K",
                   help="elements of one job array running at once (per array; --max-in-flight caps the campaign)")
    g.add_argument("--max-in-flight", type=int, default=d.max_in_flight, metavar="N",
                   help="runs queued or running at once, campaign-wide; --follow submits more as runs end")
    g.add_argument("--account", default=d.account)
    g.add_argument("--qos", default=d.qos)
    g.add_argument("--max-requeue", type=int, default=d.max_requeue, help="requeues after a time limit, per run")
    g.add_argument("--signal-delay", type=int, default=d.signal_delay_s, metavar="S",
                   help="seconds before the time limit that the requeue starts")
    g.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE", help="any other sbatch option")
    g.add_argument("--follow", action="store_true",
                   help="stay: submit runs as tickets appear, resubmit killed jobs, end when all are done or failed")
    g.add_argument("--poll", type=float, default=30.0, help="seconds between checks with --follow")
    g.add_argument("--forget-hosts", action="store_true",
                   help="clear the hosts excluded for failures of the node (they also expire a day after)")
    return p


def _show(campaign: spec.Campaign, args) -> int:
    """plan / status: the runs as their files and SLURM say (a queue SLURM cannot tell is said, not guessed)."""
    view = observe.observe(campaign, strict=False, persist=False)
    if view.note:
        print(f"warning: {view.note}", file=sys.stderr)
    if args.command == "status":
        print(status.status_text(campaign, view.rows, view.failed_on, view.excluded))
        return 0
    print(status.plan_text(campaign, view.rows, failed_on=view.failed_on, excluded=view.excluded))
    if args.json:
        atomic_write_json(args.json, status.summary(campaign, view.rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.command == "check-data":
        return datacheck.main_check(args.dirs)
    campaign = spec.load(args.spec)
    if args.command in ("plan", "status"):
        return _show(campaign, args)
    if args.command == "report":  # the ticket families' mask overlap first (report.py never opens a ticket)
        if subprocess.call([sys.executable, os.path.join(spec.REPO, "tickets.py"), "overlap", campaign.root]):
            print("note: no ticket overlap (see the line above); the report's IoU column stays empty")
        cmd = [sys.executable, os.path.join(spec.REPO, "report.py"), campaign.root, *args.report_args]
        return subprocess.call(cmd)
    if args.print:
        for run in campaign.runs:
            print(shlex.join(run.command))
        return 0
    state.hold_campaign(campaign)  # one `run` per campaign at a time, until this process ends
    if args.slurm and args.forget_hosts:
        was = slurmstate.forget_hosts(campaign)
        print(f"forgot the excluded hosts: {', '.join(was)}" if was else "no host was excluded")
    if args.local:
        if args.jobs < 1:
            raise UserError(f"--jobs {args.jobs}: at least 1")
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
        exits = local.run_local(campaign, gpus=gpus, jobs=args.jobs, queued=slurm.queued(campaign))
        rows = state.states(campaign)
        print(status.counts_line(rows))
        return 1 if any(exits.values()) else 0
    return 1 if slurm.run_slurm(campaign, slurm_options(args), follow=args.follow, poll=args.poll) else 0


def slurm_options(args) -> slurm.SlurmOptions:
    """The --slurm flags of `run`, checked."""
    if args.max_in_flight is not None and args.max_in_flight < 1:
        raise UserError(f"--max-in-flight {args.max_in_flight}: at least 1")
    return slurm.SlurmOptions(partition=args.partition, time_min=spec.parse_time_min(args.time, "--time"),
                              gpus_per_run=args.gpus_per_run, cpus_per_run=args.cpus_per_run,
                              array_parallelism=args.array_parallelism, account=args.account, qos=args.qos,
                              max_requeue=args.max_requeue, signal_delay_s=args.signal_delay,
                              extra=_extra(args.sbatch), max_in_flight=args.max_in_flight)


if __name__ == "__main__":
    errors.run_cli(main)
