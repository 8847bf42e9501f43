"""The campaign's SLURM path against a fake SLURM on PATH (sbatch, squeue, scontrol, sinfo, sacct as small bash
scripts that keep a queue in a folder): a busy controller waited out and the jobs it accepted meanwhile adopted by
their comment, submitting and recording that no signal splits, jobs.json read strictly, a full disk or quota
blaming no host, exclusions that never cover a partition, expire and can be forgotten, sacct asked once per job."""
from __future__ import annotations

import builtins
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import shimkit
import slurmkit
from campaign import decide, observe, scheduler, slurm, slurmstate, state
from campaign.observe import View
from campaign.state import RunState
from infra import checkpoint
from infra.errors import UserError
from slurmkit import slurm_cluster  # noqa: F401  (fixture)

OPTS = slurm.SlurmOptions(gpus_per_run=0, cpus_per_run=1, time_min=5)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SBATCH = r"""
n=$(cat $B/n 2>/dev/null || echo 100); echo $((n + 1)) > $B/n
script="${@: -1}"
comment=$(sed -n 's/^#SBATCH --comment=//p' "$script")
last=$(sed -n 's/^#SBATCH --array=0-\([0-9]*\).*/\1/p' "$script")
if [ -n "$last" ]; then id="${n}_[0-$last]"; else id=$n; fi
busy=$(cat $B/busy 2>/dev/null || echo 0)
if [ "$busy" -gt 0 ]; then
  echo $((busy - 1)) > $B/busy
  [ -e $B/accept ] && echo "$id|PENDING|$comment" >> $B/queue
  echo "sbatch: error: Batch job submission failed: $(cat $B/busy-text)" >&2; exit 1
fi
[ -e $B/signal ] && kill -$(cat $B/signal) $PPID && sleep 0.3
echo "$id|PENDING|$comment" >> $B/queue
echo "Submitted batch job $n"
"""
SCONTROL = r"""
if [ "$2" = hostnames ]; then exit 1; fi
busy=$(cat $B/scontrol-busy 2>/dev/null || echo 0)
if [ "$busy" -gt 0 ]; then echo $((busy - 1)) > $B/scontrol-busy
  echo "slurm_load_ctl_conf error: Unable to contact slurm controller (connect failure)" >&2; exit 1; fi
echo 'MaxArraySize            = 1001'
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake SLURM on PATH; returns its folder (write `queue`, `sinfo`, `sacct`, `busy`... there)."""
    b = str(tmp_path / "bin")
    sacct = "printf '%s\\n' \"$*\" >> $B/sacct-calls; cat $B/sacct.out 2>/dev/null; true"
    for name, body in (("sbatch", SBATCH), ("scontrol", SCONTROL), ("squeue", "cat $B/queue 2>/dev/null; true"),
                       ("sinfo", "cat $B/sinfo.out"), ("sacct", sacct)):
        slurmkit.fake(b, name, f"B={b}\n{body}")
    monkeypatch.setenv("PATH", b + os.pathsep + os.environ["PATH"])
    scheduler.max_array_size.cache_clear()
    yield b
    scheduler.max_array_size.cache_clear()


def put(folder: str, name: str, text: str) -> None:
    with open(os.path.join(folder, name), "w") as f:
        f.write(text)


def sbatch_calls(b: str) -> int:
    return int(open(os.path.join(b, "n")).read()) - 100 if os.path.exists(os.path.join(b, "n")) else 0


def finish_all(c) -> None:
    for r in c.runs:
        os.makedirs(r.save_dir, exist_ok=True)
        checkpoint.atomic_write_json(os.path.join(r.save_dir, state.RESULTS), {"complete": True})


def follow(c, poll: float = 0.2):
    said: list[str] = []
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(slurm.run_slurm(c, OPTS, follow=True, poll=poll,
                                                                      say=said.append)), daemon=True)
    t.start()
    return t, said, result


# ---------------------------------------------------------------------------- a busy controller
@pytest.mark.parametrize("text", ["Socket timed out on send/recv operation",
                                  "Unable to contact slurm controller (connect failure)"])
