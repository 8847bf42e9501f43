"""The local queue (campaign/local.py): a poll costs a bounded number of filesystem calls whatever the number of
runs, transfer runs start as their ticket appears, and Ctrl-C ends every process of every run's group."""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
import types

import pytest

import campaignkit as kit
from campaign import execute, local, spec, state

ROOT = kit.ROOT
# audit events of the calls that reach the filesystem (os.stat and os.path are counted by wrapping them)
EVENTS = {"open", "os.listdir", "os.scandir", "os.mkdir", "os.rename", "os.remove", "os.chmod", "os.truncate"}
_COUNTS: list[collections.Counter] = []  # the counter in use while a test counts; empty: the hook is idle


def _hook(event: str, args) -> None:
    if _COUNTS and event in EVENTS and threading.get_ident() == _MAIN:
        _COUNTS[-1][event] += 1


_MAIN = threading.get_ident()  # the queue polls in the test's thread; other threads' calls (xdist's) are not its


sys.addaudithook(_hook)  # a hook cannot be removed: it counts only while a test has pushed a counter


def _campaign(root: str, n: int) -> spec.Campaign:
    """An IMP stage (a long sleep) whose ticket folder stays empty, `n` transfer runs waiting for its tickets,
    and `n` transfer runs already done: the queue polls while n runs wait and n are finished."""
    tickets = os.path.join(root, "imp")
    runs = [spec.Run("imp:x/imp", "imp", tickets, ("sleep", "300"), makes=(os.path.join(tickets, "1-ticket.pth.tar"),))]
    for i in range(n):
        runs.append(spec.Run(f"x/w{i}", "transfer", os.path.join(root, f"w{i}"), ("true",),
                             needs=os.path.join(tickets, f"{1 + i % 2}-ticket.pth.tar")))
        done = os.path.join(root, f"d{i}")
        os.makedirs(done)
        with open(os.path.join(done, state.RESULTS), "w") as f:
            json.dump({"complete": True}, f)
        runs.append(spec.Run(f"x/d{i}", "transfer", done, ("true",)))
    return spec.Campaign(os.path.join(root, "c.toml"), root, tuple(runs))


def _calls_per_poll(tmp_path, monkeypatch, n: int, polls: int = 12) -> list[int]:
    """Filesystem calls between consecutive polls of run_local over a campaign of 2n + 1 runs; the queue is
    stopped by a Ctrl-C at the last poll, which must end the IMP stage's process."""
    c = _campaign(str(tmp_path / f"n{n}"), n)
    counter: collections.Counter = collections.Counter()
    per_poll: list[int] = []

    def counted(fn):
        def wrapper(*args, **kwargs):
            if _COUNTS and threading.get_ident() == _MAIN:
                _COUNTS[-1][fn.__name__] += 1
            return fn(*args, **kwargs)
        return wrapper
    for name in ("stat", "lstat"):
        monkeypatch.setattr(os, name, counted(getattr(os, name)))
    for name in ("isfile", "isdir", "exists"):
        monkeypatch.setattr(os.path, name, counted(getattr(os.path, name)))

    def sleep(seconds: float) -> None:  # the queue's pause between polls: where one poll ends
        per_poll.append(sum(counter.values()))
        if len(per_poll) == polls:
            raise KeyboardInterrupt
        time.sleep(0.01)
    monkeypatch.setattr(local, "time", types.SimpleNamespace(sleep=sleep, time=time.time))
    started: list[str] = []
    _COUNTS.append(counter)
    try:
        with pytest.raises(KeyboardInterrupt):
            local.run_local(c, jobs=1, poll=0.01, say=started.append)
    finally:
        _COUNTS.pop()
    assert started == ["start  imp:x/imp"]
    assert json.load(open(os.path.join(c.runs[0].save_dir, execute.LAUNCH)))["interrupted"] == signal.SIGTERM
    return [b - a for a, b in zip(per_poll, per_poll[1:])]


def test_a_poll_costs_the_same_few_calls_whatever_the_number_of_runs(tmp_path, monkeypatch):
    small = _calls_per_poll(tmp_path, monkeypatch, 20)
    large = _calls_per_poll(tmp_path, monkeypatch, 300)
    # one listdir of the ticket folder (at most one more, at a poll that timing decides), and no stat of each of
    # the 601 or 41 runs
    assert max(large) <= 2 and max(small) <= 2 and len(large) == len(small)


def test_a_waiting_run_starts_when_its_ticket_appears(tmp_path):
    tickets = str(tmp_path / "imp")
    make = f"sleep 0.3; mkdir -p {tickets}; touch {tickets}/1-ticket.pth.tar {tickets}/2-ticket.pth.tar"
    imp = spec.Run("imp:x/imp", "imp", tickets, ("bash", "-c", make),
                   makes=(f"{tickets}/1-ticket.pth.tar", f"{tickets}/2-ticket.pth.tar"))
    waiting = [spec.Run(f"x/w{k}", "transfer", str(tmp_path / f"w{k}"), ("true",),
                        needs=f"{tickets}/{k}-ticket.pth.tar") for k in (1, 2)]
    said: list[str] = []
    exits = local.run_local(spec.Campaign("c", str(tmp_path), (waiting[0], imp, waiting[1])), jobs=2, poll=0.05,
                            say=said.append)
    assert exits == {"imp:x/imp": 0, "x/w1": 0, "x/w2": 0}
    assert said[0] == "start  imp:x/imp" and said[-1].endswith("[3/3]")


