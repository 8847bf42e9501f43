"""The state of every run of a campaign, read from its files only: done, running, queued, failed, partial,
pending or waiting (for a ticket an IMP stage has not made yet)."""
from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass

from campaign.spec import Campaign, Run

# file names a run writes (infra/checkpoint.py owns them; a test keeps these equal)
RESULTS, CHECKPOINT, METRICS, LOCK = "results.json", "checkpoint.pth.tar", "metrics.jsonl", ".lock"
# files the campaign writes next to a run's own
LAUNCH, OUTPUT = "launch.json", "stdout.txt"
STATES = ("done", "running", "queued", "failed", "partial", "pending", "waiting")
TODO = ("failed", "partial", "pending")  # what `run` launches (waiting runs once their ticket exists)


@dataclass(frozen=True)
class RunState:
    run: Run
    state: str
    detail: str = ""   # failed: the last error line; running: the lock holder; waiting: the missing ticket
    epochs_done: int = 0
    exit: int | None = None  # failed: the exit status


def _json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def lock_holder(save_dir: str) -> str | None:
    """Who holds SAVE_DIR/.lock (the entry points take it for the whole run), or None when nobody does."""
    path = os.path.join(save_dir, LOCK)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        with open(path) as f:
            return f.read().strip() or "another process"
    finally:
        os.close(fd)  # closing drops a lock we took
    return None


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
    holder = lock_holder(d)
    if holder:
        return RunState(run, "running", holder, _epochs(d))
    if run.id in queued:
        return RunState(run, "queued", "submitted to SLURM", _epochs(d))
    launch = _json(os.path.join(d, LAUNCH))
    if isinstance(launch, dict) and launch.get("exit") not in (0, None):
        return RunState(run, "failed", str(launch.get("error") or f"exit {launch['exit']}"), _epochs(d),
                        launch["exit"])
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
