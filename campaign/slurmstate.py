"""The record step of the SLURM path, ROOT/.campaign/: every job id a run has had (jobs.json, read strictly),
submissions on their way to sbatch (submitting/), how jobs ended per sacct (failures.json) and the hosts blamed
for a node's failures, each blame expiring (hosts.json); the last two are read leniently."""
from __future__ import annotations

import hashlib
import json
import os
import time

from campaign.scheduler import SchedulerError
from campaign.spec import Campaign
from infra.checkpoint import atomic_write_json
from infra.errors import UserError

EXCLUDE_AFTER = 2          # distinct runs failed for the node's sake (exit 3, NODE_FAIL) before a host is excluded
EXCLUDE_FOR_S = 24 * 3600  # how long such a failure counts: an exclusion ends a day after its last blame
NODE_EXIT = 3              # infra.errors.NodeError's exit status: the node, not the input, is at fault
STORAGE_EXIT = 4           # infra.errors.StorageError's: the disk is full or the quota used up (no node to blame)
INTENT_KEEP_S = 900        # a submission's note outlives an sbatch that never answered by this long
COMMENT = "doublewin"      # sbatch --comment=doublewin:<campaign id>:<submission>: how `run` knows its jobs


def _path(campaign: Campaign, name: str) -> str:
    return os.path.join(campaign.root, ".campaign", name)


def jobs_file(campaign: Campaign) -> str:
    return _path(campaign, "jobs.json")


def campaign_id(campaign: Campaign) -> str:
    """A short id of the campaign's root (the same root is the same campaign, whatever spec names it)."""
    return hashlib.sha1(os.path.realpath(campaign.root).encode()).hexdigest()[:12]


def _read(path: str) -> dict:
    """A lenient record file's dict; a missing or corrupt file is an empty record (failures.json is asked of sacct
    again, hosts.json only ever excludes hosts: losing either costs little)."""
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
    """run id -> every SLURM job id it has had, newest last. Only an absent file is an empty record: any other
    read error or a file that is not such a record is a SchedulerError (nothing may be submitted on a guess)."""
    path = jobs_file(campaign)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise SchedulerError(f"{path} cannot be read ({e.strerror or type(e).__name__}): the campaign's jobs are "
                             "unknown") from None
    except ValueError:
        data = None
    if not isinstance(data, dict) or not all(
            isinstance(js, list) and js and all(isinstance(j, str) for j in js) for js in data.values()):
        raise SchedulerError(f"{path} is not a record of job ids (run id -> list of job ids): restore it, or move "
                             "it away once squeue lists none of the campaign's jobs")
    return data


def record_jobs(campaign: Campaign, new: dict[str, str]) -> None:
    """Append each run's new job id to its list: the record read strictly (never merged into an empty one because a
    read failed), then written whole and atomically; a failure of either is a SchedulerError naming the jobs."""
    if not new:
        return
    try:
        jobs = recorded_jobs(campaign)
        for rid, job in new.items():
            jobs[rid] = [*jobs.get(rid, []), job]
        _write(jobs_file(campaign), jobs)
    except UserError as e:
        ids = ", ".join(sorted({j.split("_")[0] for j in new.values()}))
        raise SchedulerError(f"jobs {ids} were submitted but not recorded ({e}); the next `run` finds them by "
                             "their comment") from None


def note_intent(campaign: Campaign, token: str, run_ids: list[str]) -> None:
    """Before sbatch: which runs the submission `token` holds, in array order (what adoption maps jobs back by)."""
    _write(os.path.join(_path(campaign, "submitting"), f"{token}.json"), {"runs": run_ids, "at": time.time()})


def drop_intent(campaign: Campaign, token: str) -> None:
    try:
        os.unlink(os.path.join(_path(campaign, "submitting"), f"{token}.json"))
    except FileNotFoundError:
        pass


def intents(campaign: Campaign) -> dict[str, tuple[list[str], float]]:
    """token -> (run ids, when noted) of the submissions noted and not yet recorded."""
    folder = _path(campaign, "submitting")
    try:
        names = [n for n in os.listdir(folder) if n.endswith(".json")]
    except OSError:
        return {}
    out = {}
    for name in names:
        data = _read(os.path.join(folder, name))
        if isinstance(data.get("runs"), list) and isinstance(data.get("at"), (int, float)):
            out[name[:-5]] = ([str(r) for r in data["runs"]], float(data["at"]))
    return out


def read_failures(campaign: Campaign) -> dict:
    return _read(_path(campaign, "failures.json"))


def write_failures(campaign: Campaign, known: dict) -> None:
    _write(_path(campaign, "failures.json"), known)


def _blames(data: dict) -> dict[str, dict[str, float]]:
    """hosts.json's host -> run id -> when that run failed there (a list from before blames had times: long ago)."""
    infra = data.get("infrastructure_failures")
    out: dict[str, dict[str, float]] = {}
    for host, runs in (infra if isinstance(infra, dict) else {}).items():
        if isinstance(runs, dict):
            out[host] = {r: float(t) for r, t in runs.items() if isinstance(t, (int, float))}
        elif isinstance(runs, list):
            out[host] = dict.fromkeys(map(str, runs), 0.0)
    return out


def _excluded(blames: dict[str, dict[str, float]], now: float) -> dict[str, float]:
    """host -> until when it is excluded: EXCLUDE_AFTER distinct runs blamed on it within EXCLUDE_FOR_S."""
    out = {}
    for host, runs in blames.items():
        recent = sorted((t for t in runs.values() if now - t < EXCLUDE_FOR_S), reverse=True)
        if len(recent) >= EXCLUDE_AFTER:
            out[host] = recent[EXCLUDE_AFTER - 1] + EXCLUDE_FOR_S
    return out


def excluded_hosts(campaign: Campaign, now: float | None = None) -> list[str]:
    """Hosts excluded now (hosts.json): no more jobs go there until their blames expire or are forgotten."""
    return sorted(_excluded(_blames(_read(_path(campaign, "hosts.json"))), time.time() if now is None else now))


def note_node_faults(campaign: Campaign, blamed: dict[str, tuple[str, float]], persist: bool = True) -> list[str]:
    """Blame each host for its run's failure (run id -> (host, when it failed)); failures from before the last
    `--forget-hosts` are not blamed again. Written only when `persist`; returns the hosts excluded now."""
    path = _path(campaign, "hosts.json")
    data = _read(path)
    blames, since = _blames(data), float(data.get("forgotten_at") or 0)
    changed = False
    for rid, (host, when) in blamed.items():
        if host and when > since and blames.get(host, {}).get(rid, -1.0) < when:
            blames.setdefault(host, {})[rid] = when
            changed = True
    now = time.time()
    excluded = _excluded(blames, now)
    if changed and persist:
        _write(path, {**data, "infrastructure_failures": blames, "excluded": sorted(excluded),
                      "until": {h: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) for h, t in excluded.items()}})
    return sorted(excluded)


def forget_hosts(campaign: Campaign) -> list[str]:
    """Clear every blame (`sweep.py run --forget-hosts`): failures before now exclude no host again. Returns the
    hosts that were excluded."""
    path = _path(campaign, "hosts.json")
    was = excluded_hosts(campaign)
    if os.path.exists(path) or was:
        _write(path, {"forgotten_at": time.time(), "infrastructure_failures": {}, "excluded": [], "until": {}})
    return was
