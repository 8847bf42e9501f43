"""The state of every run of a campaign, read from its files only: done, running (and whether it still makes
progress), stale (its lease's holder gave no heartbeat for too long, or died), queued, failed, partial, pending
or waiting (for a ticket an IMP stage has not made yet); and the campaign's own lease (one `sweep.py run` at a
time)."""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Iterator

from campaign.spec import Campaign, Run
from infra import lease, leaseholder, watchdog
from infra.errors import UserError

# file names a run writes (infra/checkpoint.py owns them; a test keeps these equal)
RESULTS, CHECKPOINT, METRICS, LEASE = "results.json", "checkpoint.pth.tar", "metrics.jsonl", ".lease"
# files the campaign writes next to a run's own
LAUNCH, OUTPUT = "launch.json", "stdout.txt"
RUN_LEASE = "run.lease"  # ROOT/.campaign/run.lease: held by the one `sweep.py run --local/--slurm` of a campaign
STATES = ("done", "running", "stale", "queued", "failed", "partial", "pending", "waiting")
NO_PROGRESS = "no progress for "  # a running run's detail starts so when it makes none (see `running_text`)
TODO = ("stale", "failed", "partial", "pending")  # what `run` launches (waiting runs once their ticket exists)


@dataclass(frozen=True)
class RunState:
    run: Run
    state: str
    # failed: the last error line; running: the holder; stale: the holder and why; waiting: the missing ticket
    detail: str = ""
    epochs_done: int = 0
    exit: int | None = None  # failed: the exit status


def _json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def lease_of(save_dir: str) -> lease.Seen | None:
    """SAVE_DIR's lease as it is now (None: nobody holds it). Reads files only: never raises, whatever the
    filesystem does with flock."""
    return lease.look(os.path.join(save_dir, LEASE))


def lock_holder(save_dir: str) -> str | None:
    """Who trains into SAVE_DIR now (the entry points hold its lease for the whole run), e.g. "pid 123 on n2 (job
    45_3, since ...)", or None when nobody does or the lease is stale (its holder's heartbeat stopped)."""
    seen = lease_of(save_dir)
    return seen.who() if seen is not None and not seen.stale else None


def stale_text(seen: lease.Seen) -> str:
    """What `plan` shows for a stale lease, e.g. "stale lease: pid 123 on n2 (job 45_3, since ...), no heartbeat
    for 14 min: the next launch takes it over"."""
    return f"stale lease: {seen.who()}, {seen.why}: the next launch takes it over"


def running_text(save_dir: str, seen: lease.Seen) -> str:
    """What `plan` shows for a live holder: who, and "no progress for 40 min" when the run's last progress
    (SAVE_DIR/.progress, touched by the run) lags its heartbeat by more than watchdog.QUIET_S (both stamped by the
    holder's filesystem clock: no clock skew between nodes enters)."""
    try:
        quiet = seen.mtime - os.stat(os.path.join(save_dir, watchdog.PROGRESS)).st_mtime
    except OSError:
        quiet = 0.0
    return f"{NO_PROGRESS}{lease.duration(quiet)}: {seen.who()}" if quiet > watchdog.QUIET_S else seen.who()


def _epochs(save_dir: str) -> int:
    try:
        with open(os.path.join(save_dir, METRICS)) as f:
            return sum(1 for line in f if line.strip().startswith("{"))
    except OSError:
        return 0


def imp_done(run: Run) -> bool:
    return all(os.path.isfile(f) for f in run.makes)


def state_of(run: Run, queued: set[str] = frozenset()) -> RunState:
    d = run.save_dir
    if run.kind == "imp":
        done = imp_done(run)
    else:
        res = _json(os.path.join(d, RESULTS))
        done = isinstance(res, dict) and res.get("complete") is True
    if done:
        return RunState(run, "done", epochs_done=_epochs(d))
    seen = lease_of(d)
    if seen is not None and not seen.stale:
        return RunState(run, "running", running_text(d, seen), _epochs(d))
    if run.id in queued:
        return RunState(run, "queued", "submitted to SLURM", _epochs(d))
    launch = _json(os.path.join(d, LAUNCH))  # a recorded death first, whatever lease it left
    if isinstance(launch, dict) and launch.get("exit") not in (0, None):
        why = str(launch.get("error") or f"exit {launch['exit']}")
        return RunState(run, "failed", why + (f" ({stale_text(seen)})" if seen is not None else ""), _epochs(d),
                        launch["exit"])
    if seen is not None:
        return RunState(run, "stale", stale_text(seen), _epochs(d))
    if run.kind == "transfer" and run.needs and not os.path.isfile(run.needs):
        return RunState(run, "waiting", f"for {run.needs}")
    started = os.path.exists(os.path.join(d, CHECKPOINT)) if run.kind == "transfer" else \
        os.path.isdir(d) and any(n.endswith("-checkpoint.pth.tar") for n in os.listdir(d))
    return RunState(run, "partial" if started else "pending", epochs_done=_epochs(d))


def states(campaign: Campaign, queued: set[str] = frozenset()) -> list[RunState]:
    return [state_of(r, queued) for r in campaign.runs]


def counts(rows: list[RunState]) -> dict[str, int]:
    return {s: sum(r.state == s for r in rows) for s in STATES}


def launchable(rows: list[RunState]) -> list[Run]:
    """Runs to start now: not done, running or queued, and with their ticket in place."""
    return [r.run for r in rows if r.state in TODO and not (r.run.needs and not os.path.isfile(r.run.needs))]


def _campaign_lease(campaign: Campaign) -> leaseholder.Lease:
    folder = os.path.join(campaign.root, ".campaign")
    try:
        os.makedirs(folder, exist_ok=True)
        return leaseholder.acquire(os.path.join(folder, RUN_LEASE))  # its fence covers jobs.json and the rest
    except lease.LeaseHeld as e:
        holder = e.seen.who() if e.seen else "another process, which is taking over its stale lease right now"
        raise UserError(f"another `sweep.py run` is launching the runs of {campaign.path} (root {campaign.root}): "
                        f"{holder}; wait for it or stop it (one left by a killed process is taken over once stale)") \
            from None
    except OSError as e:
        raise UserError(f"{folder} cannot be written ({e.strerror or type(e).__name__}): the campaign's root must be "
                        "writable") from None


@contextlib.contextmanager
def campaign_lease(campaign: Campaign) -> Iterator[leaseholder.Lease]:
    """Hold the campaign's lease (ROOT/.campaign/run.lease, heartbeat while held) for the `with` block: one
    `sweep.py run --local/--slurm` per campaign at a time; another is refused with one line naming the holder.
    Re-entrant in one process (the block inside a `run` that holds it already just goes on)."""
    held = _campaign_lease(campaign)
    try:
        yield held
    finally:
        held.release()


def hold_campaign(campaign: Campaign) -> leaseholder.Lease:
    """Hold the campaign's lease (see `campaign_lease`) for the rest of this process."""
    return _campaign_lease(campaign)
