"""User-facing errors and the CLI wrapper that turns them into one-line messages.

Bad input raises a `UserError` subclass; `run_cli` prints `error: <message>` and exits 2 (3 for a `NodeError`:
the machine, not the input, is at fault; 4 for a `StorageError`: the disk is full or the quota used up).
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Callable, NoReturn


class UserError(Exception):
    """Bad input from the user: reported as one line, without a traceback, and exit status 2."""

    exit_status = 2


class NodeError(UserError):
    """This machine cannot run what was asked of it (a GPU it was given that CUDA cannot use, a disk or file
    server that fails, a full disk): one line, exit status 3, so that a scheduler tries the run again elsewhere
    rather than calling the input wrong."""

    exit_status = 3


class StorageError(NodeError):
    """The disk is full or the quota used up: the machine's fault, but one that every node sharing the disk meets
    alike. Exit status 4, so that a scheduler blames no node for it (and retrying elsewhere would not help)."""

    exit_status = 4


# errno values that report a fault of the machine (its disks, mounts, file servers), never of the input, with
# what to do about them; everything else (a missing file, a permission) is the input's
_SERVER = "the disk, mount or file server failed, not the input: have it checked or run elsewhere"
MACHINE_ERRNOS = {
    errno.ESTALE: "the file server no longer knows the file: remount, or run elsewhere",
    **dict.fromkeys((errno.EIO, errno.ENOTCONN, errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ENETDOWN,
                     errno.ENETUNREACH, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.ENOLINK,
                     errno.ECOMM, errno.EREMOTEIO), _SERVER),
    errno.ENOSPC: "the disk is full: free space",
    errno.EDQUOT: "the disk quota is used up: free space or raise the quota",
}
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # StorageError's: no node is to blame
# a read-only filesystem is the machine's fault only where the run could write before (a mount that went
# read-only after disk errors); a folder that never was writable is the user's choice of folder
READ_ONLY = "the filesystem went read-only (often after disk errors): have it fixed or write elsewhere"


def machine_fault(e: BaseException, *, was_writable: bool = False) -> str | None:
    """What fault of the machine an OSError reports, with what to do (one clause), or None when it is not the
    machine's. `was_writable`: the path was written before, so a read-only filesystem (EROFS) is a fault too."""
    if not isinstance(e, OSError) or e.errno is None:
        return None
    if e.errno == errno.EROFS:
        return READ_ONLY if was_writable else None
    return MACHINE_ERRNOS.get(e.errno)


def node_error(path: str, e: BaseException, doing: str, *, was_writable: bool = False,
               after: str = "then re-run the same command to resume") -> NodeError | None:
    """The one-line NodeError for an OSError met `doing` something to `path` ("reading", "writing") that is the
    machine's fault: it names the path, the fault and what to do; None when the fault is not the machine's."""
    fault = machine_fault(e, was_writable=was_writable)
    if fault is None:
        return None
    kind = StorageError if e.errno in STORAGE_ERRNOS else NodeError
    return kind(f"{doing} {path} failed ({e.strerror or errno.errorcode.get(e.errno, e.errno)}): {fault}; "
                     f"{after}")


class DataError(UserError):
    """A dataset folder or file is missing or malformed."""


class MaskError(UserError):
    """A pruning mask or ticket does not match the model or holds no masks."""


class CheckpointError(UserError):
    """A checkpoint file is missing, corrupt, or needs untrusted unpickling."""


class ConfigError(UserError):
    """Flags conflict with each other or with the run's saved config.json."""


class NonFiniteLossError(UserError):
    """Training produced a NaN or infinite loss."""


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> NoReturn:
    try:
        code = main(argv)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(e.exit_status)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code or 0)


def one_line(e: BaseException) -> str:
    """The message of a UserError; one raised in a DataLoader worker arrives as torch's multi-line "Caught
    DataError in DataLoader worker process 0. Original Traceback ...": its last line holds the message."""
    text = str(e)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        return last.split(": ", 1)[1] if last.startswith(type(e).__module__ + ".") and ": " in last else last
    return text


class OneLineParser(argparse.ArgumentParser):
    """Reports a bad flag as one `error:` line and exit status 2, as run_cli does for other bad input
    (argparse's usage block would bury the one line that matters)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see --help)\n")


def env_seconds(name: str, default: float, what: str = "") -> float:
    """A duration in seconds from the environment variable `name` (`default` when unset or blank), refused in one
    line unless a number above 0; `what` says what it bounds."""
    text = os.environ.get(name, "")
    try:
        value = float(text) if text.strip() else default
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UserError(f"{name}={text!r}: expected a number of seconds above 0" + (f" ({what})" if what else ""))
    return value
