"""SLURM through submitit: the loop of `sweep.py run --slurm`, each poll one flow: observe (observe.py), decide
(decide.py), submit and record (submit.py, slurmstate.py), and the executor every job is submitted with; what a
job runs is campaign/slurmjob.py. Submit limits and a busy controller are waited out, never fatal."""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable

from campaign import decide, observe, scheduler, state
from campaign import submit as submitting
from campaign.scheduler import SchedulerError
from campaign.slurmjob import RunFailed, Task  # noqa: F401  (what a job runs)
from campaign.slurmstate import NODE_EXIT, recorded_jobs
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


def queued(campaign: Campaign) -> set[str]:
    """Run ids with a recorded SLURM job still pending or running; SchedulerError when squeue or jobs.json cannot
    tell."""
    jobs = recorded_jobs(campaign)
    alive = scheduler.alive_jobs() if jobs else set()
    return {rid for rid, js in jobs.items() if any(j in alive for j in js)}


def _executor(campaign: Campaign, opts: SlurmOptions, run: Run | None = None, exclude: tuple[str, ...] = (),
              comment: str | None = None):
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
                       ("slurm_account", opts.account), ("slurm_qos", opts.qos), ("slurm_comment", comment)):
        if value:
            params[key] = value
    ex.update_parameters(**params)
    return ex


def submit(campaign: Campaign, runs: list[Run], opts: SlurmOptions, say: Callable[[str], None] = print,
           exclude: tuple[str, ...] = ()) -> submitting.Submitted:
    """Submit `runs` as Tasks (not to the `exclude` hosts), each sbatch recorded as it goes (campaign/submit.py);
    returns run id -> job id of those submitted."""
    def threads(run: Run) -> int | None:
        return run.resources.cpus_per_gpu if run.kind == "imp" and run.resources else opts.cpus_per_run
    return submitting.submit(campaign, runs, lambda run, comment: _executor(campaign, opts, run, exclude, comment),
                             lambda run: Task(run, threads(run)), say, exclude)


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
    """Each poll: observe, decide, submit (recording as it goes); SLURM or jobs.json that cannot say, or a
    controller that does not answer, is waited out with --follow."""
    memory = decide.Memory()
    while True:
        try:
            view = observe.observe(campaign)
            if view.adopted:
                say(f"adopted {len(view.adopted)} runs' jobs missing from jobs.json (found by their comment): "
                    f"{', '.join(sorted(view.adopted.values()))}")
            plan = decide.decide(view, memory, retries, opts.max_in_flight, time.time(), say)
            if view.excluded and plan.todo:
                decide.refuse_partition_wide(campaign, view.excluded, decide.partitions(plan.todo, opts.partition))
            new = submit(campaign, plan.todo, opts, say, tuple(view.excluded))
        except SchedulerError as e:
            if not follow:
                raise SchedulerError(f"{e}: nothing submitted") from None
            say(f"{e}: asking again in {poll:g} s")
            time.sleep(poll)
            continue
        for rid in new:
            memory.tries[rid] = memory.tries.get(rid, 0) + 1
        left = len(plan.todo) - len(new) + plan.held
        if not follow:
            if left:
                why = new.stopped_by or "--max-in-flight"
                say(f"{left} runs wait, not submitted ({why}): run again, or add --follow")
            return left
        busy = plan.settling or any(r.state in ("queued", "running") for r in view.rows)
        if not busy and not plan.todo and not left:
            say(", ".join(f"{k} {v}" for k, v in state.counts(view.rows).items() if v))
            return sum(r.state == "failed" or (r.run.id in plan.gave_up and r.state != "done") for r in view.rows)
        time.sleep(poll)
