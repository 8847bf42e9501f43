"""Holding a lease (`infra.lease`'s protocol): its heartbeat, the check a write makes, what a holder that lost it
says, its release at exit and at SIGTERM/SIGHUP, and the leases spawned ranks run under.

- A thread touches the lease every `beat_s` seconds. A confirmation is dated by the clock read BEFORE its I/O (a
  read or touch that blocks cannot date a stale answer as fresh), and only a successful read of our token renews
  ownership. Nobody can take the lease over until it has been seen unchanged for `stale_s` after our last
  successful touch, so while the lease cannot be read a write is allowed only within that bound.
- A holder whose lease is gone stops with one line naming the cause (its file vanished; taken over by whom;
  its heartbeat could not reach the file) and exit status `LOST_EXIT`: the heartbeat thread ends the process,
  a write raises `LeaseLost` (a NodeError, exit 3), never from inside a serialiser or a log handler.
- Released on a normal exit and on SIGTERM/SIGHUP (a requeue), only while the token is still ours; never while a
  heartbeat is in flight (one that read the file just after the release removed it would call the lease lost).
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import sys
import threading

from infra import lease as protocol
from infra.errors import NodeError

HELD_ENV = "DOUBLEWIN_LEASE_HELD"  # {lease path: [scope, token, holder pid]}: the leases spawned ranks run under
CHECK_S = 1.0  # a write within this long of the last confirmation does not read the lease again
LOST_EXIT = 3  # the node (frozen, cut off), not the input, is at fault


class LeaseLost(NodeError):
    """The lease of the folder being written is no longer this process's."""


