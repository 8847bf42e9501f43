"""The GPU check's record: one verdict line per item printed and kept in OUT/gpu_check.json (rewritten whole after
each), files under OUT replaced atomically, and subprocess runs stopped with their process group at a time limit."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Callable

from infra import hardware

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Check:
    """The verdicts, printed one line each and kept in OUT/gpu_check.json, rewritten (atomically) after each."""

    def __init__(self, out: str, budget: float, meta: dict, clock: Callable[[], float] = time.monotonic,
                 started: float | None = None):
        self.out, self.budget, self.clock = out, budget, clock
        self.started = clock() if started is None else started
        self.record = {**meta, "budget_s": budget, "items": [], "finished": False}
        self.failed = 0
        os.makedirs(os.path.join(out, "logs"), exist_ok=True)
        self.save()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def verdict(self, ok: bool | None, item: str, detail: str = "", numbers: dict | None = None) -> None:
        self.failed += ok is False
        word = {True: "PASS", False: "FAIL", None: "SKIP"}[ok]
        detail = " ".join(detail.split())  # one line per item, whatever the message held
        print(f"{word}  {item}" + (f": {detail}" if detail else ""), flush=True)
        self.record["items"].append({"item": item, "verdict": word, "detail": detail, "at_s": round(self.elapsed()),
                                     "numbers": numbers or {}})
        self.save()

    def save(self) -> None:
        self.record["elapsed_s"] = round(self.elapsed(), 1)
        self.write("gpu_check.json", json.dumps(self.record, indent=1) + "\n")

    def write(self, name: str, text: str) -> None:
        """OUT/name replaced at once (temp file + rename): a check stopped at any moment leaves whole files."""
        path = os.path.join(self.out, name)
        with open(f"{path}.tmp", "w") as f:
            f.write(text)
        os.replace(f"{path}.tmp", path)

    def log(self, name: str) -> str:
        return os.path.join(self.out, "logs", f"{name}.log")

    def run(self, cmd: list[str], log: str, limit: float, env: dict | None = None) -> tuple[int | None, float]:
        """(exit status, or None when stopped at `limit` seconds; seconds taken); the output goes to `log`."""
        start = time.time()
        base = {k: v for k, v in os.environ.items() if k != hardware.PIN}
        with open(log, "w") as out:  # a session of its own: spawned ranks and loader workers stop with it
            proc = subprocess.Popen(cmd, cwd=ROOT, env={**base, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=max(limit, 1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = None
        return rc, time.time() - start
