"""The lease's edges, in one process with the filesystem calls patched: a LINK that succeeded but answered EEXIST
(an NFS retransmit), a touch that blocks across a takeover, a lease that cannot be read, a holder whose clock is
skewed, a folder whose inode changed, `look` reading attributes through the open file, a heartbeat in flight
while the lease is released (a run that finished then exited 3), and the cause a lost lease names."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import threading
import time

import pytest

from infra import lease, leaseholder


class Died(Exception):
    """What `leaseholder.die` raises here instead of ending the process."""


@pytest.fixture(autouse=True)
def no_exit(monkeypatch):
    """The heartbeat's exit recorded instead of taken; fast bounds; every lease released after the test."""
    died: list[str] = []

    def die(text):
        died.append(text)
        raise Died(text)
    monkeypatch.setattr(leaseholder, "die", die)
    monkeypatch.setenv(lease.BEAT_ENV, "30")
    monkeypatch.setenv(lease.STALE_ENV, "60")
    yield died
    for held in list(leaseholder._HELD.values()):
        held.stop.set()
        held.count, held.reported = 1, True  # some were taken over here: no line at release
        held.release()


def other(path: str, **changes) -> lease.Holder:
    """A holder of the lease `path` on another node (its fields as `changes` say)."""
    me = lease.me(30, 60, os.path.dirname(path))
    return dataclasses.replace(me, host="othernode", pid=4242, pid_start=None, **changes)


def write_lease(path: str, holder: lease.Holder) -> None:
    """`holder` takes the lease `path` over by rename, as a taker does."""
    tmp = path + ".x"
    with open(tmp, "w") as f:
        json.dump(dataclasses.asdict(holder), f)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- taking it
def test_a_link_that_succeeded_but_answered_eexist_is_ours(tmp_path, monkeypatch):
    """NFSv3: the LINK's reply was lost and its retransmit answered EEXIST: the lease is ours, nothing is left."""
    real = os.link

    def retransmitted(src, dst):
        real(src, dst)
        raise FileExistsError(errno.EEXIST, "File exists")
    monkeypatch.setattr(lease.os, "link", retransmitted)
    path = str(tmp_path / ".lease")
    held = leaseholder.acquire(path)
    assert lease.look(path).holder.token == held.holder.token
    assert sorted(os.listdir(tmp_path)) == [".lease", lease.TEMP + held.holder.token]
    held.release()
    assert os.listdir(tmp_path) == []


def test_a_link_refused_because_another_holds_it_is_still_refused(tmp_path, monkeypatch):
    path = str(tmp_path / ".lease")
    write_lease(path, other(path))
    with pytest.raises(lease.LeaseHeld, match=f"{path} is held by pid 4242 on othernode"):
        leaseholder.acquire(path)


def test_a_lease_stale_by_a_skewed_clock_is_watched_before_it_is_taken(tmp_path, monkeypatch):
    """The holder's node stamps times an hour behind (Lustre, GPFS: client clocks): its live lease looks an hour
    old to a one-shot reader, but a taker watches it and sees it beat; one that stays silent is taken."""
    monkeypatch.setenv(lease.BEAT_ENV, "0.1")
    monkeypatch.setenv(lease.STALE_ENV, "1.5")
    path = str(tmp_path / ".lease")
    write_lease(path, other(path, beat_s=0.1, stale_s=1.5))
    behind = time.time() - 3600
    os.utime(path, (behind, behind))
    seen = lease.look(path)
    assert seen.stale and not seen.sure and seen.why == "no heartbeat for 60 min"
    stop = threading.Event()

    def beats():  # the skewed holder's heartbeat: its clock is an hour behind
        while not stop.wait(0.05):
            t = time.time() - 3600
            os.utime(path, (t, t))
    beating = threading.Thread(target=beats)
    beating.start()
    try:
        with pytest.raises(lease.LeaseHeld, match="held by pid 4242 on othernode"):
            leaseholder.acquire(path)
    finally:
        stop.set()
        beating.join()
    lease._WATCHED.clear()  # a new taker, which has not watched it yet
    start = time.monotonic()
    held = leaseholder.acquire(path)  # silent now: taken once it has been seen unchanged for its bound
    assert time.monotonic() - start >= 1.5
    assert lease.look(path).holder.token == held.holder.token


def test_a_folder_is_a_copy_only_when_its_path_and_inode_both_differ(tmp_path):
    path = str(tmp_path / ".lease")
    ino = os.stat(tmp_path).st_ino
    write_lease(path, other(path, dir_ino=ino + 1))  # renumbered (Lustre migration, 32-bit API, FUSE)
    assert not lease.look(path).stale
    write_lease(path, other(path, dir_path="/elsewhere"))  # the same folder seen under another path
    assert not lease.look(path).stale
    write_lease(path, other(path, dir_ino=ino + 1, dir_path="/elsewhere"))
    seen = lease.look(path)
    assert seen.stale and seen.sure and seen.why == "it was copied here from another folder"


def test_look_reads_the_attributes_of_the_file_it_opened(tmp_path, monkeypatch):
    """No stat by name before the open (NFS's attribute cache): fstat of the opened lease."""
    path = str(tmp_path / ".lease")
    write_lease(path, other(path))
    real = os.stat

    def stat(p, *a, **k):
        assert os.path.basename(str(p)) != ".lease", "stat by name"
        return real(p, *a, **k)
    monkeypatch.setattr(lease.os, "stat", stat)
    assert lease.look(path).holder.pid == 4242


