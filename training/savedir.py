"""A run's SAVE_DIR: writable, the temp files of writes a kill cut short gone, config.json checked against the
run's settings, the lease that keeps a second process out for the whole run, and the RunFolder every write of the
run's files goes through."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Iterable

from infra import checkpoint, lease, leaseholder
from infra.checkpoint import to_json
from infra.paths import CONFIG, LEASE, LOG, METRICS
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


def hold_save_dir(save_dir: str) -> "RunFolder":
    """Hold SAVE_DIR's lease (`infra.leaseholder`, file SAVE_DIR/.lease) for the rest of this process's life, or
    refuse with one line naming the holder: two processes never train into one folder, whatever the filesystem
    does with flock. The processes --multiprocessing-distributed spawns run under it. A lease left by a killed run
    is taken over by the next launch: at once on the same machine, else once it has been silent for its bound.
    Taking it raises the fence (`lease.fence`, and the files appended to replaced by copies). Idempotent within
    one process."""
    path = os.path.join(save_dir, LEASE)
    if os.path.realpath(path) not in leaseholder.held():
        try:
            held = leaseholder.acquire(path, inherit=True)
            for name in (METRICS, LOG):
                lease.refresh(os.path.join(save_dir, name), held.tmp)
        except lease.LeaseHeld as e:
            holder = e.seen.who() if e.seen else "another process, which is taking over its stale lease right now"
            raise UserError(f"{save_dir} is in use by {holder}: a run is already training there (wait for it, or "
                            "stop it first; the lease of a killed run is taken over by the next launch)") from None
        except OSError as e:
            raise CheckpointError(f"{save_dir}: its lease {LEASE} cannot be written "
                                  f"({e.strerror or type(e).__name__}): choose a folder you can write to") from None
    return folder(save_dir)


class RunFolder:
    """SAVE_DIR as the process that trains into it writes it: every write of the run's files goes through here.
    Under the lease (this process's, or its parent's in a spawned rank) each write confirms the lease first and
    raises LeaseLost (exit 3) once it is someone else's; temp files go in the holder's fenced temp folder. Without
    a lease (a rank that does not write, a test) the writes are plain atomic ones."""

    def __init__(self, path: str, held: leaseholder.Lease | None) -> None:
        self.path, self.lease = path, held

    def save(self, obj, path: str, *, legacy_format: bool = False) -> None:
        """torch.save, atomically (`checkpoint.atomic_save`)."""
        checkpoint.atomic_save(obj, path, legacy_format=legacy_format, fence=self.lease)

    def write_json(self, path: str, obj) -> None:
        checkpoint.atomic_write_json(path, obj, fence=self.lease)

    def write_text(self, path: str, text: str) -> None:
        checkpoint.atomic_write_text(path, text, fence=self.lease)

    def write_bytes(self, path: str, data: bytes) -> None:
        checkpoint.atomic_write_bytes(path, data, fence=self.lease)

    def append_row(self, path: str, row: dict) -> None:
        """One JSON line appended (`checkpoint.append_jsonl`: opened, then the lease confirmed, then written)."""
        checkpoint.append_jsonl(path, row, fence=self.lease)


def folder(save_dir: str) -> RunFolder:
    """The RunFolder of SAVE_DIR for this process: under the lease it holds or runs under, if any."""
    return RunFolder(save_dir, leaseholder.covering(os.path.join(save_dir, LEASE)))


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
    folder(save_dir).write_json(path, config)
