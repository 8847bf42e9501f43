"""The fence that keeps a holder that lost its lease from changing anything (infra/lease.py `fence`,
`refresh`; training/savedir.py RunFolder): whoever takes a lease over renames the old holder's temp folder away
and replaces the files appended to, so the old holder's rename fails, its log lines and metrics rows land in files
nobody reads, and each of its writes raises LeaseLost (exit 3); the same for ROOT/.campaign/."""
from __future__ import annotations

import dataclasses
import json
import logging
import os

import pytest

from campaign import spec, state
from infra import checkpoint, lease, leaseholder, runlog
from infra import paths
from training import savedir


@pytest.fixture(autouse=True)
def released(monkeypatch):
    monkeypatch.setenv(lease.BEAT_ENV, "30")
    monkeypatch.setenv(lease.STALE_ENV, "60")
    monkeypatch.setattr(leaseholder, "die", lambda text: None)
    yield
    for held in list(leaseholder._HELD.values()):
        held.count, held.reported = 1, True  # some were taken over here: no line at release
        held.release()


def take_over(path: str) -> lease.Holder:
    """Another node takes the lease `path` over, as `leaseholder.acquire` does: its lease renamed in, the fence
    raised, the files appended to replaced."""
    scope = os.path.dirname(path)
    new = dataclasses.replace(lease.me(30, 60, scope), host="othernode", pid=4242, pid_start=None)
    with open(path + ".x", "w") as f:
        json.dump(dataclasses.asdict(new), f)
    os.replace(path + ".x", path)
    assert lease.fence(scope, new.token)
    for name in (paths.METRICS, paths.LOG):
        lease.refresh(os.path.join(scope, name), lease.temp_dir(scope, new.token))
    return new


def test_a_holder_whose_check_passed_just_before_the_takeover_writes_nothing(tmp_path):
    save = str(tmp_path)
    folder = savedir.hold_save_dir(save)
    folder.write_json(os.path.join(save, "results.json"), {"by": "A"})
    take_over(os.path.join(save, ".lease"))
    with open(os.path.join(save, "results.json"), "w") as f:
        f.write('{"by": "B"}')
    folder.lease.ok = lease.clock()  # A's check was confirmed a moment ago: only the fence stands in the way
    with pytest.raises(leaseholder.LeaseLost, match=f"^{save} was taken over by pid 4242 on othernode"):
        folder.write_json(os.path.join(save, "results.json"), {"by": "A, after losing it"})
    with pytest.raises(leaseholder.LeaseLost):
        folder.save({"w": 1}, os.path.join(save, "checkpoint.pth.tar"))
    assert open(os.path.join(save, "results.json")).read() == '{"by": "B"}'
    assert not os.path.exists(os.path.join(save, "checkpoint.pth.tar"))


def test_a_rename_after_the_takeover_fails_and_is_lease_lost(tmp_path):
    """The takeover lands while A writes its temp file, after both of A's checks could pass."""
    save = str(tmp_path)
    held = savedir.hold_save_dir(save).lease

    def write(f):
        take_over(held.path)
        held.ok = lease.clock()
        f.write(b"A's")
    with pytest.raises(leaseholder.LeaseLost, match="was taken over by pid 4242"):
        checkpoint._atomic(os.path.join(save, "x.bin"), write, "wb", held)
    assert not os.path.exists(os.path.join(save, "x.bin"))


def test_rows_and_log_lines_of_a_holder_that_lost_the_lease_reach_no_file(tmp_path):
    save = str(tmp_path)
    folder = savedir.hold_save_dir(save)
    metrics = os.path.join(save, paths.METRICS)
    folder.append_row(metrics, {"epoch": 0})
    log = runlog.setup_log(save, True)  # log.txt held open, as by a run
    log.info("A: epoch 0")
    take_over(folder.lease.path)
    folder.lease.ok = lease.clock()
    with pytest.raises(leaseholder.LeaseLost):
        folder.append_row(metrics, {"epoch": 1})  # confirmed after the open, whatever the last check said
    log.info("A: after losing the lease")
    text = open(os.path.join(save, paths.LOG)).read()
    assert "A: epoch 0" in text and "after losing" not in text
    assert checkpoint.read_jsonl(metrics) == [{"epoch": 0}]
    for h in list(logging.getLogger(runlog.LOGGER).handlers):
        logging.getLogger(runlog.LOGGER).removeHandler(h)
        h.close()


def test_the_campaign_folder_is_fenced_too(tmp_path):
    """A `sweep.py run` woken after its lease was taken over cannot write jobs.json over its successor's."""
    c = spec.Campaign(str(tmp_path / "c.toml"), str(tmp_path), ())
    held = state.hold_campaign(c)
    jobs = os.path.join(str(tmp_path), ".campaign", "jobs.json")
    checkpoint.atomic_write_json(jobs, {"a": "1"})  # as campaign/slurmstate.py writes it
    take_over(held.path)
    with open(jobs, "w") as f:  # the successor's record
        f.write('{"b": "2"}')
    held.ok = lease.clock()
    with pytest.raises(leaseholder.LeaseLost, match=r"\.campaign was taken over by pid 4242 on othernode"):
        checkpoint.atomic_write_json(jobs, {"a": "1", "c": "3"})
    assert json.load(open(jobs)) == {"b": "2"}


def test_taking_a_lease_removes_the_temp_folders_of_earlier_holders_only(tmp_path):
    save = str(tmp_path)
    os.makedirs(os.path.join(save, lease.TEMP + "deadbeef"))
    open(os.path.join(save, lease.TEMP + "deadbeef", "half.tmp"), "w").close()
    folder = savedir.hold_save_dir(save)
    assert sorted(n for n in os.listdir(save) if n.startswith(".tmp")) == [lease.TEMP + folder.lease.holder.token]
    folder.write_text(os.path.join(save, "a.txt"), "a")
    assert os.listdir(folder.lease.tmp) == []  # the temp file was renamed into place


def test_a_rename_that_worked_but_answered_enoent_is_a_write_done(tmp_path, monkeypatch):
    """NFS: the RENAME's reply was lost and its retransmit answered ENOENT: the file is in place, no error."""
    real = os.replace

    def retransmitted(src, dst):
        real(src, dst)
        raise FileNotFoundError(2, "No such file or directory")
    monkeypatch.setattr(checkpoint.os, "replace", retransmitted)
    path = str(tmp_path / "results.json")
    checkpoint.atomic_write_json(path, {"a": 1})
    assert json.load(open(path)) == {"a": 1}


def test_a_holder_that_wakes_after_a_takeover_leaves_the_progress_marker_alone(tmp_path):
    """The watchdog's .progress touch is a write too: after the takeover, however recently the lease was last
    confirmed, the old holder's watchdog does not touch the new holder's marker."""
    from infra import watchdog

    save = str(tmp_path)
    folder = savedir.hold_save_dir(save)
    marker = os.path.join(save, watchdog.PROGRESS)
    watchdog._touch(marker)
    assert os.path.exists(marker)
    take_over(os.path.join(save, ".lease"))
    os.utime(marker, (1_000_000, 1_000_000))  # the new holder's last progress
    folder.lease.ok = lease.clock()  # confirmed a moment before the takeover
    watchdog._touch(marker)
    assert os.stat(marker).st_mtime == 1_000_000
