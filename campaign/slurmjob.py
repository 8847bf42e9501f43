"""What a SLURM job of the campaign runs (submitit's callable): one run's bash driver, with every CPU of the job,
the scheduler's stop signals passed on to it, and a requeue that waits only for its own earlier incarnation."""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from typing import Callable

from campaign import state
from campaign.execute import Execution, child_env
from campaign.slurmstate import NODE_EXIT
from campaign.spec import Run
from infra import lease
from infra.checkpoint import atomic_write_json


class RunFailed(Exception):
    """A run's command failed: the job ends FAILED and is not requeued."""


HOLDER_POLL_S = 10.0  # a job waiting for its own earlier incarnation's lease reads the lease this often
# what a job's step is sent from outside: scancel, preemption, a node going down, `scancel --signal`. Under cgroup
# process tracking SLURM signals only the step's task (this process; the run is in a session of its own), so each
# is passed on to the run's whole process group: its lease is released at once and a requeue elsewhere starts.
# SIGUSR1 arrives as SIGTERM: the run has no use for it, and it would die of it holding its lease.
FORWARD = {signal.SIGTERM: signal.SIGTERM, signal.SIGINT: signal.SIGINT, signal.SIGHUP: signal.SIGHUP,
           signal.SIGUSR1: signal.SIGTERM}


class Task:
    """What one array element runs: the run's bash driver; on USR2 (time limit, preemption) submitit calls
    `checkpoint`, which stops the driver and requeues a fresh Task: the re-run resumes from SAVE_DIR. The signals
    of FORWARD reach the run's process group."""

    def __init__(self, run: Run, threads: int | None) -> None:
        self.run, self.threads, self.execution, self.stopped = run, threads, None, None

    def __call__(self) -> int:
        self._forward_signals()
        if not self.wait_for_holder():
            return 0  # the run is done, or trains in another job: nothing to do here
        short = _cpu_shortfall()
        if short:
            raise RunFailed(_node_fault(self.run, short))
        missing = next((p for p in self.run.inputs if not os.path.exists(p)), None)
        if missing:
            raise RunFailed(_unseen_input(self.run, missing))
        if self.stopped is None:
            threads = self.threads or _cpus_asked() or None
            self.execution = Execution(self.run, child_env(threads), ignore=(_checkpoint_signal(),))
            if self.stopped is not None:  # a signal that came while the run was being started
                self._on_signal(self.stopped, None)
            # poll rather than wait(): submitit's USR2 handler runs `checkpoint` in this thread, and its own wait()
            # on the child would deadlock inside a blocking one
            while (code := self.execution.poll()) is None:
                time.sleep(0.5)
        if self.stopped is not None:
            raise RunFailed(f"{self.run.id}: stopped by {signal.Signals(self.stopped).name} from outside (scancel, "
                            "preemption, a node going down): it resumes when launched again")
        if code != 0:
            _note_node(self.run)
            raise RunFailed(f"{self.run.id}: exit {code}: {self.execution.record.get('error')}")
        return code

    def _forward_signals(self) -> None:
        """Pass FORWARD's signals on to the run (submitit has installed its own handlers by now: its checkpoint
        signal stays submitit's)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in set(FORWARD) - {_checkpoint_signal()}:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, sig: int, frame) -> None:
        self.stopped = sig
        if self.execution is not None:
            self.execution.stopping = True
            self.execution.signal_group(FORWARD[sig])

    def wait_for_holder(self, poll: float = HOLDER_POLL_S, say: Callable[[str], None] = print) -> bool:
        """True when the run may start here (nobody holds SAVE_DIR's lease, or it is stale), False when there is
        nothing to do: the run is done, or another job or process trains it (said in one line: the campaign sees
        it running, and submits it again only if that holder dies). Waits only while the holder is this job's own
        earlier incarnation (a requeue landing while the old process still beats; on a node that died with it,
        the heartbeat has stopped and the lease goes stale within its bound), or while the lease is unreadable."""
        mine = lease.slurm_job()
        while True:
            seen = state.lease_of(self.run.save_dir)
            if state.state_of(self.run).state == "done" or self.stopped is not None:
                return False
            if seen is None or seen.stale:
                return True
            if seen.holder is not None and (mine is None or seen.holder.job != mine):
                say(f"{self.run.id}: trained by {seen.who()}, not this job ({mine or 'no SLURM job'}): nothing to "
                    "do here")
                return False
            time.sleep(poll)

    def checkpoint(self, *args, **kwargs):
        import submitit
        if self.execution is not None:
            self.execution.terminate()
        return submitit.helpers.DelayedSubmission(Task(self.run, self.threads))

    def __getstate__(self) -> dict:
        return {"run": self.run, "threads": self.threads, "execution": None, "stopped": None}


def _checkpoint_signal() -> int:
    """The signal submitit requeues on (SUBMITIT_PREEMPT_SIGNAL, default USR2)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)


def _cpus_asked() -> int:
    """The CPUs this job has on its node (0: not under SLURM): --cpus-per-task, else the partition's default."""
    text = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_JOB_CPUS_PER_NODE", "")
    digits = text.split("(")[0].split(",")[0]
    return int(digits) if digits.isdigit() else 0


def _cpu_shortfall() -> str | None:
    """The error line when this step may use fewer CPUs than its job has (SLURM 22.05-23.02's srun no longer
    reads SLURM_CPUS_PER_TASK: a step bound to one core runs every rank and loader worker on it), else None."""
    asked = _cpus_asked()
    if not asked or not hasattr(os, "sched_getaffinity"):
        return None
    seen = len(os.sched_getaffinity(0))
    if seen >= asked:
        return None
    return (f"error: this job step may use {seen} of the {asked} CPUs its job has on {_node()} (the step was bound "
            "to fewer cores: srun needs --cpus-per-task or SRUN_CPUS_PER_TASK)")


def _node() -> str:
    """This node's SLURM name (what sbatch --exclude takes), else its hostname."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def _unseen_input(run: Run, path: str) -> str:
    """Record (exit 3: the node is at fault) that this node cannot see an input of the run."""
    return _node_fault(run, f"error: {path} not found on {_node()} (a mount missing on this node?)")


def _node_fault(run: Run, error: str) -> str:
    """Record in launch.json and the run's output that this node cannot run it (exit 3); the RunFailed text."""
    os.makedirs(run.save_dir, exist_ok=True)
    now = time.time()
    atomic_write_json(os.path.join(run.save_dir, state.LAUNCH),
                      {"id": run.id, "command": list(run.command), "host": socket.gethostname(), "node": _node(),
                       "start": now, "end": now, "exit": NODE_EXIT, "error": error,
                       "slurm_job": os.environ.get("SLURM_JOB_ID")})
    with open(os.path.join(run.save_dir, state.OUTPUT), "a") as f:
        f.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} on {_node()}: {error}\n")
    return f"{run.id}: exit {NODE_EXIT}: {error}"


def _note_node(run: Run) -> None:
    """Add this node's SLURM name to a failed run's launch.json: the host a later exclusion names."""
    path = os.path.join(run.save_dir, state.LAUNCH)
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return
    if isinstance(record, dict):
        atomic_write_json(path, {**record, "node": _node()})
