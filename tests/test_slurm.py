"""The campaign on SLURM: what it makes of squeue, scontrol, sacct and sbatch (fast: their real texts, and fake
commands on PATH only for what cannot exist here: a scheduler that fails, GPUs), and live against
script/slurm_up.sh's two-node cluster (slow): arrays chunked to MaxArraySize, a submit limit waited out,
--max-in-flight, a queue SLURM cannot tell never guessed, failures shown with their reason and host, a node that
cannot see an input retried elsewhere and excluded."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import campaignkit as kit
import slurmkit
from campaign import observe, scheduler, slurm, slurmjob, slurmstate, spec, state, status
from slurmkit import slurm_cluster, two_nodes  # noqa: F401  (fixtures)

OPTS = slurm.SlurmOptions(gpus_per_run=0, cpus_per_run=1, time_min=5)


# ---------------------------------------------------------------------------- parsing (fast)
@pytest.mark.parametrize("text, option", [
    ("sbatch: error: Batch job submission failed: Invalid partition name specified", "--partition"),
    ("sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
     "--account"),
    ("sbatch: error: Batch job submission failed: Invalid qos specification", "--qos"),
    ("sbatch: error: Batch job submission failed: Requested time limit is invalid (missing or exceeds some limit)",
     "--time"),
    ("sbatch: error: Batch job submission failed: Invalid generic resource (gres) specification", "--gpus-per-run"),
    ("sbatch: error: Memory specification can not be satisfied\nsbatch: error: Batch job submission failed: "
     "Memory required by task is not available", "the memory asked"),
    ("sbatch: error: Batch job submission failed: Requested node configuration is not available",
     "the CPUs, GPUs and memory asked together"),
    ("sbatch: error: Batch job submission failed: Invalid job array specification", "MaxArraySize"),
    # a word such as "time" or "partition" elsewhere in the text names nothing
    ("sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure) at this time",
     "the SLURM options"),
])
def test_an_sbatch_refusal_names_the_option_sbatch_complained_about(text, option):
    said, hint = scheduler.refusal(text)
    assert option in hint and said.startswith("Batch job submission failed: ") and "\n" not in said
    assert not scheduler.is_limit(text)


@pytest.mark.parametrize("text", [
    "sbatch: error: QOSMaxSubmitJobPerUserLimit\nsbatch: error: Batch job submission failed: Job violates "
    "accounting/QOS policy (job submit limit, user's size and/or time limits)",
    "sbatch: error: AssocMaxSubmitJobLimit\nsbatch: error: Batch job submission failed: Job violates accounting/QOS "
    "policy (job submit limit, user's size and/or time limits)",
    "sbatch: error: Batch job submission failed: Resource temporarily unavailable",
])
def test_a_submit_limit_is_told_from_a_bad_option(text):
    assert scheduler.is_limit(text)
    assert scheduler.limit_name(text) in text


def test_max_array_size_is_read_from_scontrol_show_config():
    text = "Configuration data as of 2026-12-01T10:00:00\nMaxArraySize            = 8\nMaxJobCount  = 10000\n"
    assert scheduler.parse_max_array_size(text) == 8
    assert scheduler.parse_max_array_size("MaxJobCount = 10000\n") is None


def test_sacct_output_gives_each_job_its_end_and_node():
    text = ("12_0|OUT_OF_MEMORY|n2\n12_1|COMPLETED|n1\n12_[2-3,5]|CANCELLED by 0|None assigned\n13|NODE_FAIL|n2\n"
            "14|CANCELLED by 1001|n1\n15|TIMEOUT|n1\n")
    ended = scheduler.parse_sacct(text)
    assert ended["12_0"] == scheduler.Ended("OUT_OF_MEMORY", "n2")
    assert [ended[f"12_{i}"].reason() for i in (2, 3, 5)] == ["CANCELLED by uid 0"] * 3 and "12_4" not in ended
    assert ended["13"].state in scheduler.NODE_FAULTS and ended["14"].reason() == "CANCELLED by uid 1001"
    assert {j for j, e in ended.items() if e.state in scheduler.FAILURES} == {"12_0", "12_2", "12_3", "12_5", "13",
                                                                               "14"}  # TIMEOUT: submitit requeues


def test_squeue_array_ranges_are_expanded():
    text = "20_[3-5%2] PENDING\n20_1 RUNNING\n20_0 COMPLETED\n21 CONFIGURING\n"
    assert scheduler.parse_alive(text) == {"20_3", "20_4", "20_5", "20_1", "21"}


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("slurm_cli")
    inputs = kit.make_inputs(str(d))
    return kit.write_spec(str(d / "c.toml"), inputs, str(d / "runs"), seeds=(1,), modes=("std",))


def _sweep(args: list[str], path_dirs: list[str]) -> subprocess.CompletedProcess:
    env = dict(kit.ENV, PATH=os.pathsep.join(path_dirs))
    return subprocess.run([sys.executable, os.path.join(kit.ROOT, "sweep.py"), *args], capture_output=True,
                          text=True, env=env, cwd=kit.ROOT, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("squeue", ["echo 'slurm_load_jobs error: Socket timed out on send/recv operation' >&2; "
                                    "exit 1", None])
def test_a_queue_slurm_cannot_tell_submits_nothing_in_one_line(spec_file, squeue, tmp_path):
    c = spec.load(spec_file)
    slurmstate.record_jobs(c, {c.runs[0].id: "4242_0"})
    before = open(slurmstate.jobs_file(c)).read()
    bin_ = str(tmp_path / "bin")
    slurmkit.fake(bin_, "sbatch", f"touch {tmp_path}/sbatch-called; echo 'Submitted batch job 1'")
    if squeue:
        slurmkit.fake(bin_, "squeue", squeue)
    done = _sweep(["run", spec_file, "--slurm", "--gpus-per-run", "0"], [bin_, "/usr/bin", "/bin"] if squeue
                  else [bin_])
    assert done.returncode == 3 and done.stderr.count("\n") == 1, done.stderr
    why = "squeue failed (slurm_load_jobs error: Socket timed out" if squeue else "squeue not found"
    assert done.stderr.startswith(f"error: {why}") and done.stderr.endswith("nothing submitted\n")
    assert not os.path.exists(tmp_path / "sbatch-called") and open(slurmstate.jobs_file(c)).read() == before
    plan = _sweep(["plan", spec_file], [bin_, "/usr/bin", "/bin"] if squeue else [bin_])
    assert plan.returncode == 0 and plan.stderr.startswith("warning: ") and "3 runs: " in plan.stdout


def test_a_corrupt_job_id_file_is_no_record_and_is_never_overwritten(tmp_path):
    c = slurmkit.campaign(str(tmp_path), 1)
    os.makedirs(os.path.dirname(slurmstate.jobs_file(c)))
    with open(slurmstate.jobs_file(c), "w") as f:
        f.write('{"r0": ["1_0"')
    with pytest.raises(scheduler.SchedulerError, match=r"jobs\.json is not a record of job ids"):
        slurmstate.recorded_jobs(c)
    with pytest.raises(scheduler.SchedulerError, match=r"^jobs 7 were submitted but not recorded"):
        slurmstate.record_jobs(c, {"r0": "7"})
    assert open(slurmstate.jobs_file(c)).read() == '{"r0": ["1_0"'
    os.unlink(slurmstate.jobs_file(c))
    slurmstate.record_jobs(c, {"r0": "7"})
    slurmstate.record_jobs(c, {"r0": "9_1"})
    assert slurmstate.recorded_jobs(c) == {"r0": ["7", "9_1"]}  # every job a run has had, newest last


def _fake_cluster(bin_: str, max_array: int) -> None:
    """sbatch that keeps the script it is given and answers with a new job id; scontrol with MaxArraySize."""
    slurmkit.fake(bin_, "sbatch", f'n=$(cat {bin_}/n 2>/dev/null || echo 100); echo $((n + 1)) > {bin_}/n\n'
                                  f'echo "Submitted batch job $n"')
    slurmkit.fake(bin_, "scontrol", f"echo 'MaxArraySize            = {max_array}'")


def _scripts(root: str) -> list[str]:
    folder = os.path.join(root, ".campaign", "slurm")
    found = []
    jobs = [j for j in os.listdir(folder) if os.path.isdir(os.path.join(folder, j))]
    for job in sorted(jobs, key=lambda j: int(j.split("_")[0])):
        for name in os.listdir(os.path.join(folder, job)):
            if name.endswith("_submission.sh"):
                with open(os.path.join(folder, job, name)) as f:
                    found.append(f.read())
    return found


def test_an_imp_stage_is_sized_for_its_gpus_and_arrays_are_chunked(tmp_path, monkeypatch):
    """The sbatch scripts submitit writes (ROOT/.campaign/slurm/): GPUs cannot exist here, so sbatch is a fake
    that keeps them; the campaign, submitit and the scripts are real."""
    bin_ = str(tmp_path / "bin")
    _fake_cluster(bin_, 3)
    monkeypatch.setenv("PATH", bin_ + os.pathsep + os.environ["PATH"])
    scheduler.max_array_size.cache_clear()
    c = slurmkit.campaign(str(tmp_path / "root"), 7)
    imp = spec.Run("imp:tiny/aimp", "imp", str(tmp_path / "imp"), ("bash", "-c", "true"), gpus=4,
                   resources=spec.Resources(cpus_per_gpu=3, mem_gb_per_gpu=5, time_min=17, partition="big"))
    opts = slurm.SlurmOptions(partition="small", time_min=30, gpus_per_run=1, cpus_per_run=2,
                              extra={"exclude": "n9"})
    try:
        new = slurm.submit(c, [imp, *c.runs], opts, say=lambda s: None, exclude=("n2",))
    finally:
        scheduler.max_array_size.cache_clear()
    assert new[imp.id] == "100" and [new[f"r{i}"] for i in range(7)] == ["101_0", "101_1", "101_2", "102_0",
                                                                         "102_1", "102_2", "103"]
    first, *arrays = _scripts(c.root)
    for line in ("--cpus-per-task=12", "--mem=20GB", "--time=17", "--partition=big", "--gpus-per-node=4",
                 "--exclude=n2,n9"):
        assert f"#SBATCH {line}\n" in first, first
    assert len(arrays) == 3 and "#SBATCH --array=0-2%3\n" in arrays[0] and "--array" not in arrays[2]
    for line in ("--cpus-per-task=2", "--time=30", "--partition=small", "--gpus-per-node=1", "--exclude=n2,n9"):
        assert all(f"#SBATCH {line}\n" in a for a in arrays), arrays[0]
    assert slurmstate.recorded_jobs(c)["r6"] == ["103"]
    for script in (first, *arrays):  # the job step gets every CPU of the job, whatever srun's version
        setup, srun = script.index("export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-$SLURM_CPUS_ON_NODE}\n"), \
            script.index("srun ")
        assert setup < srun, script


def test_failures_are_grouped_by_host():
    failed_on = {f"r{i}": ("n2", "OUT_OF_MEMORY") for i in range(5)}
    failed_on.update(a=("n2", "exit 3 (node)"), b=("n2", "exit 3 (node)"), c=("vm", "killed by SIGKILL"))
    lines = status.by_host(failed_on, ["n2"])
    assert lines[0] == "failed on n2: 7 runs: OUT_OF_MEMORY x5, exit 3 (node) x2"
    assert lines[1] == "failed on vm: 1 run: killed by SIGKILL" and lines[2].endswith(": n2")


# ---------------------------------------------------------------------------- live (slow)
def _jobs(c) -> dict[str, list[str]]:
    return slurmstate.recorded_jobs(c)


def _arrays(c) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for jobs in _jobs(c).values():
        for j in jobs:
            sizes[j.split("_")[0]] = sizes.get(j.split("_")[0], 0) + 1
    return sizes


@pytest.mark.slow
def test_more_runs_than_max_array_size_and_the_submit_limit_all_get_done(slurm_cluster, tmp_path):
    c = slurmkit.campaign(str(tmp_path), 18)
    said: list[str] = []
    left = slurm.run_slurm(c, OPTS, say=said.append)  # no --follow: the rest is said and the exit is non-zero
    assert 0 < left < 18 and said[-1].startswith(f"{left} runs wait, not submitted (a submit limit)"), said
    assert any("submit limit reached (QOSMaxSubmitJobPerUserLimit)" in s for s in said), said
    assert slurm.run_slurm(c, OPTS, follow=True, poll=1, say=said.append) == 0, said
    assert {r.state for r in state.states(c)} == {"done"}
    assert all(len(js) == 1 for js in _jobs(c).values()) and len(_jobs(c)) == 18  # each submitted once
    size = scheduler.max_array_size()
    assert len(_arrays(c)) >= 3 and max(_arrays(c).values()) <= size, _arrays(c)


@pytest.mark.slow
def test_max_in_flight_caps_the_campaign(slurm_cluster, tmp_path):
    c = slurmkit.campaign(str(tmp_path), 5)
    opts = slurm.SlurmOptions(gpus_per_run=0, cpus_per_run=1, time_min=5, max_in_flight=2)
    said: list[str] = []
    assert slurm.run_slurm(c, opts, follow=True, poll=1, say=said.append) == 0, said
    assert {r.state for r in state.states(c)} == {"done"}
    subs = [s for s in said if s.startswith("submitted ")]
    assert len(subs) >= 3 and all(int(s.split()[1]) <= 2 for s in subs), said


@pytest.mark.slow
def test_a_failing_squeue_while_jobs_are_pending_resubmits_nothing(slurm_cluster, tmp_path, monkeypatch):
    c = slurmkit.campaign(str(tmp_path / "root"), 2, lambda d: slurmkit.finishing(d, 3))
    said: list[str] = []
    assert slurm.run_slurm(c, OPTS, say=said.append) == 0, said
    first = _jobs(c)
    bin_ = str(tmp_path / "bin")
    real = subprocess.run(["bash", "-c", "command -v squeue"], capture_output=True, text=True).stdout.strip()
    # fails its first 3 calls ("slurmctld busy"), then answers as the real one
    slurmkit.fake(bin_, "squeue", f'n=$(cat {bin_}/n 2>/dev/null || echo 0); echo $((n + 1)) > {bin_}/n\n'
                                  f'[ "$n" -ge 3 ] && exec {real} "$@"\n'
                                  'echo "squeue: error: slurm_load_jobs error: Socket timed out" >&2; exit 1')
    monkeypatch.setenv("PATH", bin_ + os.pathsep + os.environ["PATH"])
    with pytest.raises(scheduler.SchedulerError, match=r"^squeue failed .*: nothing submitted$"):
        slurm.run_slurm(c, OPTS, say=lambda s: None)
    said = []
    assert slurm.run_slurm(c, OPTS, follow=True, poll=1, say=said.append) == 0, said
    assert sum("asking again in 1 s" in s for s in said) == 2 and not any("submitted" in s for s in said), said
    assert _jobs(c) == first and {r.state for r in state.states(c)} == {"done"}


def _follow(c, opts=OPTS, retries: int = 2):
    """run_slurm(follow) in a thread: (thread, its said lines, its result list)."""
    said: list[str] = []
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(slurm.run_slurm(c, opts, follow=True, poll=1, retries=retries,
                                                                      say=said.append)), daemon=True)
    t.start()
    return t, said, result


@pytest.mark.slow
def test_a_killed_run_and_a_cancelled_job_are_failed_with_their_reason(slurm_cluster, tmp_path):
    def command(d):  # r0 is SIGKILLed (as by an OOM killer); r1 trains until its job is cancelled
        if d.endswith("r0"):
            return ("bash", "-c", "sleep 1; kill -9 $$")
        return ("bash", "-c", "sleep 120")
    c = slurmkit.campaign(str(tmp_path), 2, command)
    t, said, result = _follow(c)
    slurmkit.wait_until("r1 to run", lambda: os.path.exists(os.path.join(c.runs[1].save_dir, "launch.json")), 120)
    job = _jobs(c)["r1"][-1]  # its array element (its SLURM_JOB_ID may be the whole array's id)
    subprocess.run(["scancel", job], check=True)
    t.join(180)
    assert result == [2], said  # both failed: --follow exits non-zero, neither retried
    assert all(len(js) == 1 for js in _jobs(c).values())
    view = observe.observe(c)
    rows = {r.run.id: r for r in view.rows}
    assert rows["r0"].state == "failed" and rows["r0"].detail.startswith("killed by SIGKILL (out of memory?")
    assert rows["r1"].state == "failed" and rows["r1"].detail.startswith("CANCELLED by uid 0 on n"), rows["r1"]
    assert view.failed_on["r0"][1] == "killed by SIGKILL" and view.failed_on["r1"][1] == "CANCELLED"
    assert slurmkit.read_json(os.path.join(c.runs[1].save_dir, "launch.json")).get("exit") is None  # not said there
    assert "r1" in slurmkit.read_json(os.path.join(c.root, ".campaign", "failures.json"))


@pytest.mark.slow
def test_a_node_that_cannot_see_an_input_is_retried_elsewhere_and_excluded(two_nodes, tmp_path):
    """n2's jobs see script/slurm_up.sh's mount folder empty (a mount n2 lacks): with n1 drained both runs meet
    it on n2 (exit 3), n2 is excluded after two distinct runs, and they are done on n1 once it is back."""
    assert os.path.exists(slurmkit.ON_N1_ONLY)
    c = slurmkit.campaign(str(tmp_path), 2, inputs=(slurmkit.ON_N1_ONLY,))
    slurmkit.drain("n1")
    t, said, result = _follow(c, retries=6)
    slurmkit.wait_until("n2 excluded", lambda: slurmstate.excluded_hosts(c) == ["n2"], 120)
    slurmkit.resume("n1")
    t.join(180)
    assert result == [0], said
    assert {r.state for r in state.states(c)} == {"done"}
    assert any("(not on n2)" in s for s in said), said
    hosts = slurmkit.read_json(os.path.join(c.root, ".campaign", "hosts.json"))
    assert sorted(hosts["infrastructure_failures"]["n2"]) == ["r0", "r1"] and hosts["excluded"] == ["n2"]
    with open(os.path.join(c.runs[0].save_dir, "stdout.txt")) as f:
        text = f.read()
    assert f"error: {slurmkit.ON_N1_ONLY} not found on n2 (a mount missing on this node?)" in text
    assert "excluded hosts (failures of the node, not the runs): n2" in status.status_text(
        c, state.states(c), {}, slurmstate.excluded_hosts(c))


def _holding(save_dir: str, then: str, job: dict[str, str]) -> subprocess.Popen:
    """A process of SLURM job `job` (its SLURM_* variables) holding SAVE_DIR's lease (as a running entry point
    does) until told on stdin, then `then`."""
    code = (f"import sys; sys.path.insert(0, {kit.ROOT!r}); from training import savedir; "
            f"savedir.hold_save_dir({save_dir!r}); print('held', flush=True); sys.stdin.readline(); {then}")
    env = {k: v for k, v in kit.ENV.items() if not k.startswith("SLURM_")}
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**env, **job})
    assert proc.stdout.readline() == "held\n"
    return proc


def _as_job(monkeypatch, job: dict[str, str]) -> None:
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in job.items():
        monkeypatch.setenv(name, value)


ARRAY_ELEMENT = {"SLURM_JOB_ID": "46", "SLURM_ARRAY_JOB_ID": "45", "SLURM_ARRAY_TASK_ID": "3"}


@pytest.mark.parametrize("job", [{"SLURM_JOB_ID": "77"}, ARRAY_ELEMENT])
@pytest.mark.parametrize("end, launch", [("os.kill(os.getpid(), 9)", True), ("finish()", False)])
def test_a_requeued_job_waits_while_its_own_earlier_incarnation_holds_the_lease(tmp_path, monkeypatch, job, end,
                                                                                launch):
    """A requeue that finds its own job still holding the lease waits: once that holder dies (its lease stale) it
    launches the run, once the holder has finished the run it launches nothing."""
    save = str(tmp_path / "run")
    os.makedirs(save)
    finish = (f"open({os.path.join(save, state.RESULTS)!r}, 'w').write('{{\"complete\": true}}')")
    holder = _holding(save, f"import os\ndef finish(): {finish}\n{end}", job)
    _as_job(monkeypatch, job)
    task = slurm.Task(spec.Run("r", "transfer", save, ("true",)), None)
    answer: list[bool] = []
    said: list[str] = []
    waiting = threading.Thread(target=lambda: answer.append(task.wait_for_holder(poll=0.05, say=said.append)))
    waiting.start()
    waiting.join(0.5)
    assert waiting.is_alive() and not answer  # its own holder is alive: the job waits
    holder.stdin.write("go\n")
    holder.stdin.flush()
    holder.wait(30)
    waiting.join(30)
    assert answer == [launch] and said == []


@pytest.mark.parametrize("holder_job, mine, named", [
    ({"SLURM_JOB_ID": "77"}, {"SLURM_JOB_ID": "78"}, "(job 77, since "),        # a duplicate job
    ({"SLURM_JOB_ID": "45"}, ARRAY_ELEMENT, "(job 45, since "),                # another job, the same number's array
    ({}, {"SLURM_JOB_ID": "78"}, " (since "),                                 # a run started by hand
    ({}, {}, " (since "),                                                      # nobody's job: never "its own"
])
def test_a_job_leaves_at_once_a_run_that_another_job_or_process_trains(tmp_path, monkeypatch, holder_job, mine,
                                                                        named):
    """No idle duplicates: a job that finds the run trained by anyone but its own earlier incarnation says so in one
    line and launches nothing (the campaign sees the run running, and submits it again only if that holder dies)."""
    save = str(tmp_path / "run")
    os.makedirs(save)
    holder = _holding(save, "pass", holder_job)
    try:
        _as_job(monkeypatch, mine)
        said: list[str] = []
        answer: list[bool] = []
        task = slurm.Task(spec.Run("r", "transfer", save, ("true",)), None)
        waiting = threading.Thread(target=lambda: answer.append(task.wait_for_holder(poll=0.05, say=said.append)),
                                   daemon=True)
        waiting.start()
        waiting.join(10)
        assert answer == [False]  # at once, not after the holder
        me = slurmjob.lease.slurm_job() or "no SLURM job"
        assert len(said) == 1 and said[0].startswith(f"r: trained by pid {holder.pid} on ") and named in said[0]
        assert said[0].endswith(f", not this job ({me}): nothing to do here"), said
    finally:
        holder.stdin.write("go\n")
        holder.stdin.flush()
        holder.wait(30)


@pytest.mark.parametrize("env, asked", [({"SLURM_CPUS_PER_TASK": "2"}, 2),
                                        ({"SLURM_JOB_CPUS_PER_NODE": "4(x2)"}, 4)])
def test_a_step_that_sees_fewer_cpus_than_its_job_stops_with_exit_3(tmp_path, monkeypatch, env, asked):
    """SLURM 22.05-23.02's srun binds a step to one core unless told the job's CPUs: the run is not started on it;
    one line and exit 3 (the node's or the cluster's fault, retried elsewhere)."""
    for name in ("SLURM_CPUS_PER_TASK", "SLURM_JOB_CPUS_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**env, "SLURMD_NODENAME": "n7"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    save = str(tmp_path / "run")
    task = slurm.Task(spec.Run("r", "transfer", save, ("touch", os.path.join(save, "started"))), None)
    line = (f"error: this job step may use 1 of the {asked} CPUs its job has on n7 (the step was bound to fewer "
            "cores: srun needs --cpus-per-task or SRUN_CPUS_PER_TASK)")
    with pytest.raises(slurm.RunFailed) as failed:
        task()
    assert str(failed.value) == f"r: exit 3: {line}"
    record = slurmkit.read_json(os.path.join(save, state.LAUNCH))
    assert record["exit"] == 3 and record["error"] == line and record["node"] == "n7"
    assert not os.path.exists(os.path.join(save, "started"))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(asked)))
    assert task() == 0 and os.path.exists(os.path.join(save, "started"))  # every CPU: the run starts


def test_the_scheduler_s_stop_signals_reach_the_run_which_releases_its_lease(tmp_path):
    """Under cgroup process tracking SLURM signals only the step's task (the Task's process): SIGTERM (and
    SIGINT, SIGHUP, SIGUSR1 as SIGTERM) is passed on to the run's process group, whose entry point releases its
    lease at once; submitit's checkpoint signal (USR2) stays the Task's own and the run ignores it."""
    save = str(tmp_path / "run")
    run = spec.Run("r", "transfer", save, slurmkit.holding(save, 60))
    task = slurm.Task(run, None)
    before = {sig: signal.getsignal(sig) for sig in slurmjob.FORWARD}
    outcome: list[BaseException] = []
    try:
        task._forward_signals()  # what __call__ does first when it runs in the main thread, as under submitit
        assert {sig for sig in before if signal.getsignal(sig) == task._on_signal} == {
            signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1}
        assert signal.getsignal(signal.SIGUSR2) != task._on_signal
        thread = threading.Thread(target=lambda: outcome.append(_raised(task)))
        thread.start()
        slurmkit.wait_until("the run to hold its lease", lambda: slurmkit.starts(save), 30)
        os.killpg(task.execution.proc.pid, signal.SIGUSR2)  # as process tracking by tree would deliver it
        time.sleep(0.5)
        assert task.execution.proc.poll() is None and state.lock_holder(save)  # ignored: the run trains on
        os.kill(os.getpid(), signal.SIGTERM)  # scancel
        slurmkit.wait_until("the lease released", lambda: not os.path.exists(os.path.join(save, ".lease")), 10)
        thread.join(20)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        if task.execution is not None and task.execution.proc.poll() is None:
            task.execution.proc.kill()
    assert [str(e) for e in outcome] == ["r: stopped by SIGTERM from outside (scancel, preemption, a node going "
                                         "down): it resumes when launched again"]
    record = slurmkit.read_json(os.path.join(save, state.LAUNCH))
    assert record["exit"] is None and record["interrupted"] == signal.SIGTERM  # not a failure: resumes
    assert state.state_of(run).state == "pending"


def _raised(task) -> BaseException | None:
    try:
        task()
    except BaseException as e:  # RunFailed
        return e
    return None


@pytest.mark.slow
def test_two_runs_of_one_campaign_at_once_submit_one_array(slurm_cluster, tmp_path):
    """The second `sweep.py run --slurm` while the first follows is refused in one line; the campaign's runs go
    out once, as one array."""
    inputs = kit.make_inputs(str(tmp_path))
    path = kit.write_spec(str(tmp_path / "c.toml"), inputs, str(tmp_path / "runs"), seeds=(1, 2), modes=("std",),
                          tickets="")
    cmd = [sys.executable, os.path.join(kit.ROOT, "sweep.py"), "run", path, "--slurm", "--gpus-per-run", "0",
           "--cpus-per-run", "1", "--time", "5"]
    first = subprocess.Popen([*cmd, "--follow", "--poll", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=kit.ENV, cwd=kit.ROOT)
    try:
        c = spec.load(path)
        slurmkit.wait_until("the first run to submit", lambda: bool(_jobs(c)), 120)
        second = subprocess.run(cmd, capture_output=True, text=True, env=kit.ENV, cwd=kit.ROOT, timeout=120)
        out, err = first.communicate(timeout=400)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert second.stderr.startswith("error: another `sweep.py run` is launching the runs of ") and \
        f"pid {first.pid} on " in second.stderr
    assert first.returncode == 0, out[-2000:] + err[-2000:]
    jobs = _jobs(c)
    assert sorted(jobs) == sorted(r.id for r in c.runs) and all(len(js) == 1 for js in jobs.values())
    assert len(_arrays(c)) == 1  # one array, submitted once
    assert {r.state for r in state.states(c)} == {"done"}


def _slurm_version() -> tuple[int, int]:
    out = subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.split()[-1]
    return tuple(int(x) for x in out.split(".")[:2])


@pytest.mark.slow
def test_a_job_step_gets_every_cpu_its_job_asked_for(two_nodes, tmp_path):
    """script/slurm_up.sh's nodes bind tasks to the cores their step asked for: there a plain `srun` step of a
    2-CPU job gets 1 CPU (srun of SLURM 22.05-23.02 does not read SLURM_CPUS_PER_TASK); the campaign's job
    step gets both."""
    plain = tmp_path / "plain.txt"
    subprocess.run(["sbatch", "--wait", "-c", "2", "-o", str(plain), "--wrap", "srun nproc"], check=True,
                   capture_output=True, timeout=120)
    if (22, 5) <= _slurm_version() <= (23, 2):
        assert plain.read_text().split() == ["1"]  # the fault the campaign's jobs must not meet
    c = slurmkit.campaign(str(tmp_path / "root"), 1, lambda d: ("bash", "-c", f"nproc > {d}/cpus && echo "
                                                                          f"'{{\"complete\": true}}' > {d}/results.json"))
    opts = slurm.SlurmOptions(gpus_per_run=0, cpus_per_run=2, time_min=5)
    said: list[str] = []
    assert slurm.run_slurm(c, opts, follow=True, poll=1, say=said.append) == 0, said
    with open(os.path.join(c.runs[0].save_dir, "cpus")) as f:
        assert f.read().split() == ["2"]


def _ended(save_dir: str) -> dict | None:
    """The run's launch.json once it records the run's end."""
    record = slurmkit.read_json(os.path.join(save_dir, state.LAUNCH))
    return record if isinstance(record, dict) and record.get("end") else None


def _requeue(job: str) -> None:
    """scontrol requeue, retried while SLURM still calls the job's start "pending execution"."""
    for _ in range(20):
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if done.returncode == 0:
            return
        assert "pending execution" in done.stderr, done.stderr
        time.sleep(0.5)
    raise AssertionError(f"scontrol requeue {job} kept failing")


