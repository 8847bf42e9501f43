"""What the campaign's runs cost, measured: each run's compute ledger (its metrics.jsonl rows' `cost`, and
results.json's total once a transfer run is done; see training/ledger.py) beside the FLOP-count estimate of
campaign/cost.py, per init and ticket family, and how far the estimate was off for the runs that are done."""
from __future__ import annotations

import json
import os

from campaign import cost
from campaign.spec import Run
from campaign.state import METRICS, RESULTS, RunState


def measured_hours(run: Run, done: bool) -> float | None:
    """Device-hours the run's files record: results.json's total (a finished transfer run: its epochs and final
    tests), else the sum of its epochs' ledgers; None where nothing records a cost."""
    if done and run.kind == "transfer":
        try:
            with open(os.path.join(run.save_dir, RESULTS)) as f:
                total = json.load(f).get("cost")
            if isinstance(total, dict) and isinstance(total.get("device_hours"), (int, float)):
                return float(total["device_hours"])
        except (OSError, ValueError, AttributeError):
            pass
    seconds, seen = 0.0, False
    try:
        with open(os.path.join(run.save_dir, METRICS)) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a torn last line
                c = row.get("cost") if isinstance(row, dict) else None
                if isinstance(c, dict) and isinstance(c.get("device_s"), (int, float)):
                    seconds, seen = seconds + c["device_s"], True
    except OSError:
        return None
    return seconds / 3600 if seen else None


def estimated_hours(run: Run) -> float:
    """The FLOP-count estimate of the whole run, in its precision (--amp: the bf16 rate)."""
    amp = cost.flags(run).get("--amp") in ("bf16", "fp16")
    return cost.gpu_hours(cost.run_flop(run, 0), amp=amp)


def family(run: Run) -> str:
    """The cost group of a run: an IMP stage by its id (imp:<init>/<tickets>), a transfer run by its init and
    ticket family (the ticket folder's name less its level: "robust aimp", "robust dense")."""
    if run.kind == "imp":
        return run.id
    parts = run.id.split("/")
    if len(parts) < 3:  # not a spec's run id (<init>/<dataset>-<fraction>/<ticket>/<mode>/s<seed>)
        return run.id
    return f"{parts[0]} {parts[2].rsplit('-', 1)[0] if parts[2] != 'dense' else 'dense'}"


def measure(rows: list[RunState]) -> list[tuple[RunState, float]]:
    """(row, device-hours) of every run whose files record a cost, each run's files read once; runs with no
    epoch done and not done have none (their files are not opened)."""
    out = []
    for r in rows:
        if r.state == "done" or r.epochs_done:
            hours = measured_hours(r.run, r.state == "done")
            if hours is not None:
                out.append((r, hours))
    return out


def table(measured: list[tuple[RunState, float]]) -> list[str]:
    """Lines: per cost group, runs with a ledger, device-hours measured, the estimate for those runs, and the
    measured/estimated ratio over the runs that are done (`measured`: from `measure`)."""
    groups: dict[str, list] = {}
    for r, hours in measured:
        groups.setdefault(family(r.run), []).append((r, hours))
    out = [f"{'compute':28s}  {'runs':>5s}  {'measured':>10s}  {'estimated':>10s}  measured/estimated (done runs)"]
    for key, seen in groups.items():
        done = [(h, estimated_hours(r.run)) for r, h in seen if r.state == "done"]
        ratio = f"{sum(h for h, _ in done) / sum(e for _, e in done):.2f}" if done and sum(e for _, e in done) \
            else "-"
        out.append(f"{key:28s}  {len(seen):>5d}  {sum(h for _, h in seen):>10.3g}  "
                   f"{sum(estimated_hours(r.run) for r, _ in seen):>10.3g}  {ratio} ({len(done)} done)")
    return out if len(out) > 1 else []


def summary(measured: list[tuple[RunState, float]]) -> dict:
    """Measured device-hours per cost group (plan --json); `measured`: from `measure`."""
    out: dict[str, float] = {}
    for r, h in measured:
        out[family(r.run)] = out.get(family(r.run), 0.0) + h
    return out
