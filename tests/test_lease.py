"""The lease that keeps a second trainer out of a SAVE_DIR (infra/lease.py), with real processes, real files and
real signals: exclusion whatever flock does (an LD_PRELOAD flock that excludes nothing, one that fails with
ENOLCK), one winner among many takers of a stale lease, a frozen holder on another host (a UTS namespace with its
own host name) taken over and silent when it wakes, a killed holder here taken over at once, release on SIGTERM,
and one `sweep.py run` per campaign. The runs under a flock shim, the killed holder and `sweep.py plan`/`status` are
children of a fork server (tests/forkserver.py); the frozen holder and what `sweep.py run` starts are fresh
processes."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import campaignkit as kit
import forkserver
import shimkit
from campaign import spec, state
from infra import lease, leaseholder
from infra.errors import UserError

ENV = {k: v for k, v in kit.ENV.items() if k not in (leaseholder.HELD_ENV, lease.STALE_ENV, lease.BEAT_ENV)}
EPOCHS = 8  # enough for a holder to be frozen mid-run (a tiny epoch takes a fraction of a second)

# a process that takes the lease PATH (argv[1]), says so, and keeps it for argv[2] seconds
HOLD = f"""import sys, time; sys.path.insert(0, {kit.ROOT!r}); from infra import leaseholder
l = leaseholder.acquire(sys.argv[1]); print('held', l.holder.token, flush=True); time.sleep(float(sys.argv[2]))"""
# a racer: waits for the file argv[2], then tries to take the lease argv[1] (and keeps it 3 s if it wins)
RACE = f"""import os, sys, time; sys.path.insert(0, {kit.ROOT!r}); from infra import lease, leaseholder
while not os.path.exists(sys.argv[2]): time.sleep(0.002)
try:
    l = leaseholder.acquire(sys.argv[1]); print('won', os.getpid(), flush=True); time.sleep(3)
except lease.LeaseHeld as e:
    print('refused', e, flush=True)"""


# a holder of SAVE_DIR argv[1] with a rank started as --multiprocessing-distributed starts its ranks (spawn): the
# rank writes under the holder's lease, then again once the file argv[2] exists
SPAWN = f"""import multiprocessing, os, sys, time
sys.path.insert(0, {kit.ROOT!r})
from infra import checkpoint
from infra.errors import UserError
from training import savedir


def rank(save_dir, go):
    try:  # as a spawned rank reports an error: one line
        checkpoint.atomic_write_json(os.path.join(save_dir, "rank.json"), {{"write": 1}})
        print("rank", os.getpid(), flush=True)
        while not os.path.exists(go):
            time.sleep(0.01)
        checkpoint.atomic_write_json(os.path.join(save_dir, "rank.json"), {{"write": 2}})
    except UserError as e:
        print(f"error: {{e}}", file=sys.stderr, flush=True)
        sys.exit(e.exit_status)


if __name__ == "__main__":
    savedir.hold_save_dir(sys.argv[1])
    p = multiprocessing.get_context("spawn").Process(target=rank, args=sys.argv[1:])
    p.start()
    p.join()
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return kit.make_inputs(str(tmp_path_factory.mktemp("lease")))


def one_run(d, inputs) -> spec.Campaign:
    """A campaign of one transfer run (dense, std, seed 1) of EPOCHS epochs under d/runs."""
    path = kit.write_spec(str(d / "c.toml"), inputs, str(d / "runs"), seeds=(1,), modes=("std",), tickets="",
                          extra=f'std_overrides = ["--epochs", "{EPOCHS}"]')
    return spec.load(path)


