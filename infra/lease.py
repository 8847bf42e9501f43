"""Exclusive ownership of a folder through a lease file, on any filesystem a cluster may give us.

flock cannot decide who owns a run folder: on Lustre with `localflock`, NFS with `nolock` or `local_lock=flock`,
or BeeGFS without global locks each node sees only its own locks; NFSv3 without lockd and Lustre `noflock` refuse
it (ENOLCK, ENOSYS); and a dead node's NFS lock outlives it. A lease needs only what NFS and Lustre honour: a file
created exclusively (its content written to a uniquely named file first, then `os.link`ed to the lease's name)
and an atomic rename.

- The lease (JSON) names its holder: host, pid and the pid's start time (a reused pid is not the holder), boot
  and pid namespace, SLURM job, start time, a random token, and the holder's heartbeat interval and stale bound.
- A thread of the holder touches it every `beat_s` seconds. Its age is judged on the filesystem's own clock (its
  mtime against a probe file created now in the same folder), so clock skew between nodes does not matter.
- Stale: no heartbeat for longer than the holder's bound (`DOUBLEWIN_LEASE_STALE_S`, default 600 s), or, on this
  machine, its process gone (or its pid reused), or found in another folder than its own (a copied run folder:
  the folder's inode differs). A stale lease is taken over atomically, with one winner however
  many processes try at once: the taker first creates `<lease>.take-<stale token>.<n>` exclusively, then checks,
  under it, that the lease is still the same stale one (by token) before renaming its own over it. A takeover file
  older than `TAKE_S` (a taker that died half-way) is passed by creating the next `n`.
- A holder whose lease was taken over (it was frozen, or cut off from the filesystem, past its bound) stops at
  once with one line and exit status `LOST_EXIT`, writing nothing more: its heartbeat finds out within `beat_s`,
  and every write of the run's files (`infra.checkpoint`, the log) calls `check_write` first.
- Released on a normal exit and on SIGTERM/SIGHUP (a requeue), only while the token is still ours. SIGKILL leaves
  it: the next launch on this machine takes it over at once, one elsewhere after the bound.
"""
from __future__ import annotations

import atexit
import errno
import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass

from infra.errors import UserError

STALE_ENV, BEAT_ENV = "DOUBLEWIN_LEASE_STALE_S", "DOUBLEWIN_LEASE_BEAT_S"
STALE_S, BEAT_S = 600.0, 30.0  # defaults: 20 heartbeats may be missed (a slow metadata server) before a takeover
# {lease path: [scope, token, holder pid]}: the leases the --multiprocessing-distributed ranks run under
HELD_ENV = "DOUBLEWIN_LEASE_HELD"
TAKE_S = 30.0  # a takeover takes milliseconds: a takeover file this old belongs to a taker that died
CHECK_S = 1.0  # a write within this long of the last confirmation does not read the lease again
LOST_EXIT = 3  # the node (frozen, cut off), not the input, is at fault


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as its file says."""
    host: str
    pid: int
    pid_start: str | None  # the pid's start time (/proc/PID/stat), None where unknown
    boot: str | None       # the kernel's boot id: a pid means something on this boot only
    pidns: str | None      # the pid namespace: a container on the same host counts pids apart
    job: str | None        # SLURM job (an array element: ARRAYJOB_TASK)
    since: float           # when the lease was taken (time.time() of the holder)
    token: str
    beat_s: float
    stale_s: float
    dir_ino: int | None  # the inode of the lease's folder (the same on every client): a copied folder's lease is
                         # not about that copy

    def describe(self) -> str:
        """e.g. "pid 123 on n2 (job 45_3, since 2024-05-01 12:00:00)"."""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} on {self.host} ({f'job {self.job}, ' if self.job else ''}since {since})"


@dataclass(frozen=True)
class Seen:
    """A lease as a reader finds it: its holder (None: unreadable), the age of its last heartbeat on the
    filesystem's clock, and whether it is stale (with why)."""
    holder: Holder | None
    age_s: float
    stale: bool
    why: str = ""   # stale: "no heartbeat for 14 min" or "its process is gone"
    ident: str = ""  # the token, or the file's identity when unreadable: what a takeover re-checks

    def who(self) -> str:
        return self.holder.describe() if self.holder else "an unreadable lease"


