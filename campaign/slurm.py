"""SLURM through submitit: transfer runs as job arrays of at most the cluster's MaxArraySize, an IMP stage as a
job of its own sized for its GPUs; a time limit or preemption requeues the run (it resumes), a user error
(exit 2) does not; a node's fault (exit 3, NODE_FAIL) is retried elsewhere and a host that keeps failing runs is
excluded. Submit limits are waited out, never fatal. The queue is asked once per poll and never guessed."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

from campaign import scheduler, slurmstate, state
from campaign.execute import Execution, child_env
from campaign.scheduler import SchedulerError
from campaign.slurmstate import NODE_EXIT, View, jobs_file, recorded_jobs  # noqa: F401  (the campaign's records)
from campaign.spec import REPO, Campaign, Run
from infra.checkpoint import atomic_write_json
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


class RunFailed(Exception):
    """A run's command failed: the job ends FAILED and is not requeued."""


HOLDER_POLL_S = 10.0  # a job waiting for a live lease holder reads the lease this often


class Task:
    """What one array element runs: the run's bash driver; on USR2 (time limit, preemption) submitit calls
    `checkpoint`, which stops the driver and requeues a fresh Task: the re-run resumes from SAVE_DIR."""

    def __init__(self, run: Run, threads: int | None) -> None:
        self.run, self.threads, self.execution = run, threads, None

    def __call__(self) -> int:
        if not self.wait_for_holder():
            return 0  # the holder finished the run meanwhile: nothing left to do here
        missing = next((p for p in self.run.inputs if not os.path.exists(p)), None)
        if missing:
            raise RunFailed(_unseen_input(self.run, missing))
        threads = self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0")) or None
        self.execution = Execution(self.run, child_env(threads))
        # poll rather than wait(): submitit's USR2 handler runs `checkpoint` in this thread, and its own wait()
        # on the child would deadlock inside a blocking one
        while (code := self.execution.poll()) is None:
            time.sleep(0.5)
        if code != 0:
            _note_node(self.run)
            raise RunFailed(f"{self.run.id}: exit {code}: {self.execution.record.get('error')}")
        return code

    def wait_for_holder(self, poll: float = HOLDER_POLL_S) -> bool:
        """While SAVE_DIR's lease has a live holder, wait (a requeue can land while the old job's process still
        beats; on a node that died with it the heartbeat has stopped, and the lease goes stale within its bound):
        True once the lease is released or stale (the run resumes here), False once the run is done."""
        while state.lock_holder(self.run.save_dir):
            if state.state_of(self.run).state == "done":
                return False
            time.sleep(poll)
        return state.state_of(self.run).state != "done"

    def checkpoint(self, *args, **kwargs):
        import submitit
        if self.execution is not None:
            self.execution.terminate()
        return submitit.helpers.DelayedSubmission(Task(self.run, self.threads))

    def __getstate__(self) -> dict:
        return {"run": self.run, "threads": self.threads, "execution": None}


def _node() -> str:
    """This node's SLURM name (what sbatch --exclude takes), else its hostname."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def _unseen_input(run: Run, path: str) -> str:
    """Record in launch.json (exit 3: the node is at fault) that this node cannot see an input of the run."""
    error = f"error: {path} not found on {_node()} (a mount missing on this node?)"
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
                  slurm_setup=[f"export PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}", f"cd {REPO}"],
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
