"""The progress watchdog (infra/watchdog.py): a run whose data reads block (a FIFO among the images) stops after
DOUBLEWIN_STALL_S with every thread's stack in its log, its lease released and exit 3; progress keeps a run
alive; plan and status show a live holder that makes no progress."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import pytest

import campaignkit as kit
from campaign import spec, state, status
from infra import leaseholder, watchdog
from infra.errors import UserError

ROOT = kit.ROOT


@pytest.fixture
def stalls(monkeypatch):
    """The stalls the watchdog reports, recorded instead of ending the process."""
    seen: list[float] = []
    monkeypatch.setattr(watchdog, "stalled", lambda stall_s, log: seen.append(stall_s))
    return seen


@pytest.mark.slow
def test_progress_keeps_a_run_alive_and_none_for_the_bound_is_a_stall(tmp_path, monkeypatch, stalls):
    monkeypatch.setenv(watchdog.STALL_ENV, "2")
    with watchdog.watching(str(tmp_path), None):
        for _ in range(20):  # a batch every 0.05 s for a second
            watchdog.progress()
            time.sleep(0.05)
        assert stalls == []
        deadline = time.monotonic() + 10
        while not stalls and time.monotonic() < deadline:
            time.sleep(0.05)
    assert stalls and stalls[0] == 2
    assert os.path.exists(tmp_path / watchdog.PROGRESS)
    stalls.clear()
    time.sleep(0.5)
    assert stalls == []  # disarmed once the run's block has ended


def test_a_bad_stall_bound_is_one_line(monkeypatch):
    monkeypatch.setenv(watchdog.STALL_ENV, "half an hour")
    with pytest.raises(UserError, match="DOUBLEWIN_STALL_S='half an hour': expected a number of seconds above 0"):
        watchdog.stall_bound()
    monkeypatch.delenv(watchdog.STALL_ENV)
    assert watchdog.stall_bound() == 1800.0


def test_plan_shows_a_live_holder_that_makes_no_progress(tmp_path, monkeypatch):
    monkeypatch.setenv("DOUBLEWIN_LEASE_BEAT_S", "30")
    save = tmp_path / "run"
    save.mkdir()
    run = spec.Run("x/r", "transfer", str(save), ("true",))
    held = leaseholder.acquire(str(save / state.LEASE))
    try:
        (save / watchdog.PROGRESS).touch()
        assert state.state_of(run).detail.startswith("pid ")
        old = time.time() - 3600
        os.utime(save / watchdog.PROGRESS, (old, old))
        row = state.state_of(run)
        assert row.state == "running" and row.detail.startswith(f"no progress for 60 min: pid {os.getpid()} on ")
        shown = status.status_text(spec.Campaign(str(tmp_path / "c.toml"), str(tmp_path), (run,)), [row])
        assert f"  running x/r, no progress for 60 min: pid {os.getpid()} on " in shown
    finally:
        held.release()


@pytest.mark.slow
def test_a_run_whose_data_reads_block_stops_with_its_stacks_in_the_log(tmp_path):
    inputs = kit.make_inputs(str(tmp_path))
    os.mkfifo(os.path.join(inputs["data"], "train", "ant", "00099.png"))  # opening it blocks forever
    save = str(tmp_path / "run")
    cmd = ["bash", os.path.join(ROOT, "script", "train_downstream", "std.sh"), "folder", inputs["init"], save, "",
           "--data", inputs["data"], *kit.TINY]
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**kit.ENV, watchdog.STALL_ENV: "6"}, timeout=120)
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-2000:]
    assert time.monotonic() - start >= 6
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the run made no training or evaluation progress for over 6 s (stacks in {save}/"
                           "log.txt)"), last
    log = open(os.path.join(save, "log.txt")).read()
    assert "(DOUBLEWIN_STALL_S): the stack of every thread follows" in log
    assert log.count("(most recent call first)") >= 2  # every thread: the main one and the lease's heartbeat
    assert "in __getitem__" in log  # blocked reading an image
    assert not os.path.exists(os.path.join(save, state.LEASE))  # released: a retry starts at once
    assert not any(n.startswith(".tmp-") for n in os.listdir(save))
    shutil.rmtree(save)


def test_the_watchdog_thread_is_one_per_process(tmp_path, monkeypatch, stalls):
    monkeypatch.setenv(watchdog.STALL_ENV, "100")
    for _ in range(3):
        with watchdog.watching(None, None):
            pass
    assert sum(t.name == "progress watchdog" for t in threading.enumerate()) == 1


@pytest.mark.slow  # torch.compiler's import takes seconds
def test_forward_passes_are_progress_within_the_block_only():
    import torch
    model = torch.nn.Linear(2, 2)
    watchdog._last[0] = 0.0
    with watchdog.forward_progress(model):
        model(torch.zeros(1, 2))
    assert watchdog._last[0] > 0.0
    watchdog._last[0] = 0.0
    model(torch.zeros(1, 2))
    assert watchdog._last[0] == 0.0


def test_a_block_armed_after_a_longer_one_is_watched_with_its_own_bound(tmp_path, monkeypatch, stalls):
    """The watchdog thread of a process that ran a block with the default bound (a 30 s tick) must not sleep
    through a later block's shorter bound."""
    with watchdog.watching(None, None):  # the default 1800 s: the thread's tick is 30 s
        time.sleep(0.3)  # the thread is now inside that tick
    monkeypatch.setenv(watchdog.STALL_ENV, "1")
    with watchdog.watching(str(tmp_path), None):
        deadline = time.monotonic() + 8
        while not stalls and time.monotonic() < deadline:
            time.sleep(0.05)
    assert stalls and stalls[0] == 1