def _group_members(pgid: int) -> list[int]:
    """Processes of group `pgid` that are alive (zombies the init process has not reaped yet are not)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(pid))
    return out


@pytest.mark.slow
def test_ctrl_c_ends_every_process_of_each_runs_group_and_waits(tmp_path):
    """`sweep.py run --local` gets SIGINT while a run's driver has started two more processes in its group, one of
    which ignores SIGTERM: afterwards no process of that group is alive, and the run is interrupted, not failed."""
    pids = tmp_path / "pids"
    fake = tmp_path / "python"  # the drivers' interpreter: records its group and starts two processes in it
    fake.write_text(f"#!/bin/bash\n[ \"$1\" = -u ] || exit 0  # script/env.sh's checks of it pass\necho $$ >> {pids}\nsleep 300 &\necho $! >> {pids}\n"
                    f"bash -c 'trap \"\" TERM; while true; do sleep 1; done' &\necho $! >> {pids}\nsleep 300\n")
    fake.chmod(0o755)
    os.makedirs(tmp_path / "in")
    inputs = kit.make_inputs(str(tmp_path / "in"))
    path = kit.write_spec(str(tmp_path / "c.toml"), inputs, str(tmp_path / "runs"), seeds=(1,), modes=("std",),
                          tickets="")  # one run: the dense model
    # sweep.py's __main__ (run_cli(main)) with a 1 s grace before SIGKILL, not 10: the SIGTERM-ignoring process
    # must still be killed, and the queue must still wait for it
    code = (f"import functools, sys; sys.path.insert(0, {ROOT!r}); import sweep; from campaign import execute, local; "
            f"from infra import errors; local.terminate_all = functools.partial(execute.terminate_all, grace=1.0); "
            f"errors.run_cli(sweep.main, {['run', path, '--local', '--jobs', '1']!r})")
    sweep = subprocess.Popen([sys.executable, "-c", code], env={**kit.ENV, "DOUBLEWIN_PY": str(fake)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (pids.exists() and len(pids.read_text().split()) == 3):
        assert time.time() < deadline and sweep.poll() is None, sweep.communicate()
        time.sleep(0.05)
    leader, *children = map(int, pids.read_text().split())
    assert sorted(_group_members(leader)) >= sorted([leader, *children])
    sweep.send_signal(signal.SIGINT)
    out, err = sweep.communicate(timeout=60)
    assert sweep.returncode == 130, out + err
    assert _group_members(leader) == []  # when sweep.py has exited, the whole group is gone
    run = next(r for r in spec.load(path).runs)
    assert state.state_of(run).state == "pending"  # interrupted: launched again by the next `run`


def test_a_run_killed_by_sigkill_shows_as_failed_with_its_reason_and_its_stale_lease(tmp_path):
    """The run takes its SAVE_DIR's lease, then dies of SIGKILL (as of the OOM killer): the lease is left behind,
    and `status` still shows the run failed, with the recorded death, the stale lease named beside it."""
    os.makedirs(tmp_path / "in")
    inputs = kit.make_inputs(str(tmp_path / "in"))
    path = kit.write_spec(str(tmp_path / "c.toml"), inputs, str(tmp_path / "runs"), seeds=(1,), modes=("std",),
                          tickets="")
    run = spec.load(path).runs[0]
    code = (f"import os, signal, sys; sys.path.insert(0, {ROOT!r}); from training import savedir; "
            f"savedir.hold_save_dir({run.save_dir!r}); os.kill(os.getpid(), signal.SIGKILL)")
    fake = tmp_path / "python"  # the driver's interpreter: takes the lease, then is killed
    fake.write_text(f'#!/bin/bash\n[ "$1" = -u ] || exec {sys.executable} "$@"\nexec {sys.executable} -c "{code}"\n')
    fake.chmod(0o755)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), "run", path, "--local"],
                          env={**kit.ENV, "DOUBLEWIN_PY": str(fake)}, capture_output=True, text=True, timeout=120)
    assert os.path.exists(os.path.join(run.save_dir, state.LEASE)), done.stdout + done.stderr  # left behind
    row = state.state_of(run)
    assert row.state == "failed" and row.exit == 137, row
    assert row.detail.startswith("killed by SIGKILL (out of memory? ")
    assert row.detail.endswith(f"(stale lease: {state.lease_of(run.save_dir).who()}, its process (pid "
                               f"{state.lease_of(run.save_dir).holder.pid}) is gone: the next launch takes it over)")
    shown = kit.sweep("status", path, check=True).stdout
    assert f"  failed {run.id}: killed by SIGKILL (out of memory? " in shown and "failed 1" in shown, shown