@pytest.mark.slow
def test_a_requeued_or_cancelled_job_releases_its_lease_and_its_requeue_elsewhere_starts_at_once(two_nodes,
                                                                                                   tmp_path):
    """Under cgroup process tracking SLURM's SIGTERM reaches only the job step's task; passed on, it makes the run
    release its lease at once: a requeue on the other node starts within SLURM's requeue delay rather than after
    the lease's stale bound (600 s: n2's processes are on another host for n1), and scancel leaves no lease."""
    c = slurmkit.campaign(str(tmp_path), 1, lambda d: slurmkit.holding(d, 600))
    save = c.runs[0].save_dir
    lease_file = os.path.join(save, ".lease")
    slurmkit.drain("n1")
    job = slurm.submit(c, list(c.runs), OPTS, say=lambda s: None)["r0"]
    try:
        slurmkit.wait_until("the run to start on n2", lambda: slurmkit.starts(save), 120)
        assert slurmkit.starts(save)[0][0] == "n2" and state.lease_of(save).holder.job == job
        slurmkit.resume("n1")
        slurmkit.drain("n2")
        requeued = time.time()
        _requeue(job)
        slurmkit.wait_until("the lease released", lambda: not os.path.exists(lease_file), 8)
        slurmkit.wait_until("the requeue to start on n1", lambda: len(slurmkit.starts(save)) == 2, 90)
        node, started = slurmkit.starts(save)[1]
        assert node == "n1" and started - requeued < 60
        slurmkit.wait_until("the requeue to hold the lease", lambda: os.path.exists(lease_file), 10)
        subprocess.run(["scancel", job], check=True)
        slurmkit.wait_until("the lease released", lambda: not os.path.exists(lease_file), 8)
        record = slurmkit.wait_until("the run's end recorded", lambda: _ended(save), 10)
    finally:
        subprocess.run(["scancel", job], capture_output=True)
    assert record["exit"] is None and record["interrupted"] == signal.SIGTERM  # stopped, not failed: it resumes


