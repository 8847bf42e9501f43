"""The submit step of the SLURM path: runs to sbatch through submitit (IMP stages one job each, transfer runs as
arrays of at most MaxArraySize), each submission noted before sbatch, tagged with the campaign's comment, and
recorded in jobs.json in one step that SIGINT, SIGTERM and SIGHUP cannot split (they are deferred, then raised)."""
from __future__ import annotations

import contextlib
import io
import signal
import threading
import uuid
from typing import Callable, Iterator

from campaign import scheduler, slurmstate
from campaign.scheduler import SchedulerError
from campaign.spec import Campaign, Run
from infra.errors import UserError

DEFERRED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Submitted(dict):
    """run id -> job id of what was submitted; `stopped_by` says what kept the rest back ("a submit limit", "a
    busy controller"), None when all went."""
    stopped_by: str | None = None


class Limit(Exception):
    """sbatch refused for this user's submit limits: what was accepted stands, the rest waits."""


class Busy(Exception):
    """The controller did not answer (sbatch or scontrol timed out): the rest waits for the next poll; a job it
    accepted meanwhile carries the campaign's comment and is adopted then."""


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP held back for the block, then raised again with the handlers there were (the
    lease's, Python's KeyboardInterrupt, the default), so that sbatch and the record of its job ids go together.
    Only the main thread can set handlers (and only it runs them): elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {s: signal.signal(s, lambda sig, frame: got.append(sig)) for s in DEFERRED}
    try:
        yield
    finally:
        for s, handler in old.items():  # None: a handler set outside Python, which cannot be put back
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        for s in dict.fromkeys(got):
            signal.raise_signal(s)


def _sbatch(submit_them: Callable[[], list]) -> list:
    """Call submitit; a refusal is Busy (the controller did not answer), Limit (a submit limit) or one UserError
    line naming what to change."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's refusal; we say it in one line
            return submit_them()
    except Exception as e:  # sbatch said no
        if type(e).__name__ not in ("FailedJobError", "FailedSubmissionError", "CalledProcessError"):
            raise
        text = str(e) + str(getattr(e, "stderr", "") or "") + str(getattr(e, "output", "") or "")
        said, option = scheduler.refusal(text)
        if scheduler.is_busy(text):
            raise Busy(said) from None
        if scheduler.is_limit(text):
            raise Limit(scheduler.limit_name(text)) from None
        raise UserError(f"sbatch refused the jobs ({said}): check {option}") from None


def _one(campaign: Campaign, runs: list[Run], submit_them: Callable[[str], list], new: dict[str, str]) -> None:
    """One sbatch and its record, signals deferred: the runs noted under a fresh token (the job's comment), sbatch,
    then their job ids appended to jobs.json and the note dropped. A refusal drops the note; a controller that
    did not answer keeps it (the job may exist: it is adopted by its comment)."""
    token = uuid.uuid4().hex[:12]
    comment = f"{slurmstate.COMMENT}:{slurmstate.campaign_id(campaign)}:{token}"
    slurmstate.note_intent(campaign, token, [r.id for r in runs])
    with deferred_signals():
        try:
            jobs = _sbatch(lambda: submit_them(comment))
        except Busy:
            raise
        except BaseException:
            slurmstate.drop_intent(campaign, token)
            raise
        got = {r.id: str(j.job_id) for r, j in zip(runs, jobs)}
        slurmstate.record_jobs(campaign, got)
        new.update(got)
        slurmstate.drop_intent(campaign, token)


def submit_all(campaign: Campaign, runs: list[Run], executor, task, new: dict[str, str]) -> None:
    """IMP stages one job each, then transfer runs as arrays of at most MaxArraySize; a submit-limit refusal
    halves the array and tries again, down to one run, then raises Limit (`new` holds what was accepted).
    `executor(run or None, comment)` is submitit's executor, `task(run)` what a job runs."""
    for run in [r for r in runs if r.kind == "imp"]:
        _one(campaign, [run], lambda comment, run=run: [executor(run, comment).submit(task(run))], new)
    transfer = [r for r in runs if r.kind == "transfer"]
    try:
        size = scheduler.max_array_size() if transfer else 1
    except SchedulerError as e:
        raise Busy(str(e)) from None
    while transfer:
        chunk = transfer[:size]

        def array(comment: str, chunk=chunk) -> list:
            ex = executor(None, comment)
            with ex.batch():
                jobs = [ex.submit(task(r)) for r in chunk]
            return jobs
        try:
            _one(campaign, chunk, array, new)
        except Limit:
            if size == 1:
                raise
            size //= 2
            continue
        transfer = transfer[size:]


def submit(campaign: Campaign, runs: list[Run], executor, task, say: Callable[[str], None] = print,
           exclude: tuple[str, ...] = ()) -> Submitted:
    """Submit `runs` (not to the `exclude` hosts), each sbatch recorded as it goes; returns run id -> job id of
    those submitted (fewer than `runs` when a submit limit or a busy controller stopped the rest, which is said)."""
    new = Submitted()
    if not runs:
        return new
    try:
        submit_all(campaign, runs, executor, task, new)
    except Limit as e:
        new.stopped_by = "a submit limit"
        say(f"sbatch: submit limit reached ({e}): {len(runs) - len(new)} runs not submitted yet")
    except Busy as e:
        new.stopped_by = "a busy controller"
        say(f"sbatch: the SLURM controller did not answer ({e}): {len(runs) - len(new)} runs not submitted yet "
            "(a job it accepted meanwhile is found by its comment)")
    except SchedulerError as e:  # submitted, not recorded: the next poll adopts it by its comment
        new.stopped_by = "jobs.json not written"
        say(str(e))
    if new:
        arrays = sorted({j.split('_')[0] for j in new.values()}, key=int)
        say(f"submitted {len(new)} runs: jobs {', '.join(arrays)}" + (f" (not on {', '.join(exclude)})"
                                                                     if exclude else ""))
    return new