class LeaseHeld(UserError):
    """The lease is live (or being taken over right now) and someone else's."""

    def __init__(self, path: str, seen: Seen | None) -> None:
        self.path, self.seen = path, seen
        super().__init__(f"{path} is held by {seen.who() if seen else 'a process taking it over right now'}")


def bounds() -> tuple[float, float]:
    """(beat_s, stale_s) from DOUBLEWIN_LEASE_BEAT_S / DOUBLEWIN_LEASE_STALE_S; a bound under two heartbeats is
    refused (one late heartbeat would end a healthy run)."""
    out = []
    for name, default in ((BEAT_ENV, BEAT_S), (STALE_ENV, STALE_S)):
        text = os.environ.get(name, "")
        try:
            value = float(text) if text.strip() else default
        except ValueError:
            value = -1.0
        if not value > 0:
            raise UserError(f"{name}={text!r}: expected a number of seconds above 0")
        out.append(value)
    if out[1] < 2 * out[0]:
        raise UserError(f"{STALE_ENV}={out[1]:g} must be at least twice {BEAT_ENV}={out[0]:g}")
    return out[0], out[1]


# ---------------------------------------------------------------------------- who we are
def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _pid_start(pid: int) -> str | None:
    """The start time of `pid` (clock ticks after boot), None when the process does not exist or /proc is not
    there; "" for a zombie (dead, not yet reaped)."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return "" if fields[0] in ("Z", "X") else fields[19]


def _pidns() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def slurm_job() -> str | None:
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def me(beat_s: float, stale_s: float, folder: str) -> Holder:
    """This process as the holder of a lease in `folder`."""
    return Holder(socket.gethostname(), os.getpid(), _pid_start(os.getpid()),
                  _read("/proc/sys/kernel/random/boot_id"), _pidns(), slurm_job(), time.time(),
                  secrets.token_hex(16), beat_s, stale_s, os.stat(folder).st_ino)


def _clock() -> float:
    """Seconds that also pass while the process is stopped or the machine sleeps."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


# ---------------------------------------------------------------------------- reading a lease
def _parse(text: str | None) -> Holder | None:
    try:
        data = json.loads(text or "")
        return Holder(**{k: data[k] for k in Holder.__dataclass_fields__})
    except (ValueError, TypeError, KeyError):
        return None