@pytest.mark.slow
def test_a_duplicate_job_of_a_running_run_ends_at_once(slurm_cluster, tmp_path):
    """A second job of a run that another job trains (a submission that was never recorded, say) does not idle
    its allocation: it says who trains the run in one line of its log and ends; the first trains on."""
    c = slurmkit.campaign(str(tmp_path), 1, lambda d: slurmkit.holding(d, 600))
    save = c.runs[0].save_dir
    first = slurm.submit(c, list(c.runs), OPTS, say=lambda s: None)["r0"]
    second = None
    try:
        slurmkit.wait_until("the run to start", lambda: slurmkit.starts(save), 120)
        second = slurm.submit(c, list(c.runs), OPTS, say=lambda s: None)["r0"]
        slurmkit.wait_until("the second job to end", lambda: second not in scheduler.alive_jobs(), 60)
        assert first in scheduler.alive_jobs() and len(slurmkit.starts(save)) == 1
        assert state.lease_of(save).holder.job == first
        folder = os.path.join(c.root, ".campaign", "slurm", second.split("_")[0])
        log = "".join(open(os.path.join(folder, f)).read() for f in os.listdir(folder) if f.endswith("_log.out"))
        lines = [ln for ln in log.splitlines() if "trained by" in ln]
        assert len(lines) == 1 and lines[0].startswith("r0: trained by pid ") and f"(job {first}, since " in \
            lines[0] and lines[0].endswith(f", not this job ({second}): nothing to do here"), log
    finally:
        subprocess.run(["scancel", first, *([second] if second else [])], capture_output=True)