@pytest.fixture(scope="module")
def contested(inputs, tmp_path_factory) -> dict:
    """One `sweep.py run` of the one-run campaign, which a second `sweep.py run` of it tried to join while it ran
    (test_one_sweep_run_per_campaign checks both); the run itself is the other tests' uninterrupted reference."""
    c = one_run(tmp_path_factory.mktemp("reference"), inputs)
    cmd = [sys.executable, os.path.join(kit.ROOT, "sweep.py"), "run", c.path, "--local"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=kit.ROOT)
    try:
        wait_for(os.path.join(c.root, ".campaign", state.RUN_LEASE), first)
        second = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=kit.ROOT, timeout=120)
    finally:
        out, err = first.communicate(timeout=300)
    return {"campaign": c, "first": first, "output": out + err, "second": second}


@pytest.fixture(scope="module")
def reference(contested):
    """results.json of the one run, uninterrupted."""
    assert contested["first"].returncode == 0, contested["output"][-3000:]
    return kit.results(contested["campaign"].root)


@pytest.fixture(scope="module")
def forked():
    """A fork server whose children have the flock shim (each child's SHIM_FLOCK says which flock it gets) and
    import the entry points once."""
    server = forkserver.Forkserver(shimkit.env_with(shimkit.build("flock", shimkit.FLOCK), ENV),
                                   preload=("sweep", "main_train_downstream"))
    yield server
    server.close()


def with_flock(server: forkserver.Forkserver, how: str) -> dict:
    """The server's environment with flock `how` ("noop", "enolck"; see shimkit.FLOCK)."""
    return dict(server.env, SHIM_FLOCK=how)


def sweeping(server: forkserver.Forkserver, *args: str) -> str:
    """`sweep.py ARGS` as the server's child (the real flock); its stdout (exit 0 asserted)."""
    done = server.run("sweep.py", list(args), timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def python_argv(run: spec.Run) -> list[str]:
    """What the run's bash driver (std.sh) passes to main_train_downstream.py: the driver's exec line."""
    _, driver, dataset, init, save, ticket, *rest = run.command
    assert driver.endswith(os.path.join("train_downstream", "std.sh")), run.command
    return ["--recipe", "std", "--dataset", dataset, "--init", init, "--save_dir", save, "--tickets_file", ticket,
            *rest]


def holding(path: str, seconds: float = 60, env: dict | None = None, uts: str | None = None) -> subprocess.Popen:
    """A process holding the lease `path` (in a UTS namespace with host name `uts` if given)."""
    cmd = [sys.executable, "-c", HOLD, path, str(seconds)]
    if uts:
        cmd = ["unshare", "--uts", "sh", "-c", f'hostname {uts} && exec "$@"', "sh", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or ENV)
    line = proc.stdout.readline()
    assert line.startswith("held "), line + proc.stderr.read()
    return proc


def trainer(run: spec.Run, env: dict, uts: str | None = None) -> subprocess.Popen:
    """The run's own command (the bash driver), as the campaign starts it."""
    cmd = list(run.command)
    if uts:
        cmd = ["unshare", "--uts", "sh", "-c", f'hostname {uts} && exec "$@"', "sh", *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=kit.ROOT)


def wait_for(path: str, proc, timeout: float = 120) -> None:
    """Until `path` exists; fails when the process `proc` (a Popen or a fork server's child) exits first."""
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            err = proc.read_err() if isinstance(proc, forkserver.Child) else proc.stderr.read()
            raise AssertionError(f"exited {proc.returncode} before {path} appeared: {err}")
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.01)


def files(folder: str) -> dict[str, tuple[bytes, int]]:
    """Every file of a folder: its bytes and mtime."""
    out = {}
    for name in sorted(os.listdir(folder)):
        p = os.path.join(folder, name)
        with open(p, "rb") as f:
            out[name] = (f.read(), os.stat(p).st_mtime_ns)
    return out


