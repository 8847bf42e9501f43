"""A run's SAVE_DIR before the run writes: writable, the temp files of writes a kill cut short gone, config.json
checked against the run's settings, and the lock that keeps a second process out for the whole run."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
import time
from typing import Iterable

from infra.checkpoint import CONFIG, LOCK, atomic_write_json, to_json
from infra.errors import CheckpointError, ConfigError, UserError, node_error

FORMAT = 2  # of the run folder (config.json and the files beside it); a folder of another format is refused


def writable_dir(path: str, *, flag: str = "--save_dir") -> None:
    """Create `path` if needed and prove a file can be written there, before any work is done."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:  # a full disk, a failing mount: the machine's (exit 3); a read-only folder: the user's
        raise node_error(path, e, f"{flag}: writing to", after="then re-run the same command") or CheckpointError(
            f"{flag} {path} cannot be written ({e.strerror or type(e).__name__}): choose a folder you can write "
            "to") from None


def remove_temp_files(save_dir: str) -> list[str]:
    """Delete what writes cut short by a kill left behind (`.<name>.<random>.tmp`, up to a checkpoint's size
    each); call it before a run starts writing. Returns the names removed."""
    if not os.path.isdir(save_dir):
        return []
    names = sorted(n for n in os.listdir(save_dir) if n.startswith(".") and n.endswith(".tmp"))
    for name in names:
        os.remove(os.path.join(save_dir, name))
    return names


_HELD: dict[str, object] = {}  # realpath -> open lock file, kept open for the life of the process


def hold_save_dir(save_dir: str) -> None:
    """Take SAVE_DIR/.lock (flock) for the rest of this process's life, or refuse with one line naming the
    holder: two processes never train into one folder. The OS drops the lock when the process dies, so a run
    re-started after a crash or a requeue takes it normally. Idempotent within one process."""
    key = os.path.realpath(save_dir)
    if key in _HELD:
        return
    path = os.path.join(save_dir, LOCK)
    f = open(path, "a+")
    for attempt in range(5):  # a few tries: `sweep.py status` probes the lock for an instant
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            time.sleep(0.1 * (attempt < 4))
    else:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise UserError(f"{save_dir} is in use by {holder}: a run is already training there (wait for it, or "
                        "stop it first; a killed run releases it)") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    _HELD[key] = f


def check_config(save_dir: str, config: dict, *, restart: bool, free: Iterable[str] = ()) -> None:
    """Refuse to mix configurations in one SAVE_DIR; `restart` (the --restart flag) overwrites config.json.

    config.json records the run-folder FORMAT: a folder of another format is refused whole. Keys in `free`
    (settings that cannot change a result: progress display, worker count, the process layout...) may differ
    between runs of one experiment; any other difference is refused, naming each differing setting.
    """
    path = os.path.join(save_dir, CONFIG)
    config = json.loads(json.dumps({"format": FORMAT, **config}, default=to_json))
    if os.path.exists(path) and not restart:
        with open(path) as f:
            try:
                old = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ConfigError(f"{path} is not valid JSON ({e}), so the run's settings are unknown: repair it, "
                                  "or pass --restart to start over there") from None
        if not isinstance(old, dict) or old.get("format") != FORMAT:
            raise ConfigError(f"{save_dir} holds a run of an older run-folder format (not {FORMAT}), which this "
                              "version cannot continue: pass --restart to start over there, or use another --save_dir")
        skip = set(free)
        keys = sorted(k for k in set(old) | set(config) if k not in skip and old.get(k) != config.get(k))
        if keys:
            shown = ", ".join(f"{k} ({old.get(k)!r} -> {config.get(k)!r})" for k in keys)
            raise ConfigError(f"{save_dir} holds a run with other settings: {shown}; use another --save_dir, "
                              "or pass --restart to start over there")
    atomic_write_json(path, config)
