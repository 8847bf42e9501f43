"""User-facing errors and the CLI wrapper that turns them into one-line messages.

Bad input raises a `UserError` subclass; `run_cli` prints `error: <message>` and exits 2 (3 for a `NodeError`:
the machine, not the input, is at fault).
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn


class UserError(Exception):
    """Bad input from the user: reported as one line, without a traceback, and exit status 2."""

    exit_status = 2


class NodeError(UserError):
    """This machine cannot run what was asked of it (a GPU it was given that CUDA cannot use): one line, exit
    status 3, so that a scheduler tries the run again elsewhere rather than calling the input wrong."""

    exit_status = 3


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
