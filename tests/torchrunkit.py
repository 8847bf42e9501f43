"""Several runs under one torchrun: the ranks it starts call entry points' main(argv) one after the other, each run
in a process group of its own (a launch costs a torch import per process; a tiny run, a fraction of that)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Between runs the ranks leave the group and meet again at a store of rank 0's on a port it chose: a second group
# at torchrun's own store would read the first one's addresses there (its keys keep their names) and never meet.
SCRIPT = """import importlib, json, os, socket, sys
sys.path[:0] = [{root!r}, {tests!r}]
import torch.distributed as dist
{setup}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


for module, argv in json.load(open(sys.argv[1])):
    assert importlib.import_module(module).main(argv) == 0, (module, argv)
    if dist.is_initialized():
        port = [free_port() if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(port)
        dist.barrier()
        dist.destroy_process_group()
        os.environ.update(MASTER_PORT=str(port[0]), TORCHELASTIC_USE_AGENT_STORE="False")
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