def test_a_busy_controller_is_waited_out_and_a_job_it_accepted_meanwhile_is_adopted(fake, tmp_path, text):
    c = slurmkit.campaign(str(tmp_path / "root"), 3)
    put(fake, "busy", "1")
    put(fake, "busy-text", text)
    put(fake, "accept", "")  # the controller took the array, then its answer was lost
    said: list[str] = []
    assert slurm.run_slurm(c, OPTS, say=said.append) == 3  # not exit 2 "check the SLURM options": 3 runs wait
    assert said[0].startswith(f"sbatch: the SLURM controller did not answer (Batch job submission failed: {text})")
    assert said[-1].startswith("3 runs wait, not submitted (a busy controller)") and not os.path.exists(slurmstate.jobs_file(c))
    said.clear()
    assert slurm.run_slurm(c, OPTS, say=said.append) == 0  # the next poll finds the job by its comment
    assert slurmstate.recorded_jobs(c) == {"r0": ["100_0"], "r1": ["100_1"], "r2": ["100_2"]}
    assert said == ["adopted 3 runs' jobs missing from jobs.json (found by their comment): 100_0, 100_1, 100_2"]
    assert sbatch_calls(fake) == 1 and slurmstate.intents(c) == {}  # submitted once, in the end recorded
    assert {r.state for r in state.states(c, slurm.queued(c))} == {"queued"}


