"""SLURM through submitit: transfer runs as job arrays of at most the cluster's MaxArraySize, an IMP stage as a
job of its own sized for its GPUs; a time limit or preemption requeues the run (it resumes), a user error
(exit 2) does not; a node's fault (exit 3, NODE_FAIL) is retried elsewhere and a host that keeps failing runs is
excluded. Submit limits are waited out, never fatal. The queue is asked once per poll and never guessed."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable

from campaign import scheduler, slurmstate, state
from campaign.scheduler import SchedulerError
from campaign.slurmjob import RunFailed, Task  # noqa: F401  (what a job runs)
from campaign.slurmstate import NODE_EXIT, View, jobs_file, recorded_jobs  # noqa: F401  (the campaign's records)
from campaign.spec import REPO, Campaign, Run
from infra.errors import UserError


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
    max_in_flight: int | None = None  # campaign-wide cap on runs queued or running (None: no cap)


SETTLE_S = 60  # how long a job squeue no longer lists may stay unrecorded in accounting before it counts as ended


def queued(campaign: Campaign) -> set[str]:
    """Run ids with a recorded SLURM job still pending or running; SchedulerError when squeue cannot tell."""
    jobs = recorded_jobs(campaign)
    alive = scheduler.alive_jobs() if jobs else set()
    return {rid for rid, js in jobs.items() if any(j in alive for j in js)}


def _executor(campaign: Campaign, opts: SlurmOptions, run: Run | None = None, exclude: tuple[str, ...] = ()):
    """submitit's executor for an IMP stage (`run`: sized by its Resources, per GPU) or a transfer array."""
    import submitit
    folder = os.path.join(campaign.root, ".campaign", "slurm", "%j")
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=opts.max_requeue)
    name = os.path.splitext(os.path.basename(campaign.path))[0]
    res = run.resources if run is not None else None
    gpus = run.gpus if run is not None else opts.gpus_per_run
    extra = dict(opts.extra)
    hosts = sorted({*(h for h in str(extra.pop("exclude", "")).split(",") if h), *exclude})
    params = dict(slurm_job_name=f"{name}-imp" if run is not None else name, gpus_per_node=gpus, nodes=1,
                  timeout_min=(res.time_min if res and res.time_min else opts.time_min), tasks_per_node=1,
                  slurm_array_parallelism=opts.array_parallelism, slurm_signal_delay_s=opts.signal_delay_s,
                  slurm_setup=[f"export PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}", f"cd {REPO}",
                               # the step gets every CPU of the job (srun of SLURM 22.05-23.02 no longer reads
                               # SLURM_CPUS_PER_TASK; the partition's default CPUs set only this one)
                               "export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-$SLURM_CPUS_ON_NODE}"],
                  slurm_additional_parameters={"requeue": True, **extra, **({"exclude": ",".join(hosts)}
                                                                            if hosts else {})})
    if res:
        params.update(cpus_per_task=res.cpus_per_gpu * gpus, mem_gb=res.mem_gb_per_gpu * gpus)
    elif opts.cpus_per_run:
        params["cpus_per_task"] = opts.cpus_per_run
    for key, value in (("slurm_partition", (res.partition if res else None) or opts.partition),
                       ("slurm_account", opts.account), ("slurm_qos", opts.qos)):
        if value:
            params[key] = value
    ex.update_parameters(**params)
    return ex


class _Limit(Exception):
    """sbatch refused for this user's submit limits: what was accepted stands, the rest waits."""