def fs_now(folder: str) -> float:
    """Now on the clock of the filesystem that holds `folder`: the mtime of a probe file created there (the
    machine's own clock where the folder cannot be written)."""
    probe = os.path.join(folder, f".lease.probe.{secrets.token_hex(8)}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError:
        return time.time()
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        os.unlink(probe)


def _alive_here(h: Holder) -> bool | None:
    """Whether the holder's process still lives, when it runs on this machine; None when it runs elsewhere."""
    if h.host != socket.gethostname() or h.boot != _read("/proc/sys/kernel/random/boot_id") or h.pidns != _pidns():
        return None
    start = _pid_start(h.pid)
    if start is None and not os.path.isdir("/proc"):
        try:
            os.kill(h.pid, 0)
            return True
        except ProcessLookupError:
            return False
        except OSError:
            return True
    return bool(start) and (h.pid_start is None or start == h.pid_start)


def look(path: str) -> Seen | None:
    """The lease at `path` as it is now, None when there is none. Never raises: a lease that cannot be read is
    judged by its age alone (against the default bound)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    holder = _parse(_read(path))
    age = max(0.0, fs_now(os.path.dirname(path) or ".") - st.st_mtime)
    stale_s = holder.stale_s if holder else STALE_S
    alive = _alive_here(holder) if holder else None
    ident = holder.token if holder else f"ino{st.st_ino}"
    if holder and holder.dir_ino not in (None, _ino(os.path.dirname(path) or ".")):
        return Seen(holder, age, True, "it was copied here from another folder", ident)
    if alive is False:
        return Seen(holder, age, True, f"its process (pid {holder.pid}) is gone", ident)
    if age > stale_s:
        return Seen(holder, age, True, f"no heartbeat for {_duration(age)}", ident)
    return Seen(holder, age, False, "", ident)


def _ino(folder: str) -> int | None:
    try:
        return os.stat(folder).st_ino
    except OSError:
        return None


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


# ---------------------------------------------------------------------------- taking a lease
def _write_new(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_new(path: str, data: bytes, token: str) -> bool:
    """Create the lease with its whole content at once: True if it is ours, False if one exists."""
    tmp = f"{path}.{token}.new"
    _write_new(tmp, data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        if os.stat(tmp).st_nlink == 2:  # NFS: a retransmitted LINK answers an error though the first one worked
            return True
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
    finally:
        os.unlink(tmp)
    try:  # a filesystem without hard links: create-exclusive, content written just after
        _write_new(path, data)
        return True
    except FileExistsError:
        return False


def _take_files(path: str, ident: str) -> list[tuple[int, str]]:
    folder, base = os.path.split(path)
    prefix = f"{base}.take-{ident}."
    names = [n for n in os.listdir(folder or ".") if n.startswith(prefix) and n[len(prefix):].isdigit()]
    return sorted((int(n[len(prefix):]), os.path.join(folder, n)) for n in names)


def _take_over(path: str, seen: Seen, data: bytes, token: str) -> bool:
    """Replace the stale lease `seen` with ours; False when another taker is at it or the lease changed."""
    takes = _take_files(path, seen.ident)
    if takes:
        try:
            if fs_now(os.path.dirname(path) or ".") - os.stat(takes[-1][1]).st_mtime < TAKE_S:
                return False  # another process is taking it over right now
        except FileNotFoundError:
            return False  # that taker just finished
    mine = f"{path}.take-{seen.ident}.{takes[-1][0] + 1 if takes else 0}"
    try:
        _write_new(mine, token.encode())
    except FileExistsError:
        return False
    won = False
    now = look(path)  # under our takeover file: still the same stale lease?
    try:
        if now is not None and now.ident == seen.ident and now.stale:
            tmp = f"{path}.{token}.new"
            _write_new(tmp, data)
            os.rename(tmp, path)
            won = True
        return won
    finally:
        gone = won or now is None or now.ident != seen.ident  # that stale lease is no more: nor its takeover files
        for _, name in _take_files(path, seen.ident) if gone else [(0, mine)]:
            _unlink(name)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def acquire(path: str, *, scope: str | None = None, inherit: bool = False) -> "Lease":
    """The lease at `path` for this process, with its heartbeat running; raises LeaseHeld naming a live holder.
    `scope`: the folder whose writes `check_write` guards (default: the lease's folder); `inherit`: processes
    this one starts run under it (the ranks that --multiprocessing-distributed spawns). Re-entrant in one
    process: each acquire needs its release."""
    key = os.path.realpath(path)
    if key in _HELD:
        _HELD[key].count += 1
        return _HELD[key]
    beat_s, stale_s = bounds()
    holder = me(beat_s, stale_s, os.path.dirname(key))
    data = (json.dumps(asdict(holder), indent=1, sort_keys=True) + "\n").encode()
    for attempt in range(10):  # a winner needs milliseconds: the others then see its live lease
        if _link_new(path, data, holder.token):
            break
        seen = look(path)
        if seen is not None and not seen.stale:
            raise LeaseHeld(path, seen)
        if seen is not None and _take_over(path, seen, data, holder.token):
            break
        time.sleep(0.05 * min(attempt + 1, 4))
    else:
        raise LeaseHeld(path, None)
    lease = Lease(key, holder, os.path.realpath(scope or os.path.dirname(key)), inherit=inherit)
    try:
        _clean_new_files(key, holder.token)
    except OSError:
        pass
    _HELD[key] = lease
    if inherit:
        _export()
    _on_exit()
    lease.start()
    return lease


def _clean_new_files(path: str, token: str) -> None:
    """Content files a process killed half-way through acquiring left (`<lease>.<token>.new`), older than the
    takeover bound."""
    folder, base = os.path.split(path)
    now = fs_now(folder)
    for name in os.listdir(folder):
        if name.startswith(base + ".") and name.endswith(".new") and token not in name:
            if now - os.stat(os.path.join(folder, name)).st_mtime > TAKE_S:
                _unlink(os.path.join(folder, name))


# ---------------------------------------------------------------------------- holding a lease
class Lease:
    """A lease this process holds (or, in a rank spawned by its holder, runs under: `pid` is the holder's)."""

    def __init__(self, path: str, holder: Holder, scope: str, pid: int | None = None, inherit: bool = False) -> None:
        self.path, self.holder, self.scope, self.count, self.inherit = path, holder, scope, 1, inherit
        self.pid = os.getpid() if pid is None else pid
        self.ok = _clock()  # when the lease was last confirmed ours
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def owned(self) -> bool:
        """Whether the lease file still carries our token (raises OSError when it cannot be read just now)."""
        try:
            with open(self.path) as f:
                text = f.read()
        except FileNotFoundError:
            return False
        holder = _parse(text)
        return holder is not None and holder.token == self.holder.token

    def start(self) -> None:
        self.thread = threading.Thread(target=self._beat, name=f"lease {self.path}", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.stop.wait(self.holder.beat_s):
            try:
                if not self.owned():
                    self.lost()
                os.utime(self.path)  # on NFS: the server's time
                self.ok = _clock()
            except OSError:  # a filesystem hiccup: the next beat retries, up to the bound
                if _clock() - self.ok > self.holder.stale_s:
                    self.lost()

    def check(self, leftover: str | None = None) -> None:
        """Stop this process (one line, exit LOST_EXIT; `leftover`, a half-made file, removed first) unless the
        lease is still ours: called before a write."""
        if _clock() - self.ok < CHECK_S:
            return
        try:
            owned = self.owned()
        except OSError:
            owned = _clock() - self.ok <= self.holder.stale_s
        if not owned:
            self.lost(leftover)
        self.ok = _clock()

    def lost(self, leftover: str | None = None) -> None:
        seen = look(self.path)
        by = seen.who() if seen and seen.holder and seen.ident != self.holder.token else "another process"
        if self.pid == os.getpid():
            why = f"this process (pid {self.pid}) gave no heartbeat for over {self.holder.stale_s:g} s"
        else:
            why = f"pid {self.pid}, which this process (pid {os.getpid()}) runs under, gave no heartbeat in time"
        with _EXITING:
            if leftover:
                _unlink(leftover)
            print(f"error: {self.scope} was taken over by {by}: {why} (frozen, or cut off from the filesystem), so "
                  "it stops here without writing anything more", file=sys.stderr, flush=True)
            os._exit(LOST_EXIT)

    def release(self) -> None:
        """Give the lease up once every acquire has released it; the file goes only while it is still ours."""
        self.count -= 1
        if self.count > 0:
            return
        self.stop.set()
        _HELD.pop(self.path, None)
        _export()
        if self.pid == os.getpid():
            try:
                owned = self.owned()
            except OSError:
                return
            if not owned:
                self.lost()  # taken over while we held it: we may have written after that, say so
            _unlink(self.path)


_HELD: dict[str, Lease] = {}  # realpath of the lease -> what this process holds
_EXITING = threading.Lock()
_HOOKED: list[bool] = []


def _export() -> None:
    """HELD_ENV for the processes this one starts: the leases they run under."""
    mine = {p: lease for p, lease in _HELD.items() if lease.inherit}
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
                holder = Holder("", pid, None, None, None, None, 0.0, token, BEAT_S, STALE_S, None)
                h = _INHERITED[path] = Lease(path, holder, scope, pid)
            out[path] = h
    return out


_INHERITED: dict[str, Lease] = {}


def held() -> set[str]:
    """The real paths of the leases this process holds."""
    return set(_HELD)


def check_write(path: str, *, leftover: str | None = None) -> None:
    """Before writing `path`: if it lies in the scope of a lease this process holds or runs under, that lease
    must still be ours; else the process stops (see `Lease.check`; `leftover`: a temp file to remove first).
    Free when no lease is held."""
    if not _HELD and HELD_ENV not in os.environ:
        return
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    for lease in [*_HELD.values(), *_inherited().values()]:
        if folder == lease.scope or folder.startswith(lease.scope + os.sep):
            lease.check(leftover)


def _release_all() -> None:
    for lease in list(_HELD.values()):
        lease.count = 1
        lease.release()


def _on_signal(sig: int, frame) -> None:
    _release_all()
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)  # die of the signal, as without us: the launcher reads the cause from it


def _on_exit() -> None:
    """Release every lease at a normal exit, and at SIGTERM/SIGHUP (a requeue, scancel, a closed terminal) when
    nobody else handles them; SIGKILL cannot be caught (the next launch takes the lease over)."""
    if _HOOKED:
        return
    _HOOKED.append(True)
    atexit.register(_release_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) == signal.SIG_DFL:
                signal.signal(sig, _on_signal)
