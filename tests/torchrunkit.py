"""Several runs under one torchrun: the ranks it starts call entry points' main(argv) one after the other, each run
in a process group of its own (a launch costs a torch import per process; a tiny run, a fraction of that)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A run closes its process group as it ends (destroy_process_group), which restarts the count that names the next
# default group; that name prefixes the group's keys in torchrun's store, and a second group named like the first
# would read the first one's stale addresses there and never meet: run k's group is named k.
SCRIPT = """import importlib, json, sys
sys.path[:0] = [{root!r}, {tests!r}]
from torch.distributed import distributed_c10d
{setup}
for k, (module, argv) in enumerate(json.load(open(sys.argv[1]))):
    distributed_c10d._world.group_count = k
    assert importlib.import_module(module).main(argv) == 0, (module, argv)
"""


def torchrun(folder, runs: list[tuple[str, list[str]]], setup: str = "", ranks: int = 2,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node ranks` of the (module, argv) `runs` in order, after the Python lines
    `setup`; one intra-op thread per rank. The script and its list are written into `folder`."""
    script, listing = os.path.join(folder, "torchrun_runs.py"), os.path.join(folder, "torchrun_runs.json")
    with open(script, "w") as f:
        f.write(SCRIPT.format(root=ROOT, tests=os.path.join(ROOT, "tests"), setup=setup))
    with open(listing, "w") as f:
        json.dump(runs, f)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), script,
           listing]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=timeout)