# ---------------------------------------------------------------------------- the lease itself
def test_a_live_lease_refuses_others_names_its_holder_and_goes_at_a_normal_exit(tmp_path):
    path = str(tmp_path / ".lease")
    proc = holding(path, 2)
    try:
        seen = lease.look(path)
        assert not seen.stale and seen.holder.pid == proc.pid and seen.age_s < 5
        assert state.lock_holder(str(tmp_path)).startswith(f"pid {proc.pid} on ")
        with pytest.raises(lease.LeaseHeld, match=f"held by pid {proc.pid} on "):
            leaseholder.acquire(path)
    finally:
        proc.communicate(timeout=30)
    assert proc.returncode == 0 and not os.path.exists(path)
    assert state.lock_holder(str(tmp_path)) is None and os.listdir(tmp_path) == []


def test_sigterm_releases_the_lease_and_the_process_still_dies_of_it(tmp_path):
    """A requeue (SLURM's SIGTERM) leaves no lease behind: the job may restart on another node at once."""
    path = str(tmp_path / ".lease")
    proc = holding(path)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM and not os.path.exists(path)


def test_a_killed_holder_here_is_stale_at_once_and_plan_says_so(tmp_path, inputs):
    c = one_run(tmp_path, inputs)
    run = c.runs[0]
    os.makedirs(run.save_dir)
    proc = holding(os.path.join(run.save_dir, state.LEASE))
    assert state.state_of(run).state == "running"
    proc.kill()
    proc.wait()
    row = state.state_of(run)
    assert row.state == "stale" and state.lock_holder(run.save_dir) is None
    assert row.detail.startswith(f"stale lease: pid {proc.pid} on ")
    assert row.detail.endswith(f"its process (pid {proc.pid}) is gone: the next launch takes it over")
    assert [r.id for r in state.launchable([row])] == [run.id]


def test_a_copied_run_folder_does_not_carry_its_live_lease_along(tmp_path):
    first, copy = tmp_path / "run", tmp_path / "copy"
    first.mkdir()
    proc = holding(str(first / ".lease"))
    try:
        shutil.copytree(first, copy)
        seen = lease.look(str(copy / ".lease"))
        assert seen.stale and seen.why == "it was copied here from another folder"
        held = leaseholder.acquire(str(copy / ".lease"))
        held.release()
        assert not lease.look(str(first / ".lease")).stale
    finally:
        proc.kill()
        proc.wait()


def test_bounds_come_from_the_environment_and_a_bad_one_is_one_line(monkeypatch):
    monkeypatch.setenv(lease.STALE_ENV, "4")
    monkeypatch.setenv(lease.BEAT_ENV, "0.5")
    assert lease.bounds() == (0.5, 4.0)
    monkeypatch.setenv(lease.STALE_ENV, "ten minutes")
    with pytest.raises(UserError, match="DOUBLEWIN_LEASE_STALE_S='ten minutes': expected a number of seconds"):
        lease.bounds()
    monkeypatch.setenv(lease.STALE_ENV, "0.8")
    with pytest.raises(UserError, match="must be at least twice DOUBLEWIN_LEASE_BEAT_S=0.5"):
        lease.bounds()


