"""The campaign's SLURM tests' kit: the `slurm` fixture (skips where no cluster answers, fails under
DOUBLEWIN_REQUIRE_SLURM=1), campaigns of trivial bash runs built in-process, fake SLURM commands on PATH (for
what cannot exist here: a scheduler that fails, GPUs), and node drain/resume on script/slurm_up.sh's cluster."""
from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time

import pytest

from campaign import spec

MOUNT = "/var/spool/doublewin-slurm/mount"  # script/slurm_up.sh: n2's jobs see it empty (a mount n2 lacks)
ON_N1_ONLY = os.path.join(MOUNT, "on-n1-only")


@functools.lru_cache(maxsize=None)
def slurm_reachable() -> str | None:
    """None when a SLURM controller answers, else why not; asked once per session (an absent controller takes
    sinfo about 9 s to tell)."""
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return "sbatch/sinfo not found"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo failed ({e})"
    if out.returncode != 0 or not out.stdout.strip():
        return f"sinfo: {(out.stderr or 'no nodes').strip().splitlines()[0]}"
    return None


@pytest.fixture
def slurm_cluster():
    why = slurm_reachable()
    if why:
        if os.environ.get("DOUBLEWIN_REQUIRE_SLURM") == "1":
            pytest.fail(f"DOUBLEWIN_REQUIRE_SLURM=1 but no SLURM cluster answers ({why}): run script/slurm_up.sh")
        pytest.skip(f"no SLURM cluster here ({why}); script/slurm_up.sh starts one (root)")
    wait_until("the jobs of earlier tests to leave the queue (they count against the QOS's submit limit)",
               lambda: not our_jobs(), 90, lambda: our_jobs())


def our_jobs() -> list[str]:
    """This user's jobs in the queue (pending, running or completing), as squeue prints them."""
    out = subprocess.run(["squeue", "-h", "-u", str(os.getuid()), "-o", "%i %T %N"], capture_output=True, text=True)
    return out.stdout.split("\n")[:-1] if out.returncode == 0 else [f"squeue failed: {out.stderr.strip()}"]


@pytest.fixture
def two_nodes(slurm_cluster):
    """script/slurm_up.sh's nodes n1 and n2 (other clusters: skipped); both resumed after the test."""
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True).stdout.split()
    if sorted(set(nodes)) != ["n1", "n2"]:
        pytest.skip(f"needs script/slurm_up.sh's nodes n1 and n2 (this cluster: {' '.join(sorted(set(nodes)))})")
    for node in ("n1", "n2"):
        resume(node)
    wait_until("n1 and n2 to be idle", lambda: node_states() == {"n1": "idle", "n2": "idle"}, 90, node_states)
    yield
    for node in ("n1", "n2"):
        resume(node)


def drain(node: str) -> None:
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=drain", "reason=doublewin-test"], check=True)


def resume(node: str) -> None:
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)


def finishing(save_dir: str, seconds: float = 1) -> tuple[str, ...]:
    """A run's command that sleeps, then writes a complete results.json (the run is done)."""
    results = shlex.quote(os.path.join(save_dir, "results.json"))
    return ("bash", "-c", f"sleep {seconds} && echo trained && echo '{{\"complete\": true}}' > {results}")


def holding(save_dir: str, seconds: float = 600) -> tuple[str, ...]:
    """A run's command that holds SAVE_DIR's lease as a training entry point does (released at exit and at
    SIGTERM/SIGHUP), appends "NODE TIME" to SAVE_DIR/starts.txt once it holds it, then trains for `seconds`."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (f"import os, sys, time; sys.path.insert(0, {root!r}); from training import savedir; "
            f"savedir.hold_save_dir({save_dir!r}); "
            f"open(os.path.join({save_dir!r}, 'starts.txt'), 'a').write("
            f"f\"{{os.environ.get('SLURMD_NODENAME', '-')}} {{time.time()}}\\n\"); time.sleep({seconds})")
    return (sys.executable, "-c", code)


def starts(save_dir: str) -> list[tuple[str, float]]:
    """(node, time) of each start of a `holding` run."""
    try:
        with open(os.path.join(save_dir, "starts.txt")) as f:
            return [(node, float(t)) for node, t in (line.split() for line in f if line.strip())]
    except OSError:
        return []


def campaign(root: str, n: int, command=finishing, inputs: tuple[str, ...] = ()) -> spec.Campaign:
    """n transfer runs r0..r{n-1} under root, each `command(save_dir)`."""
    runs = tuple(spec.Run(f"r{i}", "transfer", os.path.join(root, f"r{i}"), tuple(command(os.path.join(root, f"r{i}"))),
                          inputs=inputs) for i in range(n))
    return spec.Campaign(path=os.path.join(root, "trivial.toml"), root=root, runs=runs)


def fake(folder: str, name: str, body: str) -> str:
    """An executable `name` in folder (put it first on PATH) running the bash `body`."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write("#!/bin/bash\n" + body + "\n")
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def node_states() -> dict[str, str]:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True).stdout.split()
    return dict(zip(out[::2], out[1::2]))


def wait_until(what: str, check, seconds: float = 120, seen=None):
    """check()'s first true answer within `seconds`; else an AssertionError naming `what` (and what `seen()`
    says then, when given)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out after {seconds:g} s waiting for {what}" + (f": {seen()}" if seen else ""))