def test_a_job_that_could_not_be_recorded_is_adopted_by_the_next_poll(fake, tmp_path, monkeypatch):
    c = slurmkit.campaign(str(tmp_path / "root"), 2)
    real = slurmstate._write

    def full(path, data):  # a full disk under ROOT/.campaign/jobs.json only
        if path.endswith("jobs.json"):
            raise checkpoint._write_failed(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        real(path, data)
    monkeypatch.setattr(slurmstate, "_write", full)
    said: list[str] = []
    assert slurm.run_slurm(c, OPTS, say=said.append) == 2
    assert said[0].startswith("jobs 100 were submitted but not recorded (writing ") and "No space left" in said[0]
    assert said[1] == "2 runs wait, not submitted (jobs.json not written): run again, or add --follow"
    monkeypatch.setattr(slurmstate, "_write", real)
    said.clear()
    assert slurm.run_slurm(c, OPTS, say=said.append) == 0 and said[0].startswith("adopted 2 runs' jobs")
    assert slurmstate.recorded_jobs(c) == {"r0": ["100_0"], "r1": ["100_1"]} and sbatch_calls(fake) == 1


def test_a_job_of_another_campaign_is_not_adopted(fake, tmp_path):
    c = slurmkit.campaign(str(tmp_path / "root"), 1)
    other = slurmkit.campaign(str(tmp_path / "other"), 1)
    slurmstate.note_intent(other, "feedbeef0000", ["r0"])
    put(fake, "queue", f"7|PENDING|doublewin:{slurmstate.campaign_id(other)}:feedbeef0000\n")
    slurmstate.note_intent(c, "feedbeef0000", ["r0"])  # the same token, another campaign's id
    assert observe.observe(c).adopted == {} and slurmstate.recorded_jobs(c) == {}
    assert observe.observe(other).adopted == {"r0": "7"}


def test_scontrol_that_does_not_answer_does_not_end_follow(fake, tmp_path):
    c = slurmkit.campaign(str(tmp_path / "root"), 2)
    put(fake, "scontrol-busy", "2")
    t, said, result = follow(c)
    slurmkit.wait_until("the runs to be submitted", lambda: len(slurmstate.recorded_jobs(c)) == 2, 30)
    finish_all(c)
    put(fake, "queue", "")
    t.join(30)
    assert result == [0], said
    busy = [s for s in said if s.startswith("sbatch: the SLURM controller did not answer (scontrol failed")]
    assert len(busy) == 2 and sbatch_calls(fake) == 1, said


def test_busy_and_limit_texts_are_told_apart():
    assert scheduler.is_busy("sbatch: error: Batch job submission failed: Socket timed out on send/recv operation")
    assert scheduler.is_busy("Unable to contact slurm controller (connect failure)")
    assert not scheduler.is_busy("Batch job submission failed: Invalid partition name specified")
    assert not scheduler.is_limit("Socket timed out on send/recv operation")


def test_squeue_comments_and_host_lists_are_read_whole():
    text = "12_[0-2%2]|PENDING|doublewin:ab:cd\n13|RUNNING|(null)\n14|COMPLETED|doublewin:ab:ef\n"
    assert scheduler.parse_queue(text) == {"12_0": "doublewin:ab:cd", "12_1": "doublewin:ab:cd",
                                           "12_2": "doublewin:ab:cd", "13": ""}
    assert scheduler.expand_hostlist("gpu[07-08],rack[1-2]-node[01,03],cpu1") == [
        "gpu07", "gpu08", "rack1-node01", "rack1-node03", "rack2-node01", "rack2-node03", "cpu1"]


# ---------------------------------------------------------------------------- signals during a submission
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_sbatch_comes_after_the_jobs_are_recorded(fake, tmp_path, sig):
    c = slurmkit.campaign(str(tmp_path / "root"), 2)
    put(fake, "signal", sig.name[3:])
    seen: list[dict] = []
    old = signal.signal(sig, lambda s, frame: seen.append(slurmstate.recorded_jobs(c)))
    try:
        new = slurm.submit(c, c.runs, OPTS, say=lambda s: None)
    finally:
        signal.signal(sig, old)
    assert new == {"r0": "100_0", "r1": "100_1"}
    assert seen == [{"r0": ["100_0"], "r1": ["100_1"]}]  # the handler ran once, after the record was written


def test_ctrl_c_during_sbatch_interrupts_after_the_jobs_are_recorded(fake, tmp_path):
    c = slurmkit.campaign(str(tmp_path / "root"), 2)
    put(fake, "signal", "INT")
    with pytest.raises(KeyboardInterrupt):
        slurm.submit(c, c.runs, OPTS, say=lambda s: None)
    assert slurmstate.recorded_jobs(c) == {"r0": ["100_0"], "r1": ["100_1"]} and slurmstate.intents(c) == {}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ---------------------------------------------------------------------------- jobs.json read strictly
def _pending(fake, c) -> None:
    slurmstate.record_jobs(c, {r.id: f"5_{i}" for i, r in enumerate(c.runs)})
    put(fake, "queue", "5_[0-2]|PENDING|\n")


def test_an_unreadable_job_record_submits_nothing_and_follow_asks_again(fake, tmp_path):
    c = slurmkit.campaign(str(tmp_path / "root"), 3)
    _pending(fake, c)
    good = open(slurmstate.jobs_file(c)).read()
    os.unlink(slurmstate.jobs_file(c))
    os.mkdir(slurmstate.jobs_file(c))  # any read error but "absent" (here EISDIR)
    with pytest.raises(scheduler.SchedulerError) as e:
        slurm.run_slurm(c, OPTS, say=lambda s: None)
    assert str(e.value) == (f"{slurmstate.jobs_file(c)} cannot be read (Is a directory): the campaign's jobs are "
                            "unknown: nothing submitted")
    view = observe.observe(c, strict=False, persist=False)  # plan/status: said, the runs as their files say
    assert view.note.startswith(f"{slurmstate.jobs_file(c)} cannot be read")
    t, said, result = follow(c)
    slurmkit.wait_until("two polls", lambda: sum("asking again in 0.2 s" in s for s in said) >= 2, 30)
    os.rmdir(slurmstate.jobs_file(c))
    put(os.path.dirname(slurmstate.jobs_file(c)), "jobs.json", good)
    n = len(said)
    time.sleep(1.2)  # some polls: the record read again, the runs queued, nothing said or submitted
    assert t.is_alive() and not any("asking again" in s for s in said[n + 1:]), said
    finish_all(c)
    put(fake, "queue", "")
    t.join(30)
    assert result == [0] and sbatch_calls(fake) == 0, said


def test_a_read_error_while_recording_keeps_the_whole_record(tmp_path, monkeypatch):
    c = slurmkit.campaign(str(tmp_path), 1)
    slurmstate.record_jobs(c, {f"run{i}": str(1000 + i) for i in range(1000)})
    before = open(slurmstate.jobs_file(c)).read()
    real = builtins.open

    def eio(path, *args, **kwargs):
        if str(path).endswith("jobs.json") and (not args or "r" in args[0]):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(path, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", eio)
    with pytest.raises(scheduler.SchedulerError, match="^jobs 777 were submitted but not recorded .*Input/output"):
        slurmstate.record_jobs(c, {"imp:x": "777"})
    monkeypatch.setattr(builtins, "open", real)
    assert open(slurmstate.jobs_file(c)).read() == before and len(slurmstate.recorded_jobs(c)) == 1000


def test_an_eio_on_the_job_record_with_jobs_pending_submits_nothing(fake, tmp_path):
    """The real interpreter under an LD_PRELOAD shim whose open() of jobs.json fails with EIO (a soft NFS mount)."""
    c = slurmkit.campaign(str(tmp_path / "root"), 3)
    _pending(fake, c)
    lib = shimkit.build("pathfails", shimkit.PATH_FAILS)
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})\n"
            "import slurmkit; from campaign import slurm; from infra import errors\n"
            f"c = slurmkit.campaign({c.root!r}, 3)\n"
            "errors.run_cli(lambda argv: slurm.run_slurm(c, slurm.SlurmOptions(gpus_per_run=0, time_min=5)))")
    env = shimkit.env_with(lib, dict(os.environ, SHIM_PATH="jobs.json", SHIM_ERRNO=str(errno.EIO)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 3 and done.stderr == (f"error: {slurmstate.jobs_file(c)} cannot be read (Input/output "
                                                    "error): the campaign's jobs are unknown: nothing submitted\n")
    assert sbatch_calls(fake) == 0


# ---------------------------------------------------------------------------- storage is not a node
WRITE = ("import sys; sys.path.insert(0, {root!r}); from infra import checkpoint, errors\n"
         "errors.run_cli(lambda argv: checkpoint.atomic_write_json({path!r}, {{'epoch': 1}}))")


@pytest.mark.slow
@pytest.mark.parametrize("code, excluded", [(errno.EDQUOT, []), (errno.ESTALE, ["n1", "n2"])])
def test_a_full_quota_fails_runs_and_excludes_no_host(fake, tmp_path, monkeypatch, code, excluded):
    """Four runs on two nodes meet a shim's write error in their job (the real Task and launch.json): EDQUOT is
    storage (exit 4: no host blamed, --follow stops submitting and says so once), ESTALE the node's (exit 3)."""
    lib = shimkit.build("writefails", shimkit.WRITE_FAILS)

    def command(d):
        return ("env", f"LD_PRELOAD={lib}", f"SHIM_PATH={d}/.out.json.", f"SHIM_ERRNO={code}", sys.executable, "-c",
                WRITE.format(root=ROOT, path=os.path.join(d, "out.json")))
    c = slurmkit.campaign(str(tmp_path / "root"), 6, command)
    for i, run in enumerate(c.runs[:4]):
        monkeypatch.setenv("SLURMD_NODENAME", f"n{i % 2 + 1}")
        with pytest.raises(slurm.RunFailed, match=f"exit {4 if code == errno.EDQUOT else 3}: error: writing "):
            slurm.Task(run, None)()
    slurmstate.record_jobs(c, {r.id: f"9_{i}" for i, r in enumerate(c.runs[:4])})
    put(fake, "sacct.out", "".join(f"9_{i}|FAILED|n{i % 2 + 1}\n" for i in range(4)))
    view = observe.observe(c)
    assert view.excluded == excluded and slurmstate.excluded_hosts(c) == excluded
    said: list[str] = []
    memory = decide.Memory(tries={r.id: 1 for r in c.runs[:4]})
    plan = decide.decide(view, memory, 2, None, time.time(), said.append)
    if code == errno.EDQUOT:
        assert view.storage == {"r0", "r1", "r2", "r3"} and not view.node_fault
        assert {reason for _, reason in view.failed_on.values()} == {"exit 4 (storage)"}
        assert plan.todo == [] and said == ["r0, r1, r2 ...: the disk is full or the quota used up (exit 4, no node "
                                            "blamed): no more runs are submitted; free space, then `sweep.py run` "
                                            "again"]
        decide.decide(observe.observe(c), memory, 2, None, time.time(), said.append)
        assert len(said) == 1  # said once
    else:
        assert view.node_fault == {"r0", "r1", "r2", "r3"} and [r.id for r in plan.todo] == [r.id for r in c.runs], plan


def test_an_input_missing_on_its_node_and_here_is_the_specs_error(fake, tmp_path, monkeypatch):
    missing = str(tmp_path / "nowhere" / "data")
    c = slurmkit.campaign(str(tmp_path / "root"), 2, inputs=(missing,))
    for i, run in enumerate(c.runs):
        monkeypatch.setenv("SLURMD_NODENAME", f"n{i + 1}")
        with pytest.raises(slurm.RunFailed, match=f"{missing} not found on n{i + 1}"):
            slurm.Task(run, None)()
    view = observe.observe(c)
    assert view.unseen == {"r0": missing, "r1": missing} and view.excluded == [] and not view.node_fault
    said: list[str] = []
    plan = decide.decide(view, decide.Memory(), 2, None, time.time(), said.append)
    assert plan.todo == [] and plan.gave_up == {"r0", "r1"}
    assert said[0] == f"r0: input {missing} is missing on its node and on this machine too: the spec's error, not " \
                      "the node's; not submitted again"


# ---------------------------------------------------------------------------- exclusions
def _node_failures(c, hosts: list[str], when: float) -> None:
    """launch.json of runs r0.. failed with exit 3 on `hosts` in turn at `when`."""
    for run, host in zip(c.runs, hosts):
        os.makedirs(run.save_dir, exist_ok=True)
        checkpoint.atomic_write_json(os.path.join(run.save_dir, state.LAUNCH),
                                     {"exit": 3, "error": "error: reading x failed (Stale file handle)", "node": host,
                                      "start": when - 1, "end": when})


def test_an_exclusion_of_every_node_of_a_partition_is_refused_and_forget_hosts_clears_it(fake, tmp_path):
    c = slurmkit.campaign(str(tmp_path / "root"), 5)
    put(fake, "sinfo.out", "gpu*|n[1-2]\nbig|n3\n")
    _node_failures(c, ["n1", "n2", "n1", "n2"], time.time())
    with pytest.raises(UserError) as e:
        slurm.run_slurm(c, OPTS, say=lambda s: None)
    assert str(e.value).startswith(f"every node of the default partition is excluded (n1, n2: each failed runs for "
                                   f"the node's sake, see {c.root}/.campaign/hosts.json): nothing submitted")
    assert str(e.value).endswith("then add --forget-hosts") and sbatch_calls(fake) == 0
    said: list[str] = []
    big = slurm.SlurmOptions(partition="big", gpus_per_run=0, time_min=5)
    assert slurm.run_slurm(c, big, say=said.append) == 0 and said == ["submitted 5 runs: jobs 100 (not on n1, n2)"]
    assert slurmstate.forget_hosts(c) == ["n1", "n2"]
    assert observe.observe(c).excluded == [] and slurmstate.excluded_hosts(c) == []  # old failures stay forgotten
    put(fake, "queue", "")
    _node_failures(c, ["n1", "n1"], time.time() + 1)  # new ones count again
    assert observe.observe(c).excluded == ["n1"]


def test_exclusions_expire_a_day_after_the_last_blame(tmp_path):
    c = slurmkit.campaign(str(tmp_path), 1)
    now = time.time()
    old = now - slurmstate.EXCLUDE_FOR_S - 10
    assert slurmstate.note_node_faults(c, {"a": ("n1", old), "b": ("n1", old)}) == []
    assert slurmstate.note_node_faults(c, {"c": ("n1", now - 5), "d": ("n1", now)}) == ["n1"]
    hosts = slurmkit.read_json(os.path.join(c.root, ".campaign", "hosts.json"))
    assert hosts["infrastructure_failures"]["n1"]["d"] == now and hosts["excluded"] == ["n1"] and hosts["until"]["n1"].startswith("20")
    assert slurmstate.excluded_hosts(c, now=now - 5 + slurmstate.EXCLUDE_FOR_S - 1) == ["n1"]
    assert slurmstate.excluded_hosts(c, now=now - 5 + slurmstate.EXCLUDE_FOR_S + 1) == []
    with open(os.path.join(c.root, ".campaign", "hosts.json"), "w") as f:  # a record from before blames had times
        json.dump({"infrastructure_failures": {"n2": ["a", "b"]}, "excluded": ["n2"]}, f)
    assert slurmstate.excluded_hosts(c) == []


def test_plan_and_status_write_no_record(fake, tmp_path):
    c = slurmkit.campaign(str(tmp_path / "root"), 4)
    _node_failures(c, ["n1", "n1"], time.time())
    slurmstate.record_jobs(c, {"r2": "8", "r3": "9"})
    put(fake, "sacct.out", "8|NODE_FAIL|n2\n9|NODE_FAIL|n2\n")
    view = observe.observe(c, strict=False, persist=False)
    assert view.excluded == ["n1", "n2"] and view.node_fault == {"r0", "r1", "r2", "r3"}
    assert sorted(os.listdir(os.path.join(c.root, ".campaign"))) == ["jobs.json"]


# ---------------------------------------------------------------------------- accounting
def test_sacct_is_asked_once_per_ended_job(fake, tmp_path):
    c = slurmkit.campaign(str(tmp_path / "root"), 2)
    slurmstate.record_jobs(c, {"r0": "7", "r1": "8"})
    put(fake, "sacct.out", "7|FAILED|n1\n8|TIMEOUT|n2\n")
    for _ in range(3):
        observe.observe(c)
    assert open(os.path.join(fake, "sacct-calls")).read().count("\n") == 1
    slurmstate.record_jobs(c, {"r0": "10"})  # a newer job of r0: asked about it once
    put(fake, "sacct.out", "10|FAILED|n1\n")
    observe.observe(c)
    observe.observe(c)
    calls = open(os.path.join(fake, "sacct-calls")).read().splitlines()
    assert len(calls) == 2 and "-j 10 " in calls[1]
    put(fake, "queue", "10|PENDING|\n")  # requeued under the same id: its next end is asked again
    observe.observe(c)
    put(fake, "queue", "")
    put(fake, "sacct.out", "10|OUT_OF_MEMORY|n2\n")
    assert {r.run.id: r.state for r in observe.observe(c).rows}["r0"] == "failed"
    assert len(open(os.path.join(fake, "sacct-calls")).read().splitlines()) == 3


def test_every_job_of_a_run_gets_its_settle_wait():
    run = slurmkit.campaign("/nonexistent", 1).runs[0]
    view = View([RunState(run, "pending")], settling={("r0", "8")})
    now = time.time()
    memory = decide.Memory(settling_since={("r0", "7"): now - 10 * decide.SETTLE_S})  # its first job settled long ago
    plan = decide.decide(view, memory, 2, None, now, lambda s: None)
    assert plan.settling == {"r0"} and plan.todo == []
    later = decide.decide(view, memory, 2, None, now + decide.SETTLE_S + 1, lambda s: None)
    assert later.settling == set() and [r.id for r in later.todo] == ["r0"]


# ---------------------------------------------------------------------------- writes
def test_a_rename_nfs_answers_enoent_on_retransmit_after_it_happened_is_a_success(tmp_path, monkeypatch):
    path = str(tmp_path / "results.json")
    real = os.replace

    def retransmitted(src, dst):
        real(src, dst)  # done on the server; the reply was lost, and the retransmit finds no source
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
    monkeypatch.setattr(os, "replace", retransmitted)
    checkpoint.atomic_write_json(path, {"v": 1})
    assert slurmkit.read_json(path) == {"v": 1}
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(FileNotFoundError(errno.ENOENT, "x")))
    with pytest.raises(UserError, match="could not write"):  # a rename that did not happen is still a failure
        checkpoint.atomic_write_json(path, {"v": 2})
    assert slurmkit.read_json(path) == {"v": 1}


# ---------------------------------------------------------------------------- the command line
def test_forget_hosts_clears_the_exclusions_and_the_runs_go_everywhere(fake, tmp_path):
    import campaignkit as kit
    from campaign import spec
    inputs = kit.make_inputs(str(tmp_path))
    path = kit.write_spec(str(tmp_path / "c.toml"), inputs, str(tmp_path / "runs"), seeds=(1,), modes=("std",))
    c = spec.load(path)
    now = time.time()
    slurmstate.note_node_faults(c, {"a": ("n1", now), "b": ("n1", now)})
    cmd = [sys.executable, os.path.join(ROOT, "sweep.py"), "run", path, "--slurm", "--gpus-per-run", "0"]
    env = dict(kit.ENV, PATH=os.environ["PATH"])
    done = subprocess.run([*cmd, "--forget-hosts"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "forgot the excluded hosts: n1" and lines[1].startswith("submitted 3 runs: jobs ")
    assert "not on" not in lines[1] and slurmstate.excluded_hosts(c) == []
    scripts = [open(os.path.join(d, f)).read() for d, _, fs in os.walk(os.path.join(c.root, ".campaign", "slurm"))
               for f in fs if f.endswith(".sh")]
    assert scripts and all("#SBATCH --comment=doublewin:" in s and "--exclude" not in s for s in scripts)


def test_sweep_run_killed_by_sigterm_during_sbatch_dies_after_recording(fake, tmp_path):
    """`sweep.py run` (holding the campaign's lease, whose handler dies of the signal) gets SIGTERM while sbatch
    runs: it dies of it, with the jobs recorded and the lease released."""
    import campaignkit as kit
    from campaign import spec
    inputs = kit.make_inputs(str(tmp_path))
    path = kit.write_spec(str(tmp_path / "c.toml"), inputs, str(tmp_path / "runs"), seeds=(1,), modes=("std",))
    c = spec.load(path)
    put(fake, "signal", "TERM")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), "run", path, "--slurm", "--gpus-per-run",
                           "0"], capture_output=True, text=True, env=dict(kit.ENV, PATH=os.environ["PATH"]),
                          timeout=120)
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert sorted(slurmstate.recorded_jobs(c).values()) == [["100_0"], ["100_1"], ["100_2"]]
    assert not os.path.exists(os.path.join(c.root, ".campaign", state.RUN_LEASE)) and slurmstate.intents(c) == {}


