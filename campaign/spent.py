"""What the campaign's runs cost, measured: each run's compute ledger (its metrics.jsonl rows' `cost`, and
results.json's total once a transfer run is done; see training/ledger.py) beside the FLOP-count estimate of
campaign/estimate.py, per init and ticket family, and how far the estimate was off (in FLOPs and in hours) for the runs
that are done."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from campaign import estimate
from campaign.spec import Run
from campaign.state import METRICS, RESULTS, RunState


@dataclass(frozen=True)
class Measured:
    """What a run's files record: device-hours, and FLOPs (None where the ledger has no `flop`)."""
    hours: float
    flop: float | None


def _ledger(c) -> Measured | None:
    if not isinstance(c, dict) or not isinstance(c.get("device_s", c.get("device_hours")), (int, float)):
        return None
    hours = c["device_hours"] if isinstance(c.get("device_hours"), (int, float)) else c["device_s"] / 3600
    return Measured(float(hours), float(c["flop"]) if isinstance(c.get("flop"), (int, float)) else None)


def measured_cost(run: Run, done: bool) -> Measured | None:
    """What the run's files record: results.json's total (a finished transfer run: its epochs and final tests),
    else the sum of its epochs' ledgers; None where nothing records a cost."""
    if done and run.kind == "transfer":
        try:
            with open(os.path.join(run.save_dir, RESULTS)) as f:
                total = _ledger(json.load(f).get("cost"))
            if total is not None:
                return total
        except (OSError, ValueError, AttributeError):
            pass
    rows: list[Measured] = []
    try:
        with open(os.path.join(run.save_dir, METRICS)) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a torn last line
                m = _ledger(row.get("cost") if isinstance(row, dict) else None)
                rows += [m] if m is not None else []
    except OSError:
        return None
    if not rows:
        return None
    flop = None if any(m.flop is None for m in rows) else sum(m.flop for m in rows)
    return Measured(sum(m.hours for m in rows), flop)


def measured_hours(run: Run, done: bool) -> float | None:
    """Device-hours the run's files record (`measured_cost`), None where nothing records a cost."""
    m = measured_cost(run, done)
    return None if m is None else m.hours


def estimated_hours(run: Run) -> float:
    """The FLOP-count estimate of the whole run, in its precision (--amp: the bf16 rate)."""
    amp = estimate.flags(run).get("--amp") in ("bf16", "fp16")
    return estimate.gpu_hours(estimate.run_flop(run, 0), amp=amp)


def family(run: Run) -> str:
    """The cost group of a run: an IMP stage by its id (imp:<init>/<tickets>), a transfer run by its init and
    ticket family (the ticket folder's name less its level: "robust aimp", "robust dense")."""
    if run.kind == "imp":
        return run.id
    parts = run.id.split("/")
    if len(parts) < 3:  # not a spec's run id (<init>/<dataset>-<fraction>/<ticket>/<mode>/s<seed>)
        return run.id
    return f"{parts[0]} {parts[2].rsplit('-', 1)[0] if parts[2] != 'dense' else 'dense'}"


def measure(rows: list[RunState]) -> list[tuple[RunState, Measured]]:
    """(row, what it measured) for every run whose files record a cost, each run's files read once; runs with no
    epoch done and not done have none (their files are not opened)."""
    out = []
    for r in rows:
        if r.state == "done" or r.epochs_done:
            m = measured_cost(r.run, r.state == "done")
            if m is not None:
                out.append((r, m))
    return out


def _ratio(pairs: list[tuple[float | None, float]]) -> str:
    if not pairs or any(a is None for a, _ in pairs) or not sum(e for _, e in pairs):
        return "-"
    return f"{sum(a for a, _ in pairs) / sum(e for _, e in pairs):.2f}"


def table(measured: list[tuple[RunState, Measured]]) -> list[str]:
    """Lines: per cost group, runs with a ledger, device-hours measured, the estimate for those runs, and over the
    runs that are done the measured/estimated ratios of FLOPs (the same counter: how well the estimate models what
    the runs did) and of hours (the device's speed against the assumed rate). `measured`: from `measure`."""
    groups: dict[str, list] = {}
    for r, m in measured:
        groups.setdefault(family(r.run), []).append((r, m))
    out = [f"{'compute':28s}  {'runs':>5s}  {'measured':>10s}  {'estimated':>10s}  "
           "measured/estimated FLOP, hours (done runs)"]
    for key, seen in groups.items():
        estimates = {r.run.id: (estimate.run_flop(r.run, 0), estimated_hours(r.run)) for r, _ in seen}
        done = [(m, estimates[r.run.id]) for r, m in seen if r.state == "done"]
        flop = _ratio([(m.flop, e[0]) for m, e in done])
        hours = _ratio([(m.hours, e[1]) for m, e in done])
        out.append(f"{key:28s}  {len(seen):>5d}  {sum(m.hours for _, m in seen):>10.3g}  "
                   f"{sum(e[1] for e in estimates.values()):>10.3g}  {flop}, {hours} ({len(done)} done)")
    return out if len(out) > 1 else []


def summary(measured: list[tuple[RunState, Measured]], what: str = "hours") -> dict:
    """Measured device-hours (`what` = "flop": FLOPs, over the runs whose ledgers count them) per cost group
    (plan --json); `measured`: from `measure`."""
    out: dict[str, float] = {}
    for r, m in measured:
        value = getattr(m, what)
        if value is not None:
            out[family(r.run)] = out.get(family(r.run), 0.0) + value
    return out
