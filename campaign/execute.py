"""One run, as a subprocess running its bash driver: output to SAVE_DIR/stdout.txt, and SAVE_DIR/launch.json
recording the command, where it ran, its exit status and last error line (what `plan` shows for a failure)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from campaign.spec import REPO, Run
from infra.checkpoint import atomic_write_json
from campaign.state import LAUNCH, OUTPUT

BUSY = "is in use by"  # the entry points' refusal when another process trains into the same SAVE_DIR
# signals that stop a run from outside (Ctrl-C, scancel, a node going down gracefully): it resumes when launched
# again; any other signal (SIGKILL of an OOM killer or a memory limit, SIGSEGV, SIGABRT of an NCCL watchdog) is a
# failure that launching the same run again with the same resources would meet again
STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
CAUSES = {signal.SIGKILL: "out of memory? the kernel's OOM killer and the scheduler's memory limit send SIGKILL",
          signal.SIGSEGV: "a crash in native code", signal.SIGABRT: "an abort in native code, e.g. an NCCL watchdog",
          signal.SIGBUS: "a bus error: a full /dev/shm or a file that vanished under a memory map"}


def signal_death(sig: int) -> str:
    """The error line of a run killed by `sig`, with its likely cause."""
    try:
        s = signal.Signals(sig)
    except ValueError:
        return f"killed by signal {sig}"
    return f"killed by {s.name}" + (f" ({CAUSES[s]})" if s in CAUSES else "")


def last_error(path: str) -> str:
    """The last `error:` line of a run's output, else its last line (a traceback's exception line)."""
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f.readlines()[-200:] if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or [""])[-1][:300]


def child_env(threads: int | None = None, gpus: str | None = None) -> dict[str, str]:
    env = dict(os.environ, DOUBLEWIN_PY=os.environ.get("DOUBLEWIN_PY") or sys.executable, PYTHONUNBUFFERED="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    return env


class Execution:
    """A started run; `wait()` records its end in launch.json. `ignore`: signals the run's processes ignore (a
    SLURM job's checkpoint signal, which is its launcher's to act on: under process tracking by tree it reaches
    the run too, whose default action is to die of it, holding its lease)."""

    def __init__(self, run: Run, env: dict[str, str], ignore: tuple[int, ...] = ()) -> None:
        self.run = run
        os.makedirs(run.save_dir, exist_ok=True)
        self.record = {"id": run.id, "command": list(run.command), "host": socket.gethostname(),
                       "start": time.time(), "exit": None, "error": None,
                       "slurm_job": os.environ.get("SLURM_JOB_ID")}
        atomic_write_json(os.path.join(run.save_dir, LAUNCH), self.record)
        self.out = open(os.path.join(run.save_dir, OUTPUT), "a")
        self.out.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} on {self.record['host']}: "
                       f"{' '.join(run.command)}\n")
        self.out.flush()
        self.proc = subprocess.Popen(run.command, stdout=self.out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                     start_new_session=True, preexec_fn=_ignoring(ignore) if ignore else None)
        self.stopping = False  # set by terminate(): a signal death after it is our stop, not a failure

    def poll(self) -> int | None:
        code = self.proc.poll()
        return None if code is None else self._finish(code)

    def wait(self) -> int:
        return self._finish(self.proc.wait())

    def terminate(self, grace: float = 10.0) -> None:
        """Stop the run's whole process group (see `terminate_all`); it resumes from its last checkpoint."""
        terminate_all([self], grace)

    def group_alive(self) -> bool:
        """Whether a process of the run's group is left (the driver, the ranks or loader workers it started:
        `start_new_session` made the driver the leader of a group of its own)."""
        self.proc.poll()  # reap the driver itself, so that its own zombie does not count
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _finish(self, code: int) -> int:
        if not self.out.closed:
            self.out.close()
            error = last_error(os.path.join(self.run.save_dir, OUTPUT)) if code else None
            if error and BUSY in error:
                return code  # another process trains there: its record, not ours
            if code < 0 and (self.stopping or -code in STOPS):  # requeue, Ctrl-C: resumes when launched again
                self.record.update(interrupted=-code, end=time.time())
            elif code < 0:  # died of a signal nobody sent to stop it: failed, with the likely cause
                self.record.update(exit=128 - code, error=signal_death(-code), end=time.time())
            else:
                self.record.update(exit=code, error=error, end=time.time())
            atomic_write_json(os.path.join(self.run.save_dir, LAUNCH), self.record)
        return code


def _ignoring(signals: tuple[int, ...]):
    """What the child runs before its command: `signals` ignored (a disposition exec keeps)."""
    def ignore() -> None:
        for sig in signals:
            signal.signal(sig, signal.SIG_IGN)
    return ignore


def terminate_all(executions: list[Execution], grace: float = 10.0, reap: float = 5.0) -> None:
    """SIGTERM to the process group of every run at once (an IMP stage's ranks and every loader worker, not just
    the driver), SIGKILL to the groups still there after `grace` seconds, then wait for them to go (up to `reap`
    more seconds for the ones the kernel is still tearing down)."""
    live = [ex for ex in executions if ex.group_alive()]
    for ex in live:
        ex.stopping = True
        ex.signal_group(signal.SIGTERM)
    for sig, wait in ((signal.SIGKILL, grace), (None, reap)):
        deadline = time.time() + wait
        while live and time.time() < deadline:
            live = [ex for ex in live if ex.group_alive()]
            time.sleep(0.02)
        for ex in live:
            if sig is not None:
                ex.signal_group(sig)
    for ex in executions:
        ex.proc.wait()


def execute(run: Run, env: dict[str, str] | None = None) -> int:
    return Execution(run, env or child_env()).wait()