# ---------------------------------------------------------------------------- live (script/slurm_up.sh's cluster)
@pytest.mark.slow
def test_live_an_unreadable_job_record_with_jobs_pending_submits_nothing(slurm_cluster, tmp_path):
    c = slurmkit.campaign(str(tmp_path / "root"), 2)
    held = slurm.SlurmOptions(gpus_per_run=0, cpus_per_run=1, time_min=5, extra={"begin": "now+3600"})
    try:
        assert slurm.run_slurm(c, held, say=lambda s: None) == 0
        jobs = slurmstate.recorded_jobs(c)
        assert slurm.queued(c) == {"r0", "r1"}  # pending until --begin
        good = open(slurmstate.jobs_file(c)).read()
        os.unlink(slurmstate.jobs_file(c))
        os.mkdir(slurmstate.jobs_file(c))
        with pytest.raises(scheduler.SchedulerError, match=r"jobs\.json cannot be read .*: nothing submitted$"):
            slurm.run_slurm(c, held, say=lambda s: None)
        os.rmdir(slurmstate.jobs_file(c))
        put(os.path.dirname(slurmstate.jobs_file(c)), "jobs.json", good)
        assert slurmstate.recorded_jobs(c) == jobs and slurm.queued(c) == {"r0", "r1"}
        mine = subprocess.run(["squeue", "-h", "-r", "-u", scheduler.user(), "-o", "%k"], capture_output=True,
                              text=True).stdout.split()
        ours = f"{slurmstate.COMMENT}:{slurmstate.campaign_id(c)}:"
        assert sum(k.startswith(ours) for k in mine) == 2  # the two jobs of the first submission, no more
    finally:
        ids = {j.split("_")[0] for js in slurmstate.recorded_jobs(c).values() for j in js} \
            if os.path.isfile(slurmstate.jobs_file(c)) else set()
        if ids:
            subprocess.run(["scancel", *sorted(ids)], capture_output=True)


@pytest.mark.slow
def test_live_a_quota_full_shim_fails_runs_and_excludes_no_host(slurm_cluster, tmp_path):
    lib = shimkit.build("writefails", shimkit.WRITE_FAILS)

    def command(d):
        return ("env", f"LD_PRELOAD={lib}", f"SHIM_PATH={d}/.out.json.", f"SHIM_ERRNO={errno.EDQUOT}",
                sys.executable, "-c", WRITE.format(root=ROOT, path=os.path.join(d, "out.json")))
    c = slurmkit.campaign(str(tmp_path / "root"), 4, command)
    t, said, result = follow(c, poll=1)
    t.join(300)
    assert result == [4], said
    view = observe.observe(c)
    assert view.storage == {"r0", "r1", "r2", "r3"} and view.excluded == [] and not view.node_fault
    assert all(len(js) == 1 for js in slurmstate.recorded_jobs(c).values())  # none retried
    assert sum("the disk is full or the quota used up (exit 4, no node blamed)" in s for s in said) == 1, said
    assert slurmstate.excluded_hosts(c) == []