class Lease:
    """A lease this process holds (or, in a rank spawned by its holder, runs under: `pid` is the holder's)."""

    def __init__(self, path: str, holder: protocol.Holder, scope: str, pid: int | None = None,
                 inherit: bool = False) -> None:
        self.path, self.holder, self.scope, self.count, self.inherit = path, holder, scope, 1, inherit
        self.pid = os.getpid() if pid is None else pid
        self.ok = self.touched = protocol.clock()  # last confirmed ours (a read), last heartbeat written
        self.failing: OSError | None = None  # the heartbeat's last error while it fails
        self.reported = False  # a LeaseLost was raised: its one line is said
        self.stop = threading.Event()
        self.lock = threading.RLock()  # one heartbeat or one release at a time
        self.thread: threading.Thread | None = None

    @property
    def tmp(self) -> str:
        """The folder of this holder's temp files (the fence: `protocol.fence`)."""
        return protocol.temp_dir(self.scope, self.holder.token)

    def owned(self) -> bool:
        """Whether the lease file still carries our token (raises OSError when it cannot be read just now)."""
        try:
            with open(self.path) as f:
                text = f.read()
        except FileNotFoundError:
            return False
        holder = protocol._parse(text)
        return holder is not None and holder.token == self.holder.token

    def start(self) -> None:
        self.thread = threading.Thread(target=self._beat, name=f"lease {self.path}", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.stop.wait(self.holder.beat_s):
            self.beat()

    def beat(self) -> None:
        """One heartbeat: the lease read (still ours?), then touched; never while a release is under way."""
        with self.lock:
            if self.stop.is_set():
                return  # released while this beat waited for the lock
            t = protocol.clock()  # before the I/O: a read or touch that blocks dates nothing after it
            try:
                if not self.owned():
                    die(self.lost_text())
                self.ok = t
                os.utime(self.path)  # on NFS: the server's time
                self.touched, self.failing = t, None
            except OSError as e:  # a filesystem hiccup: the next beat retries, up to the bound
                self.failing = e
                if protocol.clock() - self.touched > self.holder.stale_s:
                    die(self.lost_text())

    def check(self, *, fresh: bool = False) -> None:
        """Raise LeaseLost unless the lease is still ours; called before a write. `fresh`: confirmed by a read
        begun now (an append checks after opening its file), else one within CHECK_S will do."""
        t = protocol.clock()
        if not fresh and t - self.ok < CHECK_S:
            return
        try:
            owned = self.owned()
        except OSError as e:
            if self.pid == os.getpid() and protocol.clock() - self.touched < self.holder.stale_s:
                return  # nobody can have taken it over yet (a rank cannot know when its holder last beat)
            self.failing = e
            raise self.lost_error() from None
        if not owned:
            raise self.lost_error()
        self.ok = t

    def lost_text(self) -> str:
        """The one line a holder that lost its lease prints, naming the cause."""
        seen = protocol.look(self.path)
        me = f"this process (pid {self.pid})" if self.pid == os.getpid() else \
            f"pid {self.pid}, which this process (pid {os.getpid()}) runs under,"
        end = "so it stops here without writing anything more"
        if seen is not None and seen.holder is not None and seen.ident != self.holder.token:
            return (f"{self.scope} was taken over by {seen.who()}: {me} gave no heartbeat it could see for over "
                    f"{self.holder.stale_s:g} s (frozen, or cut off from the filesystem), {end}")
        if self.failing is not None and (seen is None or seen.ident == self.holder.token):
            return (f"{self.scope}: the heartbeat of {me} could not reach its lease {self.path} "
                    f"({self.failing.strerror or type(self.failing).__name__}) for over {self.holder.stale_s:g} s, "
                    f"so another process may take it over: {end}")
        if seen is None and protocol.clock() - self.touched > self.holder.stale_s:  # we were silent: a taker's
            return (f"{self.scope} was taken over by another process, which has released it since: {me} gave no "
                    f"heartbeat for over {self.holder.stale_s:g} s (frozen, or cut off from the filesystem), {end}")
        if seen is None:
            return (f"{self.scope}: its lease {self.path} vanished while {me} held it (deleted, or its folder moved "
                    f"or removed), {end}")
        return f"{self.scope} was taken over by {seen.who()} while {me} held it, {end}"

    def lost_error(self) -> LeaseLost:
        self.stop.set()  # the heartbeat (and the release) stay silent: this error is the one line
        self.reported = True
        return LeaseLost(self.lost_text())

    def release(self) -> None:
        """Give the lease up once every acquire has released it; the file (and our temp folder) go only while it
        is still ours. Found taken over: one line and exit LOST_EXIT, as the heartbeat would (found deleted: a
        warning)."""
        self.count -= 1
        if self.count > 0:
            return
        with self.lock:  # after any heartbeat in flight
            self.stop.set()
        _HELD.pop(self.path, None)
        _export()
        if self.pid == os.getpid():
            try:
                owned = self.owned()
            except OSError:
                return
            if owned:
                shutil.rmtree(self.tmp, ignore_errors=True)
                protocol._unlink(self.path)
            elif self.reported:
                pass
            elif os.path.lexists(self.path) or protocol.clock() - self.touched > self.holder.stale_s:
                die(self.lost_text())  # taken over before this release read it (not by it): exit LOST_EXIT
            else:  # deleted under a holder that beat and checked every write: the run's work stands
                print(f"warning: {self.scope}: its lease {self.path} vanished before this process (pid {self.pid}) "
                      "released it (deleted, or its folder moved or removed)", file=sys.stderr, flush=True)


_HELD: dict[str, Lease] = {}  # realpath of the lease -> what this process holds
_INHERITED: dict[str, Lease] = {}
_EXITING = threading.Lock()
_HOOKED: list[bool] = []


def die(text: str) -> None:
    """The heartbeat's end of a holder that lost its lease: one line, exit LOST_EXIT, nothing more written."""
    with _EXITING:
        print(f"error: {text}", file=sys.stderr, flush=True)
        os._exit(LOST_EXIT)


def acquire(path: str, *, scope: str | None = None, inherit: bool = False) -> Lease:
    """The lease at `path` for this process, with its heartbeat running and the fence raised (`protocol.fence`);
    raises LeaseHeld naming a live holder. `scope`: the folder whose writes it guards (default: the lease's
    folder); `inherit`: processes this one starts run under it (the ranks --multiprocessing-distributed spawns).
    Re-entrant in one process: each acquire needs its release."""
    key = os.path.realpath(path)
    if key in _HELD:
        _HELD[key].count += 1
        return _HELD[key]
    beat_s, stale_s = protocol.bounds()
    holder = protocol.me(beat_s, stale_s, os.path.dirname(key))
    protocol.take(path, holder)
    held = Lease(key, holder, os.path.realpath(scope or os.path.dirname(key)), inherit=inherit)
    _HELD[key] = held
    _on_exit()
    try:
        protocol.fence(held.scope, holder.token)
    except OSError:
        held.release()
        raise
    if inherit:
        _export()
    held.start()
    return held


def _export() -> None:
    """HELD_ENV for the processes this one starts: the leases they run under."""
    mine = {p: h for p, h in _HELD.items() if h.inherit}
    held = {p: [h.scope, h.holder.token, h.pid] for p, h in {**_inherited(), **mine}.items()}
    if held:
        os.environ[HELD_ENV] = json.dumps(held)
    else:
        os.environ.pop(HELD_ENV, None)


def _inherited() -> dict[str, Lease]:
    """The leases of HELD_ENV held by another process (our parent): checked on write, never beaten or released."""
    try:
        held = json.loads(os.environ.get(HELD_ENV) or "{}")
    except ValueError:
        return {}
    out = {}
    for path, (scope, token, pid) in held.items():
        if pid != os.getpid() and path not in _HELD:
            h = _INHERITED.get(path)
            if h is None or h.holder.token != token:
                beat_s, stale_s = protocol.bounds()  # the parent's: it took them from the same environment
                holder = protocol.Holder(host="", pid=pid, pid_start=None, boot=None, pidns=None, job=None,
                                         since=0.0, token=token, beat_s=beat_s, stale_s=stale_s, dir_ino=None)
                h = _INHERITED[path] = Lease(path, holder, scope, pid)
            out[path] = h
    return out


def held() -> set[str]:
    """The real paths of the leases this process holds."""
    return set(_HELD)


def covering(path: str) -> Lease | None:
    """The lease this process holds or runs under whose scope holds `path`, None when there is none."""
    if not _HELD and HELD_ENV not in os.environ:
        return None
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    for h in [*_HELD.values(), *_inherited().values()]:
        if folder == h.scope or folder.startswith(h.scope + os.sep):
            return h
    return None


def release_all() -> None:
    for h in list(_HELD.values()):
        h.count = 1
        h.release()


def _on_signal(sig: int, frame) -> None:
    release_all()
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)  # die of the signal, as without us: the launcher reads the cause from it


def _on_exit() -> None:
    """Release every lease at a normal exit, and at SIGTERM/SIGHUP (a requeue, scancel, a closed terminal) when
    nobody else handles them; SIGKILL cannot be caught (the next launch takes the lease over)."""
    if _HOOKED:
        return
    _HOOKED.append(True)
    atexit.register(release_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) == signal.SIG_DFL:
                signal.signal(sig, _on_signal)
