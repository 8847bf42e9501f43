"""Run a Python file as __main__ in a process that counts N GPUs, so that `--multiprocessing-distributed` spawns
N ranks on a CPU machine: only this process is told so (infra.distributed's CUDA check and torch's device count);
the ranks it spawns are fresh interpreters that see no GPU and run on the CPU with gloo, as the real spawn does
on a GPU node with nccl. Usage: python fakegpus.py N SCRIPT [ARGS...] (a leading -u is skipped, so a driver's
`$DOUBLEWIN_PY -u SCRIPT ...` line works with DOUBLEWIN_PY a wrapper that calls this; script/env.sh's checks
of the interpreter, without -u, go to Python itself)."""
from __future__ import annotations

import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: list[str]) -> None:
    n, args = int(argv[0]), [a for a in argv[1:] if a != "-u"]
    sys.path.insert(0, ROOT)
    import torch
    from infra import distributed
    distributed.cuda_usable = lambda: True
    torch.cuda.device_count = lambda: n
    sys.argv = args
    runpy.run_path(args[0], run_name="__main__")


def wrapper(path: str, n: int) -> str:
    """An executable at `path` to set as DOUBLEWIN_PY for a bash driver: its runs (`-u SCRIPT ...`) count `n`
    GPUs."""
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\n[ \"$1\" = -u ] || exec {sys.executable} \"$@\"\n"
                f"exec {sys.executable} -u {os.path.abspath(__file__)} {n} \"$@\"\n")
    os.chmod(path, 0o755)
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