@pytest.mark.slow
def test_a_job_whose_data_reads_block_ends_with_exit_3_after_the_stall_bound(slurm_cluster, tmp_path):
    """A transfer run on the cluster whose image folder holds a FIFO (a read that never returns, as on a hung
    mount): after DOUBLEWIN_STALL_S without progress the run writes its stacks to log.txt, releases its lease and
    exits 3 (the node's fault: the campaign retries it elsewhere); the job ends instead of holding its node."""
    inputs = kit.make_inputs(str(tmp_path))
    os.mkfifo(os.path.join(inputs["data"], "train", "ant", "00099.png"))

    def command(save: str) -> tuple[str, ...]:
        return ("env", "DOUBLEWIN_STALL_S=6", "bash", os.path.join(kit.ROOT, "script", "train_downstream", "std.sh"),
                "folder", inputs["init"], save, "", "--data", inputs["data"], *kit.TINY)
    c = slurmkit.campaign(str(tmp_path / "root"), 1, command)
    save = c.runs[0].save_dir
    job = slurm.submit(c, list(c.runs), OPTS, say=lambda s: None)["r0"]
    try:
        record = slurmkit.wait_until("the run's end recorded", lambda: _ended(save), 150)
        slurmkit.wait_until("the job to end", lambda: job not in scheduler.alive_jobs(), 30)
    finally:
        subprocess.run(["scancel", job], capture_output=True)
    assert record["exit"] == 3 and record["end"] - record["start"] >= 6, record
    assert "no training or evaluation progress for over 6 s" in record["error"], record
    log = open(os.path.join(save, "log.txt")).read()
    assert "(DOUBLEWIN_STALL_S): the stack of every thread follows" in log and "in __getitem__" in log
    assert not os.path.exists(os.path.join(save, state.LEASE))