# ---------------------------------------------------------------------------- holding it
def test_a_confirmation_is_dated_before_a_touch_that_blocked(tmp_path, monkeypatch):
    """The heartbeat's touch blocks while another process takes the lease over: the beat must not make the
    next write skip its check, which then names the taker."""
    path = str(tmp_path / ".lease")
    held = leaseholder.acquire(path)
    real = os.utime

    def blocking(p, *a, **k):
        write_lease(path, other(path))  # taken over meanwhile
        time.sleep(leaseholder.CHECK_S + 0.2)
        return real(p, *a, **k)
    monkeypatch.setattr(leaseholder.os, "utime", blocking)
    held.beat()
    with pytest.raises(leaseholder.LeaseLost, match=f"^{tmp_path} was taken over by pid 4242 on othernode"):
        held.check()


def test_an_unreadable_lease_renews_nothing_and_stops_writes_after_its_bound(tmp_path, monkeypatch, no_exit):
    path = str(tmp_path / ".lease")
    held = leaseholder.acquire(path)

    def eio(self):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(leaseholder.Lease, "owned", eio)
    ok, touched = held.ok - 5, held.touched
    held.ok = ok
    held.check()  # within the bound since the last touch: nobody can have taken it yet
    held.beat()
    assert (held.ok, held.touched) == (ok, touched)  # neither the check nor the beat renewed anything
    held.touched -= held.holder.stale_s
    with pytest.raises(Died):
        held.beat()
    with pytest.raises(leaseholder.LeaseLost, match="heartbeat of this process .* could not reach its lease .* "
                                                    r"\(Input/output error\) for over 60 s"):
        held.check()


def test_a_heartbeat_in_flight_when_the_lease_is_released_does_not_call_it_lost(tmp_path, monkeypatch, no_exit):
    """A run that finished normally then exited 3 "taken over ... gave no heartbeat": its heartbeat had read
    the lease just after the release at exit removed it. A release now waits for a beat in flight, and a beat
    that finds the lease released does nothing."""
    path = str(tmp_path / ".lease")
    held = leaseholder.acquire(path)
    reading, go = threading.Event(), threading.Event()
    real = leaseholder.Lease.owned

    def slow(self):
        if threading.current_thread().name == "beat":
            reading.set()
            go.wait(5)
        return real(self)
    monkeypatch.setattr(leaseholder.Lease, "owned", slow)
    beat = threading.Thread(target=held.beat, name="beat")
    beat.start()
    reading.wait(5)
    release = threading.Thread(target=held.release)
    release.start()
    time.sleep(0.2)
    assert release.is_alive() and os.path.exists(path)  # waits for the beat
    go.set()
    beat.join(5)
    release.join(5)
    assert not os.path.exists(path) and no_exit == []
    held.beat()  # a beat that wakes after the release
    assert no_exit == []


@pytest.mark.parametrize("how", ["vanished", "taken", "taken and released", "silent"])
def test_a_lost_lease_names_its_cause(tmp_path, monkeypatch, no_exit, how):
    path = str(tmp_path / ".lease")
    held = leaseholder.acquire(path)
    if how == "vanished":
        os.unlink(path)
        expected = f"^{tmp_path}: its lease {path} vanished while this process"
    elif how == "taken and released":  # frozen past the bound meanwhile
        os.unlink(path)
        held.touched -= held.holder.stale_s + 1
        expected = f"^{tmp_path} was taken over by another process, which has released it since: this process"
    elif how == "taken":
        write_lease(path, other(path))
        expected = f"^{tmp_path} was taken over by pid 4242 on othernode .*: this process .* gave no heartbeat"
    else:
        monkeypatch.setattr(leaseholder.os, "utime", lambda *a: (_ for _ in ()).throw(OSError(errno.ESTALE, "Stale")))
        held.touched -= held.holder.stale_s + 1
        expected = f"^{tmp_path}: the heartbeat of this process .* could not reach its lease"
    with pytest.raises(Died):
        held.beat()
    assert len(no_exit) == 1 and __import__("re").match(expected, no_exit[0]), no_exit
    assert no_exit[0].endswith("so it stops here without writing anything more") or how == "silent"


def test_a_release_that_finds_the_lease_taken_over_says_so(tmp_path, no_exit):
    path = str(tmp_path / ".lease")
    held = leaseholder.acquire(path)
    write_lease(path, other(path))
    with pytest.raises(Died):
        held.release()
    assert no_exit[0].startswith(f"{tmp_path} was taken over by pid 4242 on othernode") and len(no_exit) == 1
    assert lease.look(path).holder.pid == 4242  # not ours to remove


def test_a_release_that_finds_the_lease_deleted_warns_and_goes_on(tmp_path, no_exit, capsys):
    path = str(tmp_path / ".lease")
    held = leaseholder.acquire(path)
    os.unlink(path)
    held.release()
    assert no_exit == [] and capsys.readouterr().err == (
        f"warning: {tmp_path}: its lease {path} vanished before this process (pid {os.getpid()}) released it "
        "(deleted, or its folder moved or removed)\n")