def _sbatch(submit_them: Callable[[], list]) -> list:
    """Call submitit; a refusal is _Limit (a submit limit) or one UserError line naming what to change."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's refusal; we say it in one line
            return submit_them()
    except Exception as e:  # sbatch said no
        if type(e).__name__ not in ("FailedJobError", "FailedSubmissionError", "CalledProcessError"):
            raise
        said, option = scheduler.refusal(str(e))
        if scheduler.is_limit(str(e)):
            raise _Limit(scheduler.limit_name(str(e))) from None
        raise UserError(f"sbatch refused the jobs ({said}): check {option}") from None


def _submit(campaign: Campaign, runs: list[Run], opts: SlurmOptions, exclude: tuple[str, ...],
            new: dict[str, str]) -> None:
    """IMP stages one job each, then transfer runs as arrays of at most MaxArraySize; a submit-limit refusal
    halves the array and tries again, down to one run, then raises _Limit (`new` holds what was accepted)."""
    for run in [r for r in runs if r.kind == "imp"]:
        threads = run.resources.cpus_per_gpu if run.resources else opts.cpus_per_run
        ex = _executor(campaign, opts, run, exclude)
        new[run.id] = str(_sbatch(lambda: [ex.submit(Task(run, threads))])[0].job_id)
    transfer = [r for r in runs if r.kind == "transfer"]
    size = scheduler.max_array_size() if transfer else 1
    while transfer:
        chunk = transfer[:size]
        ex = _executor(campaign, opts, None, exclude)

        def array(ex=ex, chunk=chunk) -> list:
            with ex.batch():
                jobs = [ex.submit(Task(r, opts.cpus_per_run)) for r in chunk]
            return jobs
        try:
            jobs = _sbatch(array)
        except _Limit:
            if size == 1:
                raise
            size //= 2
            continue
        new.update({r.id: str(j.job_id) for r, j in zip(chunk, jobs)})
        transfer = transfer[size:]


def submit(campaign: Campaign, runs: list[Run], opts: SlurmOptions, say: Callable[[str], None] = print,
           exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """Submit `runs` (not to the `exclude` hosts) and append their job ids to the job-id file; returns run id ->
    job id of those submitted (fewer than `runs` when a submit limit stopped the rest, which is said)."""
    new: dict[str, str] = {}
    if not runs:
        return new
    try:
        _submit(campaign, runs, opts, exclude, new)
    except _Limit as e:
        left = len(runs) - len(new)
        say(f"sbatch: submit limit reached ({e}): {left} runs not submitted yet")
    finally:
        slurmstate.record_jobs(campaign, new)
    if new:
        arrays = sorted({j.split('_')[0] for j in new.values()}, key=int)
        say(f"submitted {len(new)} runs: jobs {', '.join(arrays)}" + (f" (not on {', '.join(exclude)})"
                                                                     if exclude else ""))
    return new


def _to_submit(view: View, tries: dict[str, int], retries: int, hold: set[str]) -> tuple[list[Run], set[str]]:
    """(runs to submit now, runs given up on). A run tried in this invocation is submitted again only when its
    job ended without a verdict (partial, pending) or the node is blamed (exit 3, NODE_FAIL), at most `retries`
    more times; a user error (exit 2) or any other failure is left for the user. `hold`: not yet."""
    gave_up = set()
    for r in view.rows:
        rid = r.run.id
        if rid not in tries or r.state not in state.TODO:
            continue
        if tries[rid] > retries or (r.state == "failed" and rid not in view.node_fault):
            gave_up.add(rid)
    return [r for r in state.launchable(view.rows) if r.id not in gave_up | hold], gave_up


def _room(view: View, opts: SlurmOptions) -> int | None:
    """How many more runs --max-in-flight lets go (None: no cap)."""
    if opts.max_in_flight is None:
        return None
    return max(0, opts.max_in_flight - sum(r.state in ("queued", "running") for r in view.rows))


def run_slurm(campaign: Campaign, opts: SlurmOptions, *, follow: bool = False, poll: float = 30.0,
              retries: int = 2, say: Callable[[str], None] = print) -> int:
    """Submit what is left (SLURM asked once per poll: if it cannot say what is queued, nothing is submitted).
    With `follow`, stay until nothing is queued and nothing more can start: submit runs as tickets appear, as
    --max-in-flight and submit limits make room, and again after a node's fault (elsewhere). Returns the number
    of runs that failed or were given up on with `follow`, else the number left unsubmitted (0: all went well)."""
    if not shutil.which("sbatch"):
        raise UserError("--slurm: sbatch not found on this machine: run where SLURM is installed, or use --local")
    with state.campaign_lease(campaign):  # one `run` per campaign: the job-id file's read-modify-write is ours
        return _run(campaign, opts, follow, poll, retries, say)


def _run(campaign: Campaign, opts: SlurmOptions, follow: bool, poll: float, retries: int,
         say: Callable[[str], None]) -> int:
    tries: dict[str, int] = {}
    settling_since: dict[str, float] = {}
    while True:
        try:
            view = slurmstate.observe(campaign)
        except SchedulerError as e:
            if not follow:
                raise SchedulerError(f"{e}: nothing submitted") from None
            say(f"{e}: asking again in {poll:g} s")
            time.sleep(poll)
            continue
        now = time.time()  # a job's end that accounting has not recorded in SETTLE_S is taken as ended
        hold = {rid for rid in view.settling if now - settling_since.setdefault(rid, now) < SETTLE_S}
        todo, gave_up = _to_submit(view, tries, retries, hold)
        room = _room(view, opts)
        held = len(todo) - room if room is not None and len(todo) > room else 0
        todo = todo[:room] if room is not None else todo
        new = submit(campaign, todo, opts, say, tuple(view.excluded))
        for rid in new:
            tries[rid] = tries.get(rid, 0) + 1
        left = len(todo) - len(new) + held
        if not follow:
            if left:
                why = "a submit limit" if len(todo) > len(new) else "--max-in-flight"
                say(f"{left} runs wait, not submitted ({why}): run again, or add --follow")
            return left
        busy = hold or any(r.state in ("queued", "running") for r in view.rows)
        if not busy and not todo and not left:
            say(", ".join(f"{k} {v}" for k, v in state.counts(view.rows).items() if v))
            return sum(r.state == "failed" or (r.run.id in gave_up and r.state != "done") for r in view.rows)
        time.sleep(poll)
