"""The observe step of the SLURM path: the campaign's runs as their files, squeue and sacct say, asked once, with
the campaign's live jobs that jobs.json lacks adopted (found by their comment), how dead jobs ended, and which
failures are a node's, storage's or the spec's. Records only when `persist` (the `run` holding the lease)."""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field

from campaign import scheduler, slurmstate, state
from campaign.slurmstate import NODE_EXIT, STORAGE_EXIT
from campaign.spec import Campaign
from campaign.state import RunState


@dataclass
class View:
    """The campaign as SLURM and its files say: run states (sacct's failures applied), per failed run its host
    and short reason, excluded hosts; `note` says why the queue is unknown (only when not asked strictly)."""
    rows: list[RunState]
    failed_on: dict[str, tuple[str, str]] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)
    note: str | None = None
    node_fault: set[str] = field(default_factory=set)  # failed runs the node is blamed for: retried elsewhere
    settling: set[tuple[str, str]] = field(default_factory=set)  # (run, job): gone from squeue, not yet in sacct
    storage: set[str] = field(default_factory=set)     # failed runs that found the disk full or the quota used up
    unseen: dict[str, str] = field(default_factory=dict)  # failed runs -> an input missing on its node and here too
    adopted: dict[str, str] = field(default_factory=dict)  # run -> a live job of ours that jobs.json lacked