def test_a_takeover_file_of_a_dead_taker_is_passed_a_fresh_one_waited_for(tmp_path):
    path = str(tmp_path / ".lease")
    proc = holding(path)
    proc.kill()
    proc.wait()
    seen = lease.look(path)
    assert seen.stale
    take = f"{path}.take-{seen.ident}.0"
    with open(take, "w") as f:
        f.write("a taker busy right now")
    with pytest.raises(lease.LeaseHeld, match="taking it over right now"):
        leaseholder.acquire(path)
    old = time.time() - lease.TAKE_S - 5
    os.utime(take, (old, old))  # that taker died half-way, long ago
    held = leaseholder.acquire(path)
    try:
        assert lease.look(path).holder.token == held.holder.token
        # takeover files gone with the stale lease, and its holder's temp folder (the fence)
        assert sorted(os.listdir(tmp_path)) == [".lease", lease.TEMP + held.holder.token]
    finally:
        held.release()
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("how", ["killed here", "frozen elsewhere"])
def test_of_many_takers_of_a_stale_lease_exactly_one_wins(tmp_path, how):
    path, go = str(tmp_path / ".lease"), str(tmp_path / "go")
    env = dict(ENV, **{lease.STALE_ENV: "1", lease.BEAT_ENV: "0.2"})
    old = holding(path, env=env, uts="othernode" if how == "frozen elsewhere" else None)
    os.kill(old.pid, signal.SIGKILL if how == "killed here" else signal.SIGSTOP)
    try:
        while not lease.look(path).stale:
            time.sleep(0.1)
        racers = [subprocess.Popen([sys.executable, "-c", RACE, path, go], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(8)]
        time.sleep(1.5)  # every racer up and spinning on the go file
        open(go, "w").close()
        outs = [r.communicate(timeout=60) for r in racers]
    finally:
        os.kill(old.pid, signal.SIGKILL)
        old.wait()
    lines = [out.strip() for out, _ in outs]
    won = [ln for ln in lines if ln.startswith("won ")]
    assert len(won) == 1, "\n".join(lines + [err for _, err in outs])
    winner = won[0].split()[1]
    assert all(ln.startswith(f"refused {path} is held by pid {winner} on ") for ln in lines if ln not in won), lines
    assert sorted(os.listdir(tmp_path)) == ["go"]  # the winner released it at its exit, no takeover file left


@pytest.mark.slow
def test_spawned_ranks_write_under_the_parents_lease_and_stop_once_it_is_taken_over(tmp_path):
    save, go, script = str(tmp_path / "run"), str(tmp_path / "go"), str(tmp_path / "spawn.py")
    os.makedirs(save)
    with open(script, "w") as f:
        f.write(SPAWN)
    env = dict(ENV, **{lease.STALE_ENV: "2", lease.BEAT_ENV: "0.5"})
    parent = subprocess.Popen([sys.executable, script, save, go], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)
    line = parent.stdout.readline()
    assert line.startswith("rank "), line + parent.stderr.read()
    rank = int(line.split()[1])
    os.kill(parent.pid, signal.SIGSTOP)  # the holder freezes; its rank goes on
    path = os.path.join(save, state.LEASE)
    while not lease.look(path).stale:
        time.sleep(0.1)
    taken = leaseholder.acquire(path)
    try:
        open(go, "w").close()
        deadline = time.time() + 60
        while lease._pid_start(rank) and time.time() < deadline:  # gone, or a zombie of the frozen parent
            time.sleep(0.05)
        os.kill(parent.pid, signal.SIGCONT)
        _, err = parent.communicate(timeout=60)
        assert json.load(open(os.path.join(save, "rank.json"))) == {"write": 1}, err
        assert [ln for ln in os.listdir(save) if ln.endswith(".tmp")] == []
        lines = err.splitlines()
        assert len(lines) == 2 and all(ln.startswith(f"error: {save} was taken over by pid {os.getpid()} on ")
                                       for ln in lines), err  # the rank, then the holder's own heartbeat
        assert parent.returncode == leaseholder.LOST_EXIT
    finally:
        taken.release()


# ---------------------------------------------------------------------------- trainers
@pytest.mark.slow
def test_with_flock_that_excludes_nothing_a_second_trainer_is_still_refused(tmp_path, inputs, reference, forked):
    """Two "nodes" that do not see each other's flock (the no-op shim in both): the lease keeps the second out."""
    c = one_run(tmp_path, inputs)
    run = c.runs[0]
    env = with_flock(forked, "noop")
    first = forked.start("main_train_downstream.py", python_argv(run), env=env)
    wait_for(os.path.join(run.save_dir, state.LEASE), first)
    os.kill(first.pid, signal.SIGSTOP)  # held still (for far less than its bound) while the second tries
    try:
        second = forked.run("main_train_downstream.py", python_argv(run), env=env, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    err = second.stderr
    assert second.returncode == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {run.save_dir} is in use by pid {first.pid} on "), err
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out[-2000:] + err[-2000:]
    assert kit.results(c.root) == reference


@pytest.mark.slow
def test_where_flock_fails_a_run_trains_and_plan_and_status_print(tmp_path, inputs, reference, forked):
    """NFSv3 without lockd: flock answers ENOLCK to everyone (the shim); nothing needs it."""
    c = one_run(tmp_path, inputs)
    env = with_flock(forked, "enolck")
    for command in ("plan", "status"):
        done = forked.run("sweep.py", [command, c.path], env=env, timeout=120)
        assert done.returncode == 0 and "pending 1" in done.stdout, done.stdout + done.stderr
    solo = forked.run("main_train_downstream.py", python_argv(c.runs[0]), env=env)
    assert solo.returncode == 0, solo.stdout[-2000:] + solo.stderr[-2000:]
    assert kit.results(c.root) == reference
    done = forked.run("sweep.py", ["status", c.path], env=env, timeout=120)
    assert done.returncode == 0 and "1/1 done (100%)" in done.stdout, done.stdout + done.stderr


@pytest.mark.slow
def test_a_frozen_holder_elsewhere_is_taken_over_and_writes_nothing_when_it_wakes(tmp_path, inputs, reference,
                                                                                   forked):
    c = one_run(tmp_path, inputs)
    run = c.runs[0]
    env = dict(ENV, **{lease.STALE_ENV: "4", lease.BEAT_ENV: "0.5"})
    frozen = trainer(run, env, uts="othernode")
    try:
        wait_for(os.path.join(run.save_dir, "checkpoint.pth.tar"), frozen)
        os.kill(frozen.pid, signal.SIGSTOP)
        time.sleep(5)
        plan = sweeping(forked, "plan", c.path)
        line = next(ln for ln in plan.splitlines() if ln.startswith(run.id + " "))
        assert line.split()[1:6] == ["stale", "stale", "lease:", "pid", str(frozen.pid)], line
        assert " on othernode (since " in line and ", no heartbeat for " in line, line
        assert line.endswith(": the next launch takes it over"), line
        assert "stale 1" in sweeping(forked, "status", c.path)
        kit.sweep("run", c.path, "--local", check=True)
        assert kit.results(c.root) == reference  # resumed from the frozen run's checkpoint, exactly
        before = files(run.save_dir)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    out, err = frozen.communicate(timeout=120)
    assert frozen.returncode == leaseholder.LOST_EXIT and err.count("\n") == 1, err
    assert err.startswith(f"error: {run.save_dir} was taken over by ") and "without writing anything more" in err
    assert files(run.save_dir) == before


@pytest.mark.slow
def test_a_killed_holder_here_is_taken_over_at_once(tmp_path, inputs, reference, forked):
    c = one_run(tmp_path, inputs)
    run = c.runs[0]
    killed = forked.start("main_train_downstream.py", python_argv(run))  # the default bound (10 min): no waiting
    wait_for(os.path.join(run.save_dir, "checkpoint.pth.tar"), killed)
    killed.kill()
    killed.communicate()
    assert state.state_of(run).state == "stale"
    start = time.time()
    kit.sweep("run", c.path, "--local", check=True)
    assert time.time() - start < lease.STALE_S / 4
    assert kit.results(c.root) == reference
    assert not os.path.exists(os.path.join(run.save_dir, state.LEASE))


@pytest.mark.slow
def test_one_sweep_run_per_campaign(contested):
    c, first, second = contested["campaign"], contested["first"], contested["second"]
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert second.stderr.startswith(f"error: another `sweep.py run` is launching the runs of {c.path} "), second.stderr
    assert f": pid {first.pid} on " in second.stderr
    assert first.returncode == 0, contested["output"][-3000:]
    assert json.load(open(os.path.join(c.runs[0].save_dir, "results.json")))["complete"] is True
    assert not os.path.exists(os.path.join(c.root, ".campaign", state.RUN_LEASE))
    assert kit.sweep("run", c.path, "--local").returncode == 0  # free again once the first has ended
