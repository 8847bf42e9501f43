"""The progress watchdog: a run that makes no training or evaluation progress (a batch, an evaluation step) for
DOUBLEWIN_STALL_S seconds, its start included, writes every thread's stack to its log, releases its lease and
exits 3 (the node's fault: a hung mount, a hung GPU), so that a campaign retries it elsewhere. The main process
also touches SAVE_DIR/.progress as progress is made, which `plan` and `status` compare with the lease's
heartbeat ("running, no progress for ...")."""
from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
import time
from typing import Iterator

from infra import leaseholder
from infra.errors import env_seconds

STALL_ENV = "DOUBLEWIN_STALL_S"
STALL_S = 1800.0  # default: no batch and no evaluation step for 30 min
PROGRESS = ".progress"  # SAVE_DIR/.progress: its mtime is the last progress (within a tick)
QUIET_S = 300.0  # plan/status show "no progress for ..." once the last progress is this much older than a beat
STALL_EXIT = 3

_last = [time.monotonic()]  # the last progress of this process (one float store per call)
_started: list[threading.Thread] = []
_armed: list[tuple] = []  # (token, stall_s, .progress path, log path) of the run being watched
_rearmed = threading.Event()  # set when a block arms the watchdog: the thread's wait ends and reads the new bound


def progress() -> None:
    """A batch trained or an evaluation step done: called by every loop, cheap."""
    _last[0] = time.monotonic()


@contextlib.contextmanager
def forward_progress(model) -> Iterator[None]:
    """Within the block, each forward pass of `model` is progress: for loops that are not ours (AutoAttack's)."""
    import torch
    hook = torch.compiler.disable(lambda module, args: progress())  # a plain call, never traced
    handle = model.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def stall_bound() -> float:
    """DOUBLEWIN_STALL_S (default 1800), refused in one line unless a number of seconds above 0."""
    return env_seconds(STALL_ENV, STALL_S, "how long a run may make no progress before it stops")


@contextlib.contextmanager
def watching(save_dir: str | None, log_path: str | None) -> Iterator[None]:
    """Watch this process while the block runs (a run's worker, from its start): `log_path` receives the stacks
    of a stall (stderr always does); `save_dir`: where .progress is touched (the main process only)."""
    stall_s = stall_bound()
    progress()
    marker = os.path.join(save_dir, PROGRESS) if save_dir else None
    _touch(marker)
    token = object()
    _armed[:] = [(token, stall_s, marker, log_path)]
    _rearmed.set()  # a thread waiting out an earlier run's longer tick reads this bound now
    if not _started:
        _started.append(threading.Thread(target=_watch, name="progress watchdog", daemon=True))
        _started[0].start()
    try:
        yield
    finally:
        if _armed and _armed[0][0] is token:
            _armed.clear()


def _touch(marker: str | None) -> None:
    """Touch .progress, only while this process's lease on its folder is still ours (confirmed by a read begun
    now: a holder frozen past a takeover wakes to a lease that is not, and must leave the folder alone)."""
    if marker is None:
        return
    held = leaseholder.covering(marker)
    try:
        if held is not None:
            held.check(fresh=True)
    except (leaseholder.LeaseLost, OSError):
        return  # the lease's own checks report the loss and end the run
    try:
        with open(marker, "a"):
            pass
        os.utime(marker)
    except OSError:
        pass  # a display aid only: the lease and the writes report a failing filesystem


def _watch() -> None:
    touched = _last[0]
    while True:
        armed = list(_armed)
        _rearmed.wait(min(30.0, max(armed[0][1] / 10, 0.05)) if armed else 0.5)
        _rearmed.clear()
        armed = list(_armed)
        if not armed:
            continue
        _, stall_s, marker, log_path = armed[0]
        last = _last[0]
        if last != touched:
            _touch(marker)
            touched = last
        if time.monotonic() - last > stall_s:
            stalled(stall_s, log_path)


def stalled(stall_s: float, log_path: str | None) -> None:
    """Every thread's stack to the log and stderr, the leases released, one line, exit STALL_EXIT."""
    head = (f"no training or evaluation progress for over {stall_s:g} s ({STALL_ENV}): the stack of every thread "
            "follows")
    for out in _outputs(log_path):
        try:
            out.write(f"{time.strftime('%H:%M:%S')} {head}\n")
            out.flush()
            faulthandler.dump_traceback(out, all_threads=True)
            out.flush()
        except (OSError, ValueError):
            pass
    leaseholder.release_all()
    where = f" (stacks in {log_path})" if log_path else ""
    print(f"error: the run made no training or evaluation progress for over {stall_s:g} s{where}: a hung data "
          f"mount, GPU or process; it stops with exit {STALL_EXIT} so that it is retried, elsewhere on a cluster "
          f"(raise {STALL_ENV} if a step may legitimately take longer)", file=sys.stderr, flush=True)
    os._exit(STALL_EXIT)


def _outputs(log_path: str | None):
    if log_path:
        try:
            with open(log_path, "a") as f:
                yield f
        except OSError:
            pass
    yield sys.stderr
