"""What the campaign keeps about its SLURM jobs in ROOT/.campaign/ and what it makes of them: every job id a run
has had (jobs.json), how a dead job ended where the run could not say (failures.json: OUT_OF_MEMORY, NODE_FAIL,
... from sacct), which hosts failed runs for the node's sake (hosts.json; a host with infrastructure failures of
`EXCLUDE_AFTER` distinct runs gets no more of the campaign's jobs), and the runs' states with all that applied."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from campaign import scheduler, state
from campaign.spec import Campaign
from campaign.state import RunState
from infra.checkpoint import atomic_write_json

EXCLUDE_AFTER = 2  # distinct runs failed for the node's sake (exit 3, NODE_FAIL) before a host is excluded
NODE_EXIT = 3      # infra.errors.NodeError's exit status: the node, not the input, is at fault


def _path(campaign: Campaign, name: str) -> str:
    return os.path.join(campaign.root, ".campaign", name)


def jobs_file(campaign: Campaign) -> str:
    return _path(campaign, "jobs.json")


def _read(path: str) -> dict:
    """A record file's dict; a missing or corrupt file is an empty record (a warning is not worth a crash)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_json(path, data)


def recorded_jobs(campaign: Campaign) -> dict[str, list[str]]:
    """run id -> every SLURM job id it has had, newest last."""
    out = {}
    for rid, jobs in _read(jobs_file(campaign)).items():
        if isinstance(jobs, list) and all(isinstance(j, str) for j in jobs) and jobs:
            out[rid] = jobs
    return out


def record_jobs(campaign: Campaign, new: dict[str, str]) -> None:
    """Append each run's new job id to its list (read, then written atomically)."""
    if not new:
        return
    jobs = recorded_jobs(campaign)
    for rid, job in new.items():
        jobs[rid] = [*jobs.get(rid, []), job]
    _write(jobs_file(campaign), jobs)


def excluded_hosts(campaign: Campaign) -> list[str]:
    """Hosts with infrastructure failures of EXCLUDE_AFTER distinct runs: no more jobs go there."""
    infra = _read(_path(campaign, "hosts.json")).get("infrastructure_failures", {})
    return sorted(h for h, runs in infra.items() if isinstance(runs, list) and len(set(runs)) >= EXCLUDE_AFTER)


@dataclass
class View:
    """The campaign as SLURM and its files say: run states (sacct's failures applied), per failed run its host
    and short reason, excluded hosts; `note` says why the queue is unknown (only when not asked strictly)."""
    rows: list[RunState]
    failed_on: dict[str, tuple[str, str]] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)
    note: str | None = None
    node_fault: set[str] = field(default_factory=set)  # failed runs the node is blamed for: retried elsewhere
    settling: set[str] = field(default_factory=set)    # job gone from squeue, its end not yet in accounting


def _launch(run_dir: str) -> dict:
    return _read(os.path.join(run_dir, state.LAUNCH))


def _short(launch: dict) -> str:
    """A failed launch.json's reason in a few words: `exit 3 (node)`, `killed by SIGKILL`, `exit 1`."""
    error, code = str(launch.get("error") or ""), launch.get("exit")
    if error.startswith("killed by"):
        return error.split(" (")[0]
    return f"exit {code}" + (" (node)" if code == NODE_EXIT else "")


def _ended(campaign: Campaign, rows: list[RunState], jobs: dict[str, list[str]]) -> tuple[dict, set[str]]:
    """failures.json brought up to date: sacct asked about the newest job of each run that is not done, running
    or queued and has no record for that job yet; also the runs whose job squeue no longer lists but accounting
    has not recorded ended (its end is on its way to slurmdbd: not to be resubmitted on a guess)."""
    known = _read(_path(campaign, "failures.json"))
    ask = {jobs[r.run.id][-1]: r.run.id for r in rows if r.state in state.TODO and r.run.id in jobs
           and (known.get(r.run.id) or {}).get("job") != jobs[r.run.id][-1]}
    ended = scheduler.ended_jobs(list(ask)) if ask else {}
    changed = False
    for job, rid in ask.items():
        e = (ended or {}).get(job)
        if e and e.state in scheduler.FAILURES:
            known[rid] = {"job": job, "state": e.state, "reason": e.reason(), "host": e.node}
            changed = True
    if changed:
        _write(_path(campaign, "failures.json"), known)
    settling = set() if ended is None else {rid for job, rid in ask.items()
                                            if job not in ended or ended[job].state in scheduler.ALIVE}
    return known, settling


def _note_infrastructure(campaign: Campaign, blamed: dict[str, str]) -> list[str]:
    """Record run id -> host for failures the node is blamed for; the hosts now excluded."""
    path = _path(campaign, "hosts.json")
    data = _read(path)
    infra = data.get("infrastructure_failures")
    infra = infra if isinstance(infra, dict) else {}
    changed = False
    for rid, host in blamed.items():
        runs = infra.get(host) if isinstance(infra.get(host), list) else []
        if host and rid not in runs:
            infra[host] = [*runs, rid]
            changed = True
    if changed:
        _write(path, {**data, "infrastructure_failures": infra,
                      "excluded": sorted(h for h, r in infra.items() if len(set(r)) >= EXCLUDE_AFTER)})
    return excluded_hosts(campaign)


def _apply(rows: list[RunState], jobs: dict[str, list[str]], known: dict, view: View) -> dict[str, str]:
    """Rows turned failed where sacct said so for their newest job; fills view.failed_on and node_fault;
    returns run id -> host of failures the node is blamed for."""
    blamed: dict[str, str] = {}
    for i, r in enumerate(rows):
        rid, rec = r.run.id, known.get(r.run.id)
        newest = (jobs.get(rid) or [None])[-1]
        if r.state in state.TODO and isinstance(rec, dict) and newest and rec.get("job") == newest:
            detail = f"{rec.get('reason')} on {rec.get('host') or '?'} (job {newest})"
            r = rows[i] = dataclasses.replace(r, state="failed", detail=detail + (f"; {r.detail}" if r.detail else ""))
            view.failed_on[rid] = (rec.get("host") or "?", str(rec.get("state")))
            if rec.get("state") in scheduler.NODE_FAULTS:
                blamed[rid] = rec.get("host") or ""
        elif r.state == "failed":
            launch = _launch(r.run.save_dir)
            view.failed_on[rid] = (str(launch.get("node") or launch.get("host") or "?"), _short(launch))
            if r.exit == NODE_EXIT:
                blamed[rid] = str(launch.get("node") or launch.get("host") or "")
    view.node_fault = set(blamed)
    return blamed


def observe(campaign: Campaign, strict: bool = True) -> View:
    """The campaign's runs as they stand, SLURM asked once (squeue for this user's jobs, sacct for dead ones).
    strict: a queue SLURM cannot tell is a SchedulerError; else the view says so in `note` and shows the
    runs it may hold as their files say."""
    jobs = recorded_jobs(campaign)
    note = None
    try:
        alive = scheduler.alive_jobs() if jobs else set()
    except scheduler.SchedulerError as e:
        if strict:
            raise
        alive, note = set(), f"{e}: runs it holds show as their files say"
    queued = {rid for rid, js in jobs.items() if any(j in alive for j in js)}
    rows = state.states(campaign, queued)
    known, settling = _ended(campaign, rows, jobs) if jobs and note is None else ({}, set())
    view = View(rows, note=note, settling=settling)
    view.excluded = _note_infrastructure(campaign, _apply(rows, jobs, known, view))
    return view
