"""Every file name a run writes, atomic writes, and torch-file loading with clear errors."""
from __future__ import annotations

import fcntl
import functools
import json
import os
import socket
import pickle
import tempfile
import time
import zipfile
from typing import Any, Iterable

import torch

from errors import CheckpointError, ConfigError, UserError

# ---------------------------------------------------------------------------- file names
CONFIG = "config.json"
METRICS = "metrics.jsonl"
LOG = "log.txt"
LOCK = ".lock"  # held (flock) by the process that trains into SAVE_DIR
EVALUATION = "evaluate.json"  # IMP -e/--evaluate: the loaded model's SA (and RA)
# downstream transfer
CHECKPOINT = "checkpoint.pth.tar"
SA_BEST = "model_SA_best.pth.tar"
RA_BEST = "model_RA_best.pth.tar"
RESULTS = "results.json"
INDICES = "train_indices.json"
CURVES = "curves.png"


def imp_checkpoint(save_dir: str, level: int) -> str:
    return os.path.join(save_dir, f"{level}-checkpoint.pth.tar")


def imp_best(save_dir: str, level: int) -> str:
    return os.path.join(save_dir, f"{level}-model_best.pth.tar")


def imp_ticket(save_dir: str, level: int) -> str:
    return os.path.join(save_dir, f"{level}-ticket.pth.tar")


def imp_sparsity(save_dir: str, level: int) -> str:
    return os.path.join(save_dir, f"{level}-sparsity.json")


# ---------------------------------------------------------------------------- atomic writes
def writable_dir(path: str, *, flag: str = "--save_dir") -> None:
    """Create `path` if needed and prove a file can be written there, before any work is done."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CheckpointError(f"{flag} {path} cannot be written ({e.strerror or type(e).__name__}): "
                              "choose a folder you can write to") from None


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


@functools.cache
def _umask() -> int:
    umask = os.umask(0o022)  # reading the umask means setting it; done once, and set straight back
    os.umask(umask)
    return umask


def _file_mode(path: str) -> int:
    """The mode of the file being replaced, else what a plain open() gives a new file (mkstemp makes 0600)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return 0o666 & ~_umask()


def _write_failed(path: str, e: OSError) -> CheckpointError:
    return CheckpointError(f"could not write {path} ({e.strerror or type(e).__name__}); the previous version, if "
                           "any, is intact: free space or fix the folder, then re-run the same command to resume")


def _atomic(path: str, write, mode: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), _file_mode(path))
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):  # disk full, folder gone or read-only: the user's to fix, not a bug
            raise _write_failed(path, e) from None
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_save(obj: Any, path: str, *, legacy_format: bool = False) -> None:
    """torch.save to a temp file in the same folder, fsync, rename: a crash never leaves half a file.

    `legacy_format` writes torch's pre-1.6 serialisation, which the original code's PyTorch 1.5 can read.
    """
    _atomic(path, lambda f: torch.save(obj, f, _use_new_zipfile_serialization=not legacy_format), "wb")


def atomic_write_bytes(path: str, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data), "wb")


def atomic_write_text(path: str, text: str) -> None:
    _atomic(path, lambda f: f.write(text), "w")


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def append_jsonl(path: str, row: dict) -> None:
    """Append one JSON line and fsync it. A torn last line (a crash mid-write) is skipped by `read_jsonl`, and
    the next row starts on a line of its own rather than being glued to the torn one."""
    line = json.dumps(row, sort_keys=True, default=_json_default) + "\n"
    try:
        with open(path, "a+b") as f:
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = "\n" + line
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise _write_failed(path, e) from None


def read_jsonl(path: str) -> list[dict]:
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # torn final line from a crash
    return rows


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


# ---------------------------------------------------------------------------- loading
def load_file(path: str, *, trusted: bool = False, map_location: Any = "cpu") -> Any:
    """torch.load with weights_only=True unless `trusted`; every failure is one CheckpointError line."""
    return _load(path, trusted, map_location, own=False)


