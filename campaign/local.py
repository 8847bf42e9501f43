"""The local queue: runs of a campaign on this machine, one per GPU (an IMP stage takes its `gpus`), or N CPU
runs with an equal share of the cores each; transfer runs of level k start once k-ticket.pth.tar exists."""
from __future__ import annotations

import os
import time
from typing import Callable

from campaign import state
from campaign.execute import Execution, child_env, terminate_all
from campaign.spec import Campaign, Run


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_run(jobs: int) -> int | None:
    """OMP_NUM_THREADS of each of `jobs` CPU runs: an equal share of the cores (capped by OMP_NUM_THREADS if
    set): several torch processes with default threads on 2 cores ran 10-20x slower. One run: None, torch's
    default, as the same command typed by hand."""
    if jobs == 1:
        return None
    share = max(1, cpu_count() // jobs)
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return min(share, int(cap)) if cap.isdigit() and int(cap) > 0 else share


class _Queue:
    """What the local queue knows, from one scan of every run at its start: the runs left to start (in order,
    IMP stages first) and the tickets they wait for. Afterwards it touches the filesystem only for what can
    change: one listdir per ticket folder that waiting runs need, and the runs it starts and ends itself."""

    def __init__(self, campaign: Campaign, queued: set[str]) -> None:
        rows = state.states(campaign, queued)
        self.done = sum(r.state == "done" for r in rows)
        todo = [r.run for r in rows if r.state in state.TODO or r.state == "waiting"]
        self.todo = sorted(todo, key=lambda r: r.kind != "imp")  # IMP stages first: their tickets feed the rest
        self.present: set[str] = {r.needs for r in state.launchable(rows) if r.needs}

    def ready(self) -> list[Run]:
        """The runs left whose ticket exists, after one listdir per folder of the tickets still missing."""
        missing = {r.needs for r in self.todo if r.needs and r.needs not in self.present}
        for folder in {os.path.dirname(f) for f in missing}:
            try:
                names = set(os.listdir(folder))
            except FileNotFoundError:
                continue
            self.present |= {f for f in missing if os.path.dirname(f) == folder and os.path.basename(f) in names}
        return [r for r in self.todo if not r.needs or r.needs in self.present]


def run_local(campaign: Campaign, *, gpus: list[str] | None = None, jobs: int = 1, poll: float = 0.5,
              queued: set[str] = frozenset(), say: Callable[[str], None] = print) -> dict[str, int]:
    """Run what is left until nothing more can start; returns {run id: exit status} of the runs it started.

    Slots are GPUs (`gpus`, ids as CUDA_VISIBLE_DEVICES takes them) or `jobs` CPU slots; runs in `queued`
    (submitted to SLURM, still there) are left to their jobs, and so are runs another process holds. A poll costs
    a bounded number of filesystem calls, whatever the number of runs (`_Queue`). A failed run is not retried
    here (re-running the command retries it); Ctrl-C stops every run's whole process group and waits for it (the
    runs resume when the command is run again).
    """
    free = list(gpus) if gpus else [str(i) for i in range(jobs)]
    slots = len(free)
    threads = max(1, cpu_count() // len(free)) if gpus else threads_per_run(jobs)
    queue = _Queue(campaign, queued)
    active: dict[str, tuple[Execution, list[str]]] = {}
    exits: dict[str, int] = {}
    try:
        while True:
            for run in queue.ready():
                need = min(run.gpus, slots) if run.kind == "imp" and gpus else 1  # an IMP stage: its GPUs at once
                if len(free) < need:
                    continue
                queue.todo.remove(run)
                if state.lock_holder(run.save_dir):
                    continue  # started by someone else meanwhile: theirs
                slot, free = free[:need], free[need:]
                env = child_env(threads and threads * need, ",".join(slot) if gpus else None)
                active[run.id] = (Execution(run, env), slot)
                say(f"start  {run.id}" + (f"  (GPU {','.join(slot)})" if gpus else ""))
            for rid, (ex, slot) in list(active.items()):
                code = ex.poll()
                if code is None:
                    continue
                exits[rid] = code
                free += slot
                del active[rid]
                queue.done += code == 0
                say(f"{'done  ' if code == 0 else 'FAILED'} {rid}" + (f" (exit {code}): {ex.record.get('error')}"
                                                                       if code else "") + f"  [{queue.done}/"
                    f"{len(campaign.runs)}]")
            if not active and not queue.ready():
                return exits
            time.sleep(poll)
    except KeyboardInterrupt:
        terminate_all([ex for ex, _ in active.values()])
        for ex, _ in active.values():
            ex.poll()  # launch.json: interrupted, so the run is partial, not failed
        raise


def blocked(campaign: Campaign) -> list[Run]:
    """Transfer runs still waiting for a ticket (after every IMP stage has stopped)."""
    return [s.run for s in state.states(campaign) if s.state == "waiting"]
