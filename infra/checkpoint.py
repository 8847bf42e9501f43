"""Atomic writes, and torch-file loading with clear errors (the file names: infra/paths.py). torch is imported only
by the functions that write or read torch files, so the campaign tool writes its JSON here without importing it."""
from __future__ import annotations

import functools
import json
import os
import pickle
import stat
import struct
import sys
import tempfile
import zipfile
from typing import Any

from infra import leaseholder, torchfiles
from infra.errors import CheckpointError, UserError, node_error

# ---------------------------------------------------------------------------- atomic writes
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


def _write_failed(path: str, e: OSError) -> UserError:
    """A full disk or quota, a failing mount or server, a filesystem gone read-only: the machine's (NodeError,
    exit 3); any other (a folder removed or made unwritable): the user's to fix."""
    intact = "the previous version, if any, is intact; then re-run the same command to resume"
    return node_error(path, e, "writing", was_writable=True, after=intact) or CheckpointError(
        f"could not write {path} ({e.strerror or type(e).__name__}); the previous version, if any, is intact: "
        "fix the folder, then re-run the same command to resume")


def _read_failed(path: str, e: OSError) -> UserError | None:
    return node_error(path, e, "reading")


def exists(path: str, kind: str = "file") -> bool:
    """os.path.isfile / isdir (`kind` "file" or "dir") that does not hide the machine's faults: a stale handle
    or an I/O error is a NodeError naming the path, not a file that seems missing."""
    try:
        st = os.stat(path)
    except OSError as e:
        err = _read_failed(path, e)
        if err is not None:
            raise err from None
        return False
    return stat.S_ISDIR(st.st_mode) if kind == "dir" else stat.S_ISREG(st.st_mode)


def _atomic(path: str, write, mode: str, fence: "leaseholder.Lease | None" = None) -> None:
    """Write through a temp file, fsync, rename. Inside the folder of a lease this process holds or runs under
    (`fence`, else the one `leaseholder.covering` finds), the lease is checked first and the temp file goes in the
    holder's own temp folder: once another process has taken the lease over, that folder is gone and the rename
    fails, so the write raises LeaseLost (exit 3) and changes nothing."""
    folder = os.path.dirname(os.path.abspath(path))
    fence = fence or leaseholder.covering(path)
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        if fence is not None:
            fence.check()
        fd, tmp = _mkstemp(path, folder, fence)
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), _file_mode(path))
            os.fsync(f.fileno())
        if fence is not None:
            fence.check()
        _replace(tmp, path, fence)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):  # the machine's (a full disk, a failing mount) or the user's to fix, never a bug
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


def _mkstemp(path: str, folder: str, fence: "leaseholder.Lease | None") -> tuple[int, str]:
    """A temp file for `path`: in the holder's temp folder under a lease (never re-created: fenced means lost)."""
    prefix = f".{os.path.basename(path)}."
    if fence is None:
        return tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    try:
        return tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=fence.tmp)
    except FileNotFoundError:
        raise fence.lost_error() from None


def _replace(tmp: str, path: str, fence: "leaseholder.Lease | None") -> None:
    ino = None
    try:
        ino = os.stat(tmp).st_ino
        os.replace(tmp, path)
    except FileNotFoundError:
        if fence is not None and not os.path.isdir(fence.tmp):
            raise fence.lost_error() from None  # our temp folder was renamed away: the lease is someone else's
        try:
            if ino is not None and os.stat(path).st_ino == ino:
                return  # NFS: a retransmitted RENAME whose first one worked answers ENOENT
        except OSError:
            pass
        raise


def atomic_save(obj: Any, path: str, *, legacy_format: bool = False, fence=None) -> None:
    """torch.save to a temp file, fsync, rename: a crash never leaves half a file (see `_atomic`).

    `legacy_format` writes torch's pre-1.6 serialisation, which the original code's PyTorch 1.5 can read.
    """
    import torch
    _atomic(path, lambda f: torch.save(obj, f, _use_new_zipfile_serialization=not legacy_format), "wb", fence)


def atomic_write_bytes(path: str, data: bytes, *, fence=None) -> None:
    _atomic(path, lambda f: f.write(data), "wb", fence)


def atomic_write_text(path: str, text: str, *, fence=None) -> None:
    _atomic(path, lambda f: f.write(text), "w", fence)


def atomic_write_json(path: str, obj: Any, *, fence=None) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=to_json) + "\n", fence=fence)


def append_jsonl(path: str, row: dict, *, fence=None) -> None:
    """Append one JSON line and fsync it. A torn last line (a crash mid-write) is skipped by `read_jsonl`, and
    the next row starts on a line of its own rather than being glued to the torn one. Under a lease (`fence`,
    else the one covering `path`) the file is opened first and the lease confirmed after: a taker replaces the
    files appended to (`lease.refresh`), so a row of a holder that lost the lease lands in a file nobody reads."""
    line = json.dumps(row, sort_keys=True, default=to_json) + "\n"
    fence = fence or leaseholder.covering(path)
    try:
        with open(path, "a+b") as f:
            if fence is not None:
                fence.check(fresh=True)
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
    try:
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # torn final line from a crash
    except FileNotFoundError:
        return rows
    except OSError as e:
        raise _read_failed(path, e) or e from None
    return rows


def to_json(o: Any) -> Any:
    """json.dumps' `default`: tensors as lists, sets and tuples as lists, anything else as its str."""
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    if torch is not None and isinstance(o, torch.Tensor):
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
    import torch

    if not path or not exists(path):
        raise CheckpointError(f"{path!r} not found: check the path (a file written by torch.save is expected)")
    remedy = "pass --restart to start this run over" if own else "re-create or re-download it"
    try:
        return torch.load(path, map_location=map_location, weights_only=not trusted)
    except pickle.UnpicklingError as e:
        refused = not trusted and "weights_only" in str(e)
        if refused and not torchfiles.refused_an_object(e, path):  # a broken file, worded by torch as a refusal
            raise CheckpointError(f"{path} is truncated or corrupt ({_first_line(e.__context__ or e)}); {remedy}") \
                from None
        if refused:
            if own:
                raise CheckpointError(f"{path} holds Python objects beyond tensors and plain values, so this code "
                                      f"did not write it and it was not unpickled: {remedy}") from None
            raise CheckpointError(
                f"{path} holds Python objects beyond tensors and plain values, so it was not unpickled; "
                "if you trust this file, pass --trust-pickle to load it fully") from None
        raise CheckpointError(f"{path} is corrupt or not a torch file ({_first_line(e)}); {remedy}") from None
    except OSError as e:
        err = _read_failed(path, e)
        if err is None:  # not the machine's fault: torch's zip reader meets a cut file this way too
            broken = "cannot be read" if torchfiles.pickles_whole(path) else "is truncated or corrupt"
            err = CheckpointError(f"{path} {broken} ({_first_line(e)}); {remedy}")
        raise err from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, IndexError, struct.error) as e:
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