def _launch(run_dir: str) -> dict:
    try:
        with open(os.path.join(run_dir, state.LAUNCH)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _short(launch: dict) -> str:
    """A failed launch.json's reason in a few words: `exit 3 (node)`, `exit 4 (storage)`, `killed by SIGKILL`."""
    error, code = str(launch.get("error") or ""), launch.get("exit")
    if error.startswith("killed by"):
        return error.split(" (")[0]
    return f"exit {code}" + {NODE_EXIT: " (node)", STORAGE_EXIT: " (storage)"}.get(code, "")


def _adopt(campaign: Campaign, jobs: dict[str, list[str]], queue: dict[str, str], persist: bool) -> dict[str, str]:
    """Live jobs carrying this campaign's comment that jobs.json lacks (a submission cut off before it was recorded,
    an sbatch whose answer was lost), mapped back to their runs by the submission's note: run id -> job id."""
    prefix = f"{slurmstate.COMMENT}:{slurmstate.campaign_id(campaign)}:"
    known = {j for js in jobs.values() for j in js}
    notes = slurmstate.intents(campaign)
    found: dict[str, str] = {}
    live_tokens = set()
    for job, comment in sorted(queue.items()):
        if not comment.startswith(prefix):
            continue
        token = comment[len(prefix):]
        live_tokens.add(token)
        runs = notes.get(token, ([], 0.0))[0]
        index = int(job.split("_")[1]) if "_" in job else 0
        if job not in known and index < len(runs):
            found[runs[index]] = job
    if persist:
        slurmstate.record_jobs(campaign, found)
        for token, (_, at) in notes.items():
            if token in live_tokens or time.time() - at > slurmstate.INTENT_KEEP_S:
                slurmstate.drop_intent(campaign, token)
    for rid, job in found.items():
        jobs[rid] = [*jobs.get(rid, []), job]
    return found


def _ended(campaign: Campaign, rows: list[RunState], jobs: dict[str, list[str]], queued: set[str],
           persist: bool) -> tuple[dict, set[tuple[str, str]]]:
    """failures.json brought up to date: sacct asked once about the newest job of each run not done, running or
    queued whose end it has not told yet (an answer is kept: not asked again unless squeue lists that job again,
    a requeue); also the (run, job) pairs squeue no longer lists whose end accounting has not recorded (on its
    way to slurmdbd: not resubmitted on a guess)."""
    known = slurmstate.read_failures(campaign)
    again = [rid for rid in queued if (known.get(rid) or {}).get("job") == jobs[rid][-1]]
    changed = bool(again)
    for rid in again:
        del known[rid]
    ask = {jobs[r.run.id][-1]: r.run.id for r in rows if r.state in state.TODO and r.run.id in jobs
           and (known.get(r.run.id) or {}).get("job") != jobs[r.run.id][-1]}
    ended = scheduler.ended_jobs(list(ask)) if ask else {}
    for job, rid in ask.items():
        e = (ended or {}).get(job)
        if e and e.state not in scheduler.ALIVE:
            known[rid] = {"job": job, "state": e.state, "reason": e.reason(), "host": e.node, "at": time.time()}
            changed = True
    if changed and persist:
        slurmstate.write_failures(campaign, known)
    settling = set() if ended is None else {(rid, job) for job, rid in ask.items()
                                            if job not in ended or ended[job].state in scheduler.ALIVE}
    return known, settling


def _unseen_input(r: RunState, launch: dict) -> str | None:
    """A run that stopped because its node could not see an input that is missing here too: the spec's error."""
    error = str(launch.get("error") or "")
    return next((p for p in r.run.inputs if f"{p} not found on " in error and not os.path.exists(p)), None)


def _apply(rows: list[RunState], jobs: dict[str, list[str]], known: dict, view: View) -> dict[str, tuple[str, float]]:
    """Rows turned failed where sacct says a failure ended their newest job; fills view.failed_on, node_fault,
    storage and unseen; returns run id -> (host, when) of the failures the node is blamed for."""
    blamed: dict[str, tuple[str, float]] = {}
    for i, r in enumerate(rows):
        rid, rec = r.run.id, known.get(r.run.id)
        newest = (jobs.get(rid) or [None])[-1]
        if r.state in state.TODO and isinstance(rec, dict) and newest and rec.get("job") == newest and \
                rec.get("state") in scheduler.FAILURES:
            detail = f"{rec.get('reason')} on {rec.get('host') or '?'} (job {newest})"
            r = rows[i] = dataclasses.replace(r, state="failed", detail=detail + (f"; {r.detail}" if r.detail else ""))
            view.failed_on[rid] = (rec.get("host") or "?", str(rec.get("state")))
            if rec.get("state") in scheduler.NODE_FAULTS:
                blamed[rid] = (rec.get("host") or "", float(rec.get("at") or time.time()))
        elif r.state == "failed":
            launch = _launch(r.run.save_dir)
            host = str(launch.get("node") or launch.get("host") or "")
            view.failed_on[rid] = (host or "?", _short(launch))
            missing = _unseen_input(r, launch) if r.exit == NODE_EXIT else None
            if missing:
                view.unseen[rid] = missing
                view.failed_on[rid] = (host or "?", "input missing")
            elif r.exit == NODE_EXIT:
                end = launch.get("end")
                blamed[rid] = (host, float(end) if isinstance(end, (int, float)) else time.time())
            elif r.exit == STORAGE_EXIT:
                view.storage.add(rid)
    view.node_fault = set(blamed)
    return blamed


def observe(campaign: Campaign, strict: bool = True, persist: bool = True) -> View:
    """The campaign's runs as they stand, SLURM asked once (squeue for this user's jobs, sacct for dead ones).
    strict: a queue SLURM cannot tell, or a jobs.json that cannot be read, is a SchedulerError; else the view
    says so in `note` and shows the runs as their files say. persist: adopted jobs, sacct's answers and blamed
    hosts are written (only by the `run` that holds the campaign's lease; `plan` and `status` write nothing)."""
    note = None
    try:
        jobs = slurmstate.recorded_jobs(campaign)
        ask = bool(jobs) or bool(slurmstate.intents(campaign))
        queue = scheduler.queue() if ask else {}
    except scheduler.SchedulerError as e:
        if strict:
            raise
        jobs, queue, note = {}, {}, f"{e}: runs it holds show as their files say"
    adopted = _adopt(campaign, jobs, queue, persist) if note is None else {}
    queued = {rid for rid, js in jobs.items() if any(j in queue for j in js)}
    rows = state.states(campaign, queued)
    known, settling = _ended(campaign, rows, jobs, queued, persist) if jobs and note is None else ({}, set())
    view = View(rows, note=note, settling=settling, adopted=adopted)
    view.excluded = slurmstate.note_node_faults(campaign, _apply(rows, jobs, known, view), persist)
    return view
