"""SLURM through submitit: transfer runs as one job array per submission, an IMP stage as a job of its own
with its GPUs; a time limit or preemption requeues the run (it resumes), a user error (exit 2) does not."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

from campaign import state
from campaign.execute import Execution, child_env
from infra.checkpoint import atomic_write_json
from campaign.spec import REPO, Campaign, Run
from infra.errors import UserError

ALIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "REQUEUE_HOLD",
         "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time_min: int = 24 * 60
    gpus_per_run: int = 1
    cpus_per_run: int | None = None
    array_parallelism: int = 256
    account: str | None = None
    qos: str | None = None
    max_requeue: int = 10        # requeues after a time limit (preemptions are not counted)
    signal_delay_s: int = 120    # submitit's USR2 this long before the time limit: it requeues the run
    extra: dict = field(default_factory=dict)  # further sbatch options, e.g. {"constraint": "h100"}


class RunFailed(Exception):
    """A run's command failed: the job ends FAILED and is not requeued."""


class Task:
    """What one array element runs: the run's bash driver; on USR2 (time limit, preemption) submitit calls
    `checkpoint`, which stops the driver and requeues a fresh Task: the re-run resumes from SAVE_DIR."""

    def __init__(self, run: Run, threads: int | None) -> None:
        self.run, self.threads, self.execution = run, threads, None

    def __call__(self) -> int:
        holder = state.lock_holder(self.run.save_dir)
        if holder:
            return 0  # someone else trains there (a second submission): nothing to do here
        threads = self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0")) or None
        self.execution = Execution(self.run, child_env(threads))
        # poll rather than wait(): submitit's USR2 handler runs `checkpoint` in this thread, and its own wait()
        # on the child would deadlock inside a blocking one
        while (code := self.execution.poll()) is None:
            time.sleep(0.5)
        if code != 0:
            raise RunFailed(f"{self.run.id}: exit {code}: {self.execution.record.get('error')}")
        return code

    def checkpoint(self, *args, **kwargs):
        import submitit
        if self.execution is not None:
            self.execution.terminate()
        return submitit.helpers.DelayedSubmission(Task(self.run, self.threads))

    def __getstate__(self) -> dict:
        return {"run": self.run, "threads": self.threads, "execution": None}


def jobs_file(campaign: Campaign) -> str:
    return os.path.join(campaign.root, ".campaign", "jobs.json")


def recorded_jobs(campaign: Campaign) -> dict[str, str]:
    try:
        with open(jobs_file(campaign)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def alive_jobs() -> set[str] | None:
    """Ids of the jobs SLURM still holds (array elements one by one), or None without squeue."""
    if not shutil.which("squeue"):
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return {p[0] for p in (ln.split() for ln in out.stdout.splitlines()) if len(p) == 2 and p[1] in ALIVE}


def queued(campaign: Campaign) -> set[str]:
    """Run ids whose recorded SLURM job is still pending or running."""
    jobs = recorded_jobs(campaign)
    alive = alive_jobs() if jobs else set()
    return {rid for rid, jid in jobs.items() if alive and jid in alive}


def _executor(campaign: Campaign, opts: SlurmOptions, gpus: int, name: str):
    import submitit
    folder = os.path.join(campaign.root, ".campaign", "slurm", "%j")
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=opts.max_requeue)
    params = dict(slurm_job_name=name, timeout_min=opts.time_min, gpus_per_node=gpus, nodes=1, tasks_per_node=1,
                  slurm_array_parallelism=opts.array_parallelism, slurm_signal_delay_s=opts.signal_delay_s,
                  slurm_setup=[f"export PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}", f"cd {REPO}"],
                  slurm_additional_parameters={"requeue": True, **opts.extra})
    if opts.cpus_per_run:
        params["cpus_per_task"] = opts.cpus_per_run
    for key, value in (("slurm_partition", opts.partition), ("slurm_account", opts.account),
                       ("slurm_qos", opts.qos)):
        if value:
            params[key] = value
    ex.update_parameters(**params)
    return ex


