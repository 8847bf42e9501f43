"""The lease protocol: exclusive ownership of a folder through a lease file, on any filesystem a cluster may give
us; how a lease is written, read, judged stale, taken, and how a taker fences the holder it replaced. Holding a
lease (its heartbeat, checks before writes, release) is `infra.leaseholder`'s.

flock cannot decide who owns a run folder: on Lustre with `localflock`, NFS with `nolock` or `local_lock=flock`,
or BeeGFS without global locks each node sees only its own locks; NFSv3 without lockd and Lustre `noflock` refuse
it (ENOLCK, ENOSYS); and a dead node's NFS lock outlives it. A lease needs only what NFS and Lustre honour: a file
created exclusively (its content written to a uniquely named file first, then `os.link`ed to the lease's name; a
retransmitted LINK answered EEXIST is recognised as our own) and an atomic rename.

- The lease (JSON) names its holder: host, pid and the pid's start time (a reused pid is not the holder), boot
  and pid namespace, SLURM job, start time, a random token, the holder's heartbeat interval and stale bound, and
  its folder's path and inode. The holder touches it every `beat_s` seconds.
- Stale: on this machine, its process gone (or its pid reused), or its heartbeat older than its bound (one
  clock stamps both); a folder whose path and inode both differ from the lease's own (a copied run folder: one
  alone changes when a folder is moved, or when Lustre migration, 32-bit inode clients or FUSE renumber it); or
  no heartbeat for longer than the holder's bound (`DOUBLEWIN_LEASE_STALE_S`, default 600 s) as THIS reader
  watched it: its content and mtime unchanged for that long on the reader's own monotonic clock, so no node's
  clock matters. A reader that has not watched a lease from another node yet (`plan`, `status`) judges by its
  mtime against the filesystem's clock (a probe file), which can be wrong where the filesystem stamps times with
  skewed client clocks (Lustre, GPFS): such a judgement is not `sure`, and a taker watches the lease for the
  bound before it takes it over.
- A stale lease is taken over atomically, with one winner however many processes try at once: the taker first
  creates `<lease>.take-<stale token>.<n>` exclusively, then checks, under it, that the lease is still the same
  stale one (by token) before renaming its own over it. A takeover file older than `TAKE_S` (a taker that died
  half-way) is passed by creating the next `n`.
- The fence: a holder writes its temp files in `<scope>/.tmp-<its token>/` only (created when the lease is taken,
  never re-created), and whoever takes the lease renames every other holder's temp folder away, so a stale holder
  that wakes cannot rename a file into place (ENOENT); files it appends to are replaced by copies (`refresh`), so
  a descriptor it kept open writes to a file nobody reads.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass

from infra.errors import UserError, env_seconds

STALE_ENV, BEAT_ENV = "DOUBLEWIN_LEASE_STALE_S", "DOUBLEWIN_LEASE_BEAT_S"
STALE_S, BEAT_S = 600.0, 30.0  # defaults: 20 heartbeats may be missed (a slow metadata server) before a takeover
TAKE_S = 30.0  # a takeover takes milliseconds: a takeover file this old belongs to a taker that died
TEMP = ".tmp-"  # <scope>/.tmp-<token>/: the holder's temp files (the fence)


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
    dir_ino: int | None    # the inode of the lease's folder, and its real path: a folder that differs in both is
    dir_path: str | None = None  # a copy, whose lease is not about it

    def describe(self) -> str:
        """e.g. "pid 123 on n2 (job 45_3, since 2024-05-01 12:00:00)"."""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} on {self.host} ({f'job {self.job}, ' if self.job else ''}since {since})"


@dataclass(frozen=True)
class Seen:
    """A lease as a reader finds it: its holder (None: unreadable), the age of its last heartbeat on the
    filesystem's clock, whether it is stale (with why), and whether that judgement is sure (see the module)."""
    holder: Holder | None
    age_s: float
    stale: bool
    why: str = ""    # stale: "no heartbeat for 14 min" or "its process (pid 12) is gone"
    ident: str = ""  # the token, or the file's identity when unreadable: what a takeover re-checks
    sure: bool = True
    mtime: float = 0.0  # the lease file's mtime (its last heartbeat, on the holder's filesystem clock)

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
    out = [env_seconds(BEAT_ENV, BEAT_S), env_seconds(STALE_ENV, STALE_S)]
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
    return Holder(host=socket.gethostname(), pid=os.getpid(), pid_start=_pid_start(os.getpid()),
                  boot=_read("/proc/sys/kernel/random/boot_id"), pidns=_pidns(), job=slurm_job(), since=time.time(),
                  token=secrets.token_hex(16), beat_s=beat_s, stale_s=stale_s, dir_ino=os.stat(folder).st_ino,
                  dir_path=os.path.realpath(folder))


