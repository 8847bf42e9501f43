"""The human log and progress bars that degrade to plain lines. Library code logs to the one project logger,
`logging.getLogger(LOGGER)`; `setup_log` gives it its handlers (stdout, and log.txt on the main rank) once per
process."""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm import tqdm

from infra import watchdog
from infra.paths import LOG

T = TypeVar("T")
STATS_EVERY_S = 1.0  # the bar's statistics cost a host sync: about once a second
LOGGER = "doublewin"  # the project logger's name


def setup_log(save_dir: str | None, is_main: bool) -> logging.Logger:
    """The project logger, set to write plain lines to stdout and save_dir/log.txt (appending, so resumed runs
    keep history); other ranks log warnings only, to stdout. Handlers of an earlier run in this process go."""
    log = logging.getLogger(LOGGER)
    for old in list(log.handlers):
        log.removeHandler(old)
        old.close()
    log.propagate = False
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(fmt)
    log.addHandler(out)
    if save_dir and is_main:
        os.makedirs(save_dir, exist_ok=True)
        # no lease check here: whoever takes the folder over replaces log.txt by a copy first (lease.refresh), so
        # the lines of a holder that lost it go to a file nobody reads
        fh = logging.FileHandler(os.path.join(save_dir, LOG))
        fh.setFormatter(fmt)
        log.addHandler(fh)
    return log


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, enabled: bool = True,
             stats: Callable[[], str] | None = None) -> Iterator[T]:
    """tqdm on a terminal; in a log file a line at about every 10% instead of a bar. `stats` (e.g. the running
    loss and accuracy) is shown beside the bar about once a second and on every log line; it is called only
    then, after the consumer has handled the item just yielded. Each item is progress for the watchdog."""
    if total is None:
        total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
    if not enabled:
        for item in iterable:
            watchdog.progress()
            yield item
        return
    if sys.stderr.isatty():
        bar = tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
        shown = time.monotonic()
        for item in bar:
            watchdog.progress()
            yield item
            if stats is not None and time.monotonic() - shown >= STATS_EVERY_S:
                bar.set_postfix_str(stats(), refresh=False)
                shown = time.monotonic()
        return
    step = max(1, (total or 10) // 10)
    start = time.time()
    for i, item in enumerate(iterable, 1):
        watchdog.progress()
        yield item
        if total and (i % step == 0 or i == total) and total >= 20:
            extra = f" {stats()}" if stats is not None else ""
            print(f"{desc}: {i}/{total} ({time.time() - start:.0f}s){extra}", file=sys.stderr, flush=True)
