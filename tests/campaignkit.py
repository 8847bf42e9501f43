"""A tiny campaign for the campaign tests: resnet_tiny init, two tickets, fabricated folder data, and a spec
whose runs are the real bash drivers with small overrides (1 epoch, 16 px, PGD-2)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from datafiles import fabricate
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
               extra: str = "", tickets: str | None = None) -> str:
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
{tickets}""")
    return path


def sweep(*args: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), *args], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=timeout)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def results(root: str) -> dict[str, dict]:
    """results.json of every run under root, by run id, less the timings (which differ between identical runs)."""
    out = {}
    for folder, _, files in os.walk(root):
        if "results.json" in files:
            with open(os.path.join(folder, "results.json")) as f:
                data = json.load(f)
            out[os.path.relpath(folder, root)] = recipes.untimed(data)
    return out