def clock() -> float:
    """This machine's seconds that also pass while the process is stopped or the machine sleeps."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


# ---------------------------------------------------------------------------- reading a lease
def _parse(text: str | None) -> Holder | None:
    try:
        data = json.loads(text or "")
        fields = Holder.__dataclass_fields__
        return Holder(**{k: data[k] for k in fields if k in data or fields[k].default is not None})
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


# what this process has watched: lease realpath -> (its signature, reader clock when first seen so, seen to change)
_WATCHED: dict[str, tuple[tuple, float, bool]] = {}


def _watch(path: str, signature: tuple) -> tuple[float, bool]:
    """(seconds on this reader's clock the lease has been seen unchanged, whether it was ever seen to change)."""
    now, key = clock(), os.path.realpath(path)
    old = _WATCHED.get(key)
    if old is None or old[0] != signature:
        _WATCHED[key] = (signature, now, old is not None)
        return 0.0, old is not None
    return now - old[1], old[2]


def _open(path: str) -> tuple[os.stat_result, str | None] | None:
    """The lease's attributes and text, opened first and then fstat'ed (fresh attributes on NFS: close-to-open),
    None when there is none; the text is None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError:
        try:
            return os.stat(path), None
        except OSError:
            return None
    try:
        st = os.fstat(fd)
        try:
            with os.fdopen(os.dup(fd), "r") as f:
                return st, f.read()
        except (OSError, UnicodeDecodeError):
            return st, None
    finally:
        os.close(fd)


def look(path: str) -> Seen | None:
    """The lease at `path` as it is now, None when there is none. Never raises: a lease that cannot be read is
    judged by its age alone (against the default bound). Each call also watches the lease (see the module)."""
    found = _open(path)
    if found is None:
        return None
    st, text = found
    folder = os.path.dirname(path) or "."
    holder = _parse(text)
    age = max(0.0, fs_now(folder) - st.st_mtime)
    stale_s = holder.stale_s if holder else STALE_S
    ident = holder.token if holder else f"ino{st.st_ino}"
    unchanged, changed = _watch(path, (ident, st.st_ino, st.st_mtime_ns, st.st_size))

    def seen(stale: bool, why: str = "", sure: bool = True) -> Seen:
        return Seen(holder, age, stale, why, ident, sure, st.st_mtime)

    if holder and _copied(holder, folder):
        return seen(True, "it was copied here from another folder")
    alive = _alive_here(holder) if holder else None
    if alive is False:
        return seen(True, f"its process (pid {holder.pid}) is gone")
    if unchanged > stale_s:
        return seen(True, f"no heartbeat seen for {duration(unchanged)}")
    if (alive or not changed) and age > stale_s:  # its mtime and our probe's: one clock when the holder runs here
        return seen(True, f"no heartbeat for {duration(age)}", sure=bool(alive))
    return seen(False)


def _copied(h: Holder, folder: str) -> bool:
    """Whether the lease's folder is a copy of the holder's: its inode AND its path differ from the lease's."""
    try:
        ino, real = os.stat(folder).st_ino, os.path.realpath(folder)
    except OSError:
        return False
    return h.dir_ino is not None and h.dir_path is not None and h.dir_ino != ino and h.dir_path != real


def duration(s: float) -> str:
    return f"{s:.2g} s" if s < 10 else f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


# ---------------------------------------------------------------------------- taking a lease
def _write_new(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _ours(path: str, tmp: str, token: str) -> bool:
    """After a failed LINK: whether it did link (NFS answers a retransmitted LINK whose first reply was lost with
    EEXIST or another error): our temp file has 2 links, or the lease carries our token."""
    try:
        if os.stat(tmp).st_nlink == 2:
            return True
    except OSError:
        pass
    holder = _parse(_read(path))
    return holder is not None and holder.token == token


def _link_new(path: str, data: bytes, token: str) -> bool:
    """Create the lease with its whole content at once: True if it is ours, False if one exists."""
    tmp = f"{path}.{token}.new"
    _write_new(tmp, data)
    try:
        os.link(tmp, path)
        return True
    except OSError as e:
        if _ours(path, tmp, token):
            return True
        if isinstance(e, FileExistsError):
            return False
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
    finally:
        _unlink(tmp)
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


def _watch_until_sure(path: str, seen: Seen) -> Seen | None:
    """A lease stale by the filesystem's clock only: watch it (this reader's clock) until it changes (live), goes,
    or has been seen unchanged for its bound (stale, sure)."""
    bound = seen.holder.stale_s if seen.holder else STALE_S
    print(f"{path}: the lease of {seen.who()} looks stale ({seen.why}); watching it for up to {duration(bound)} "
          "to be sure its holder is silent", file=sys.stderr, flush=True)
    step = min(1.0, (seen.holder.beat_s if seen.holder else BEAT_S) / 2)
    while seen is not None and seen.stale and not seen.sure:
        time.sleep(step)
        seen = look(path)
    return seen


def take(path: str, holder: Holder) -> None:
    """Create the lease at `path` for `holder`, taking a stale one over; raises LeaseHeld naming a live holder."""
    data = (json.dumps(asdict(holder), indent=1, sort_keys=True) + "\n").encode()
    for attempt in range(10):  # a winner needs milliseconds: the others then see its live lease
        if _link_new(path, data, holder.token):
            break
        seen = look(path)
        if seen is not None and seen.stale and not seen.sure:
            seen = _watch_until_sure(path, seen)
        if seen is not None and not seen.stale:
            raise LeaseHeld(path, seen)
        if seen is not None and _take_over(path, seen, data, holder.token):
            break
        time.sleep(0.05 * min(attempt + 1, 4))
    else:
        raise LeaseHeld(path, None)
    try:
        _clean_new_files(path, holder.token)
    except OSError:
        pass


def _clean_new_files(path: str, token: str) -> None:
    """Content files a process killed half-way through acquiring left (`<lease>.<token>.new`), older than the
    takeover bound."""
    folder, base = os.path.split(path)
    now = fs_now(folder or ".")
    for name in os.listdir(folder or "."):
        if name.startswith(base + ".") and name.endswith(".new") and token not in name:
            if now - os.stat(os.path.join(folder, name)).st_mtime > TAKE_S:
                _unlink(os.path.join(folder, name))


# ---------------------------------------------------------------------------- the fence
def temp_dir(scope: str, token: str) -> str:
    """The folder where the holder with `token` writes its temp files before renaming them into `scope`."""
    return os.path.join(scope, TEMP + token)


def fence(scope: str, token: str) -> list[str]:
    """Just after taking the lease of `scope`: rename every other holder's temp folder away (one by-name
    operation on the server: a stale holder's rename from it then fails), delete it, and make ours. Returns the
    tokens fenced."""
    fenced = []
    for name in os.listdir(scope):
        if name.startswith(TEMP) and name != TEMP + token and "." not in name[len(TEMP):]:
            away = os.path.join(scope, f".fenced-{secrets.token_hex(8)}")
            try:
                os.rename(os.path.join(scope, name), away)
            except FileNotFoundError:
                continue
            fenced.append(name[len(TEMP):])
            shutil.rmtree(away, ignore_errors=True)
    for name in os.listdir(scope):
        if name.startswith(".fenced-"):
            shutil.rmtree(os.path.join(scope, name), ignore_errors=True)
    os.makedirs(temp_dir(scope, token), exist_ok=True)
    return fenced


def refresh(path: str, tmp_folder: str) -> None:
    """Replace the file `path` (one appended to) by a copy of itself, so that a descriptor a stale holder kept
    open writes to a file nobody reads any more."""
    try:
        with open(path, "rb") as src:
            fd, name = _mkstemp(tmp_folder)
            with os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
                os.fchmod(dst.fileno(), os.fstat(src.fileno()).st_mode & 0o777)
                dst.flush()
                os.fsync(dst.fileno())
    except FileNotFoundError:
        return
    os.replace(name, path)


def _mkstemp(folder: str) -> tuple[int, str]:
    name = os.path.join(folder, f"{secrets.token_hex(8)}.tmp")
    return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), name