def load_own(path: str, *, map_location: Any = "cpu") -> Any:
    """A file a run finds in its own SAVE_DIR to continue from: never unpickled, whatever --trust-pickle says
    (this code writes plain tensors and values only); an unreadable one is answered with --restart."""
    return _load(path, False, map_location, own=True)


def _load(path: str, trusted: bool, map_location: Any, *, own: bool) -> Any:
    if not path or not os.path.isfile(path):
        raise CheckpointError(f"{path!r} not found: check the path (a file written by torch.save is expected)")
    remedy = "pass --restart to start this run over" if own else "re-create or re-download it"
    try:
        return torch.load(path, map_location=map_location, weights_only=not trusted)
    except pickle.UnpicklingError as e:
        if not trusted and "weights_only" in str(e):
            if own:
                raise CheckpointError(f"{path} holds Python objects beyond tensors and plain values, so this code "
                                      f"did not write it and it was not unpickled: {remedy}") from None
            raise CheckpointError(
                f"{path} holds Python objects beyond tensors and plain values, so it was not unpickled; "
                "if you trust this file, pass --trust-pickle to load it fully") from None
        raise CheckpointError(f"{path} is corrupt or not a torch file ({_first_line(e)}); {remedy}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({_first_line(e)}); {remedy}") from None


def _first_line(e: BaseException) -> str:
    """The first sentence of an exception's message (torch's loader errors run on for several)."""
    text = str(e).strip().splitlines()
    return text[0].split(". ")[0][:200] if text else type(e).__name__


def strip_prefix(state_dict: dict, prefix: str = "module.") -> dict:
    """Drop a DataParallel/DDP `module.` prefix when every key carries it."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


# ---------------------------------------------------------------------------- run config
def check_config(save_dir: str, config: dict, *, restart: bool, volatile: Iterable[str] = (),
                 implied: dict | None = None, fixed: Iterable[str] = ()) -> None:
    """Refuse to mix configurations in one SAVE_DIR; `restart` (the --restart flag) overwrites config.json.

    Keys in `volatile` (e.g. print frequency, worker count) may differ between runs of the same experiment.
    `implied` gives, for settings added after a run may have started, the value such a run had without
    recording it (e.g. {"fused_sgd": False}): an older run then continues when given the flags that reproduce
    its behaviour, and is refused otherwise, with that value named in the message. Keys in `fixed` are recorded
    behaviour no flag selects (e.g. how each epoch is seeded): an older run that differs there cannot continue.
    """
    path = os.path.join(save_dir, CONFIG)
    config = json.loads(json.dumps(config, default=_json_default))
    if os.path.exists(path) and not restart:
        with open(path) as f:
            try:
                old = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ConfigError(f"{path} is not valid JSON ({e}), so the run's settings are unknown: repair it, "
                                  "or pass --restart to start over there") from None
        if isinstance(old, dict):
            skip = set(volatile)
            unrecorded = sorted(k for k in (implied or {}) if k not in old)
            old = {**(implied or {}), **old}
            keys = sorted(k for k in set(old) | set(config) if k not in skip and old.get(k) != config.get(k))
            if keys:
                shown = ", ".join(f"{k} ({old.get(k)!r} -> {config.get(k)!r})" for k in keys[:6])
                older = [k for k in keys if k in unrecorded and k not in set(fixed)]
                frozen = [k for k in keys if k in set(fixed)]
                hint = f" ({', '.join(older)}: not recorded by that older run, which ran as shown; give the " \
                       "flags that select those values to continue it)" if older else ""
                hint += f" ({', '.join(frozen)}: no flag selects the earlier behaviour, so that run cannot " \
                        "continue exactly)" if frozen else ""
                raise ConfigError(
                    f"{save_dir} holds a run with other settings: {shown}{hint}; use another --save_dir, "
                    "or pass --restart to start over there")
    atomic_write_json(path, config)
