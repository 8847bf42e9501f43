"""The local queue: runs of a campaign on this machine, one per GPU (an IMP stage takes its `gpus`), or N CPU
runs with an equal share of the cores each; transfer runs of level k start once k-ticket.pth.tar exists."""
from __future__ import annotations

import os
import time
from typing import Callable

from campaign import state
from campaign.execute import Execution, child_env
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


def run_local(campaign: Campaign, *, gpus: list[str] | None = None, jobs: int = 1, poll: float = 0.5,
              queued: set[str] = frozenset(), say: Callable[[str], None] = print) -> dict[str, int]:
    """Run what is left until nothing more can start; returns {run id: exit status} of the runs it started.

    Slots are GPUs (`gpus`, ids as CUDA_VISIBLE_DEVICES takes them) or `jobs` CPU slots; runs in `queued`
    (submitted to SLURM, still there) are left to their jobs. A failed run is not retried here (re-running the
    command retries it); Ctrl-C stops the children (they resume when re-run).
    """
    free = list(gpus) if gpus else [str(i) for i in range(jobs)]
    slots = len(free)
    threads = max(1, cpu_count() // len(free)) if gpus else threads_per_run(jobs)
    active: dict[str, tuple[Execution, list[str]]] = {}
    exits: dict[str, int] = {}
    total = len(campaign.runs)
    try:
        while True:
            rows = state.states(campaign, queued)
            todo = [r for r in state.launchable(rows) if r.id not in exits and r.id not in active]
            todo.sort(key=lambda r: r.kind != "imp")  # IMP stages first: their tickets feed the rest
            for run in todo:
                need = min(run.gpus, slots) if run.kind == "imp" and gpus else 1  # an IMP stage: its GPUs at once
                if len(free) < need:
                    continue
                if state.lock_holder(run.save_dir):
                    continue  # started by someone else meanwhile
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
                done = sum(s.state == "done" for s in state.states(campaign))
                say(f"{'done  ' if code == 0 else 'FAILED'} {rid}" + (f" (exit {code}): {ex.record.get('error')}"
                                                                       if code else "") + f"  [{done}/{total}]")
            if not active and not [r for r in state.launchable(state.states(campaign, queued))
                                   if r.id not in exits]:
                return exits
            time.sleep(poll)
    except KeyboardInterrupt:
        for ex, _ in active.values():
            ex.terminate()
        raise


def blocked(campaign: Campaign) -> list[Run]:
    """Transfer runs still waiting for a ticket (after every IMP stage has stopped)."""
    return [s.run for s in state.states(campaign) if s.state == "waiting"]
