"""What `plan` and `status` print: one line per run with its state, counts per state, a progress bar, the
estimated GPU-hours of what is left and the device-hours measured so far (campaign/spent.py)."""
from __future__ import annotations

import os

from campaign import estimate, spent, state
from campaign.spec import Campaign
from campaign.state import RunState


def summary(campaign: Campaign, rows: list[RunState], measured: list | None = None) -> dict:
    """Counts per state and the estimate, as plain values (`plan --json`): FLOPs left in all and per run, in
    `flop_unit`, and GPU-hours at the assumed rates."""
    measured = spent.measure(rows) if measured is None else measured
    left = {r.run.id: estimate.run_flop(r.run, r.epochs_done) for r in rows if r.state != "done"}
    flop = sum(left.values())
    notes = {r.run.id: estimate.passes(r.run, r.epochs_done).note for r in rows if r.state != "done"}
    return {"spec": campaign.path, "root": campaign.root, "runs": len(rows), "counts": state.counts(rows),
            "left_flop": flop, "flop_unit": estimate.UNIT, "assumed_flop_per_s": dict(estimate.RATE),
            "left_gpu_hours_bf16": round(estimate.gpu_hours(flop, amp=True), 2),
            "left_gpu_hours_fp32": round(estimate.gpu_hours(flop, amp=False), 2),
            "measured_device_hours": spent.summary(measured), "measured_flop": spent.summary(measured, "flop"),
            "states": [{"id": r.run.id, "state": r.state, "detail": r.detail, "save_dir": r.run.save_dir,
                        "left_flop": left.get(r.run.id, 0.0), **({"estimate_note": notes[r.run.id]}
                                                                 if notes.get(r.run.id) else {})}
                       for r in rows]}


def bar(done: int, total: int, width: int = 40) -> str:
    filled = round(width * done / total) if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} done ({100 * done / max(total, 1):.0f}%)"


def counts_line(rows: list[RunState]) -> str:
    c = state.counts(rows)
    return "  ".join(f"{k} {v}" for k, v in c.items())


def by_host(failed_on: dict[str, tuple[str, str]], excluded: list[str] = ()) -> list[str]:
    """Failures grouped by host, most first ("failed on n2: 7 runs: OUT_OF_MEMORY x5, exit 3 (node) x2"), so one
    bad node shows at a glance; then the hosts the campaign no longer submits to."""
    hosts: dict[str, dict[str, int]] = {}
    for host, reason in failed_on.values():
        hosts.setdefault(host, {}).setdefault(reason, 0)
        hosts[host][reason] += 1
    lines = []
    for host, reasons in sorted(hosts.items(), key=lambda kv: -sum(kv[1].values())):
        parts = ", ".join(r + (f" x{n}" if n > 1 else "") for r, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
        n = sum(reasons.values())
        lines.append(f"failed on {host}: {n} run{'s' if n > 1 else ''}: {parts}")
    if excluded:
        lines.append(f"excluded hosts (failures of the node, not the runs): {', '.join(excluded)}")
    return lines


def plan_text(campaign: Campaign, rows: list[RunState], *, only_left: bool = False,
              failed_on: dict[str, tuple[str, str]] | None = None, excluded: list[str] = ()) -> str:
    measured = spent.measure(rows)
    s = summary(campaign, rows, measured)
    width = max((len(r.run.id) for r in rows), default=10)
    lines = [f"{'run':{width}s}  {'state':8s}  detail"]
    for r in rows:
        if only_left and r.state == "done":
            continue
        detail = r.detail or (f"{r.epochs_done} epochs done" if r.epochs_done else "")
        lines.append(f"{r.run.id:{width}s}  {r.state:8s}  {detail}".rstrip())
    lines += ["", *by_host(failed_on or {}, excluded), f"{len(rows)} runs: {counts_line(rows)}",
              f"left: {s['left_flop']:.3g} FLOP (2 per multiply-add, counted as the compute ledger counts), "
              f"~{s['left_gpu_hours_bf16']:.1f} GPU-hours at an assumed {estimate.RATE['bf16'] / 1e12:g} TFLOP/s in bf16, "
              f"~{s['left_gpu_hours_fp32']:.1f} at {estimate.RATE['fp32'] / 1e12:g} in fp32 (estimated, not measured; "
              "see README)",
              *sorted({f"  note: {st['id']}: {st['estimate_note']}" for st in s["states"] if "estimate_note" in st})]
    spent_lines = spent.table(measured)
    lines += ["", "device-hours measured so far (the runs' compute ledgers):", *spent_lines] if spent_lines else []
    return "\n".join(lines)


def status_text(campaign: Campaign, rows: list[RunState], failed_on: dict[str, tuple[str, str]] | None = None,
                excluded: list[str] = ()) -> str:
    """A table per init x dataset-fraction (runs done of all, states) and the campaign's progress bar."""
    groups: dict[str, list[RunState]] = {}
    for r in rows:
        key = "IMP stages" if r.run.kind == "imp" else "/".join(r.run.id.split("/")[:2])
        groups.setdefault(key, []).append(r)
    width = max((len(k) for k in groups), default=10)
    lines = [f"{'group':{width}s}  {'done':>9s}  states"]
    for key, rs in groups.items():
        done = sum(r.state == "done" for r in rs)
        c = {k: v for k, v in state.counts(rs).items() if v and k != "done"}
        lines.append(f"{key:{width}s}  {done:>4d}/{len(rs):<4d}  " + ", ".join(f"{k} {v}" for k, v in c.items()))
    failed = [r for r in rows if r.state == "failed"]
    lines += [f"  failed {r.run.id}: {r.detail}" for r in failed[:10]]
    if len(failed) > 10:
        lines.append(f"  ... and {len(failed) - 10} more failed (sweep.py plan SPEC lists them)")
    lines += [f"  running {r.run.id}, {r.detail}" for r in rows if r.state == "running" and r.detail.startswith(state.NO_PROGRESS)]
    lines += by_host(failed_on or {}, excluded)
    done = sum(r.state == "done" for r in rows)
    spent_lines = spent.table(spent.measure(rows))
    lines += ["", "device-hours measured so far (the runs' compute ledgers):", *spent_lines] if spent_lines else []
    lines += ["", bar(done, len(rows)), counts_line(rows)]
    if done == len(rows):
        rel = os.path.relpath(campaign.path)
        shown = campaign.path if rel.startswith("..") else rel
        lines.append(f"complete: the report is `python sweep.py report {shown}`")
    return "\n".join(lines)