def _refused(e: Exception, opts: SlurmOptions) -> UserError:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    said = next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else type(e).__name__)
    hint = {"partition": "--partition", "account": "--account", "qos": "--qos", "time": "--time",
            "gres": "--gpus-per-run", "gpu": "--gpus-per-run", "cpu": "--cpus-per-run"}
    flag = next((f for k, f in hint.items() if k in said.lower()), "the SLURM options")
    return UserError(f"sbatch refused the jobs ({said}): check {flag}")


def submit(campaign: Campaign, runs: list[Run], opts: SlurmOptions, say: Callable[[str], None] = print) -> dict:
    """Submit `runs` (IMP stages one job each, transfer runs as one array); records run id -> job id."""
    if not runs:
        return {}
    jobs = recorded_jobs(campaign)
    name = os.path.splitext(os.path.basename(campaign.path))[0]
    new: dict[str, str] = {}
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's refusal; we say it in one line
            _submit(campaign, runs, opts, name, new)
    except Exception as e:  # sbatch said no: one line naming what to fix
        if type(e).__name__ not in ("FailedJobError", "FailedSubmissionError", "CalledProcessError"):
            raise
        raise _refused(e, opts) from None
    finally:
        if new:
            os.makedirs(os.path.dirname(jobs_file(campaign)), exist_ok=True)
            atomic_write_json(jobs_file(campaign), {**jobs, **new})
    say(f"submitted {len(new)} runs: jobs {', '.join(sorted({j.split('_')[0] for j in new.values()}))}")
    return new


def _submit(campaign: Campaign, runs: list[Run], opts: SlurmOptions, name: str, new: dict[str, str]) -> None:
    for run in [r for r in runs if r.kind == "imp"]:
        job = _executor(campaign, opts, run.gpus, f"{name}-imp").submit(Task(run, opts.cpus_per_run))
        new[run.id] = str(job.job_id)
    transfer = [r for r in runs if r.kind == "transfer"]
    if transfer:
        ex = _executor(campaign, opts, opts.gpus_per_run, name)
        with ex.batch():
            array = [ex.submit(Task(r, opts.cpus_per_run)) for r in transfer]
        new.update({r.id: str(j.job_id) for r, j in zip(transfer, array)})


def run_slurm(campaign: Campaign, opts: SlurmOptions, *, follow: bool = False, poll: float = 30.0,
              retries: int = 2, say: Callable[[str], None] = print) -> int:
    """Submit what is left; with `follow`, stay until nothing is queued and nothing more can start, submitting
    transfer runs as their tickets appear and a run whose job died (cancelled, node failure, exit other than 2)
    again, up to `retries` times. Returns the number of runs that failed or were given up on (0 when all went
    well): `sweep.py run --follow` exits non-zero while any run cannot make progress."""
    if not shutil.which("sbatch"):
        raise UserError("--slurm: sbatch not found on this machine: run where SLURM is installed, or use --local")
    tries: dict[str, int] = {}
    while True:
        rows = state.states(campaign, queued(campaign))
        again = {r.run.id for r in rows if r.run.id in tries and (r.exit == 2 or tries[r.run.id] > retries)}
        todo = [r for r in state.launchable(rows) if r.id not in again]
        submit(campaign, todo, opts, say)
        for r in todo:
            tries[r.id] = tries.get(r.id, 0) + 1
        rows = state.states(campaign, queued(campaign))
        busy = [r for r in rows if r.state in ("queued", "running")]
        if not follow or (not busy and not [r for r in state.launchable(rows) if r.id not in again]):
            c = state.counts(rows)
            say(", ".join(f"{k} {v}" for k, v in c.items() if v))
            stuck = {r.run.id for r in rows if r.state == "failed" or (r.run.id in again and r.state != "done")}
            return len(stuck) if follow else 0
        time.sleep(poll)
