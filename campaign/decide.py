"""The decide step of the SLURM path: from what was observed, which runs go to sbatch now, which wait (a job's end
still settling in accounting, --max-in-flight, storage full) and which are given up on; and the refusal of an
exclusion that would leave a partition no node."""
from __future__ import annotations

from dataclasses import dataclass, field

from campaign import scheduler, state
from campaign.observe import View
from campaign.spec import Campaign, Run
from infra.errors import UserError

SETTLE_S = 60  # how long a job squeue no longer lists may stay unrecorded in accounting before it counts as ended


@dataclass
class Memory:
    """What one `run` remembers between polls: runs it submitted (how often), since when each (run, job) has been
    settling, whether storage stopped it, what it said once."""
    tries: dict[str, int] = field(default_factory=dict)
    settling_since: dict[tuple[str, str], float] = field(default_factory=dict)
    storage_stop: bool = False
    said: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Decision:
    todo: list[Run]       # to submit now
    held: int             # launchable, held back by --max-in-flight
    gave_up: set[str]     # not to be submitted again by this `run`
    settling: set[str]    # runs whose job's end accounting has yet to record


def _settling(view: View, memory: Memory, now: float) -> set[str]:
    """Runs one of whose jobs squeue no longer lists and accounting has not recorded for under SETTLE_S (each job
    of a run gets its own SETTLE_S)."""
    return {rid for rid, job in view.settling if now - memory.settling_since.setdefault((rid, job), now) < SETTLE_S}


def _gave_up(view: View, memory: Memory, retries: int) -> set[str]:
    """A run tried in this invocation is submitted again only when its job ended without a verdict (partial,
    pending) or the node is blamed (exit 3, NODE_FAIL), at most `retries` more times; a user error (exit 2), a
    full disk (exit 4) or any other failure is left for the user. An input missing on its node and here too is
    the spec's error, whoever tried it."""
    out = set(view.unseen)
    for r in view.rows:
        rid = r.run.id
        if rid not in memory.tries or r.state not in state.TODO:
            continue
        if memory.tries[rid] > retries or (r.state == "failed" and rid not in view.node_fault):
            out.add(rid)
    return out


def decide(view: View, memory: Memory, retries: int, max_in_flight: int | None, now: float,
           say) -> Decision:
    """What to submit now. A run this `run` submitted that found the disk full or the quota used up stops all
    submitting (said once): more runs would only fail the same way."""
    stored = sorted(rid for rid in view.storage if rid in memory.tries)
    if stored and not memory.storage_stop:
        memory.storage_stop = True
        say(f"{', '.join(stored[:3])}{' ...' if len(stored) > 3 else ''}: the disk is full or the quota used up "
            "(exit 4, no node blamed): no more runs are submitted; free space, then `sweep.py run` again")
    for rid, path in sorted(view.unseen.items()):
        if rid not in memory.said:
            memory.said.add(rid)
            say(f"{rid}: input {path} is missing on its node and on this machine too: the spec's error, not the "
                "node's; not submitted again")
    settling = _settling(view, memory, now)
    gave_up = _gave_up(view, memory, retries)
    todo = [r for r in state.launchable(view.rows) if r.id not in gave_up | settling]
    if memory.storage_stop:
        todo = []
    room = None if max_in_flight is None else \
        max(0, max_in_flight - sum(r.state in ("queued", "running") for r in view.rows))
    held = len(todo) - room if room is not None and len(todo) > room else 0
    return Decision(todo[:room] if room is not None else todo, held, gave_up, settling)


def partitions(runs: list[Run], default: str | None) -> set[str | None]:
    """The partitions the runs' jobs go to (an IMP stage's own where the spec gives one)."""
    return {(r.resources.partition if r.kind == "imp" and r.resources else None) or default for r in runs}


def refuse_partition_wide(campaign: Campaign, exclude: list[str], where: set[str | None]) -> None:
    """One UserError line when the excluded hosts are every node of a partition the jobs go to (sbatch would pend
    or refuse them forever); a partition sinfo cannot list is not refused here."""
    for partition in sorted(where, key=str):
        nodes = scheduler.partition_nodes(partition) if exclude else None
        if nodes and set(nodes) <= set(exclude):
            name = f"partition {partition}" if partition else "the default partition"
            raise UserError(f"every node of {name} is excluded ({', '.join(nodes)}: each failed runs for the "
                            f"node's sake, see {campaign.root}/.campaign/hosts.json): nothing submitted; if the "
                            "fault is not the nodes' (a data path, a mount everywhere), fix it, then add "
                            "--forget-hosts")
