"""A tiny campaign for the campaign tests: resnet_tiny init, two tickets, fabricated folder data, and a spec
whose runs are the real bash drivers with small overrides (1 epoch, 16 px, PGD-2); `sweep.py` as a process or in
this one, and files made once per test session whatever the number of pytest-xdist workers."""
from __future__ import annotations

import contextlib
import fcntl
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import types
from typing import Callable
from unittest import mock

import torch

from datafiles import fabricate
from infra import errors
import models
import recipes
import pruning_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1", DOUBLEWIN_PY=sys.executable, PYTHONHASHSEED="0")
TINY = ["--arch", "resnet_tiny", "--small-input", "--image-size", "16", "--resize-size", "16", "--epochs", "1",
        "--batch_size", "8", "--lr", "0.05", "-j", "0", "--train_step", "2", "--test_step", "2", "--eval_from", "0",
        "--no-progress", "--no-channels-last", "--deterministic"]


def make_inputs(d: str) -> dict[str, str]:
    """init.pth, init3.pth, tickets/{1,2}-ticket.pth.tar and data/ (ImageFolder train/val) under d."""
    torch.manual_seed(0)
    model = models.resnet_tiny(1000)
    init = os.path.join(d, "init.pth")
    torch.save(model.state_dict(), init)
    mask = pruning_utils.full_mask(model)
    for level in (1, 2):
        mask = pruning_utils.magnitude_prune(model, mask, 0.5)
        pruning_utils.save_ticket(os.path.join(d, "tickets", f"{level}-ticket.pth.tar"), mask,
                                  {"level": level, "source": "aimp"})
    data = fabricate.make_image_folder(os.path.join(d, "data"), n_per_class=4, size=16)
    init3 = os.path.join(d, "init3.pth")  # a 3-class head: IMP on the folder data itself (as if it were ImageNet)
    torch.save(models.resnet_tiny(3).state_dict(), init3)
    return {"init": init, "init3": init3, "tickets": os.path.join(d, "tickets"), "data": data}


def toml_list(items) -> str:
    return "[" + ", ".join(json.dumps(x) for x in items) + "]"


def write_spec(path: str, inputs: dict[str, str], root: str, *, seeds=(1, 2), modes=("std", "adv"), levels=(1, 2),
               extra: str = "", tickets: str | None = None, dense: bool = True) -> str:
    tickets = tickets if tickets is not None else f"""
[[init.tickets]]
name = "aimp"
dir = "{inputs['tickets']}"
levels = {toml_list(levels)}
"""
    with open(path, "w") as f:
        f.write(f"""root = "{root}"
data = "{inputs['data']}"
overrides = {toml_list(TINY)}
{extra}
[[init]]
name = "tiny"
weights = "{inputs['init']}"
datasets = ["folder"]
modes = {toml_list(modes)}
seeds = {toml_list(seeds)}
{"" if dense else "dense = false" + chr(10)}{tickets}""")
    return path


def sweep(*args: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), *args], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=timeout)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def exit_status(main: Callable[[list[str] | None], int | None], argv: list[str]) -> int:
    """An entry point's `main(argv)` as its `__main__` runs it (errors.run_cli: a UserError is one `error:` line
    on stderr and its exit status): the status a process running it would exit with."""
    try:
        errors.run_cli(main, argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    raise AssertionError("run_cli returned")  # it always exits


def _entry_point_here(cmd: list[str]) -> int:
    """subprocess.call of `python ROOT/NAME.py ARGS` (what `sweep.py report` starts), as NAME's main in this
    process; anything else is refused, so a wrong interpreter or script still fails the test."""
    python, script, *argv = cmd
    assert python == sys.executable and os.path.dirname(script) == ROOT and os.path.isfile(script), cmd
    with open(script) as f:
        assert f.read().rstrip().endswith("run_cli(main)"), f"{script}: its __main__ is not run_cli(main)"
    return exit_status(importlib.import_module(os.path.basename(script)[:-len(".py")]).main, argv)


def sweep_here(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """`sweep.py ARGS` in this process: its main as its `__main__` runs it, stdout and stderr captured, and the
    entry points `report` starts (tickets.py overlap, report.py) run here too. torch is imported once in this
    process, where each `plan`, `status` or `report` process imports it again to count FLOPs or read tickets
    (about 3 s of CPU each). What needs a process of its own (`run`: its campaign lease lasts as long as the
    process, its runs, signals) goes through `sweep()`."""
    import sweep as sweep_py
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            mock.patch.object(sweep_py, "subprocess", types.SimpleNamespace(call=_entry_point_here)):
        code = exit_status(sweep_py.main, list(args))
    done = subprocess.CompletedProcess(["sweep.py", *args], code, out.getvalue(), err.getvalue())
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def once_per_session(request, name: str, make: Callable[[str], dict]) -> dict:
    """`make(folder)` once per test session, whatever the number of pytest-xdist workers: the first to ask makes
    it under a file lock in the session's temp folder (shared by the workers), the others wait for that lock and
    get what `make` returned (JSON). A make that failed leaves no record: the next to ask makes it again."""
    base = request.getfixturevalue("tmp_path_factory").getbasetemp()
    if hasattr(request.config, "workerinput"):  # an xdist worker's temp folder is popen-gwN in the session's
        base = base.parent
    folder, record = base / name, base / f"{name}.json"
    with open(base / f"{name}.lock", "w") as lock:  # released when closed, also when `make` raises
        fcntl.flock(lock, fcntl.LOCK_EX)
        if record.exists():
            return json.loads(record.read_text())
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        made = make(str(folder))
        partial = record.with_suffix(".partial")
        partial.write_text(json.dumps(made))
        os.replace(partial, record)
        return made


def results(root: str) -> dict[str, dict]:
    """results.json of every run under root, by run id, less the timings (which differ between identical runs)."""
    out = {}
    for folder, _, files in os.walk(root):
        if "results.json" in files:
            with open(os.path.join(folder, "results.json")) as f:
                data = json.load(f)
            out[os.path.relpath(folder, root)] = recipes.untimed(data)
    return out
