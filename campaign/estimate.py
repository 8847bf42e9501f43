"""What is left to run, estimated (not measured): the images each run's own settings (its driver's recipe, then
its own flags) pass through each kind of pass, times the FLOPs per image that the compute ledger's own counter
gives (`models.flops`, 2 FLOPs per multiply-add), and GPU-hours at an assumed sustained rate. torch is imported
only when a count is first needed."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from campaign.spec import Run
from datafiles import facts
from infra.errors import UserError
from lottery.recipes import RECIPES as IMP_RECIPES
from transfer.recipes import RECIPES as TRANSFER_RECIPES

UNIT = "FLOP (2 per multiply-add, as the compute ledger counts)"
RATE = {"bf16": 150e12, "fp32": 50e12}  # FLOP/s assumed sustained on one H100-class card; see the README
_ILSVRC = facts.DATASETS["imagenet"].sizes  # the ILSVRC-2012 split sizes, where the IMP folder is not readable
IMAGENET_TRAIN, IMAGENET_VAL = _ILSVRC.train, _ILSVRC.val
FINAL_TESTS = 3  # a transfer run tests its last, best-SA and best-RA models (fewer when two are the same epoch)


@dataclass(frozen=True)
class Passes:
    """Images left through each kind of pass (an attack step counts one image through "attack")."""
    train: float = 0.0
    attack: float = 0.0
    eval: float = 0.0
    note: str = ""  # what the estimate assumes beyond the flags (early-bird: its full schedule)


RECIPES = {**IMP_RECIPES, **TRANSFER_RECIPES}  # a driver script/<stage>/<name>.sh passes --recipe <name>
SAME = {"-a": "--arch"}  # the other spellings of the flags read here (a test compares them with the parsers)


def flags(run: Run) -> dict[str, str]:
    """The run's flags as its stage resolves them: its driver's recipe, then the command's own `--flag value`
    pairs (argparse keeps the last value); a switch's value is whatever follows it."""
    script = next(a for a in run.command if a.endswith(".sh"))
    recipe = RECIPES[os.path.basename(script)[:-3]]
    args = [*recipe.argv(), *run.command[run.command.index(script) + 1:]]
    out: dict[str, str] = {}
    for a, b in zip(args, [*args[1:], ""]):
        if a.startswith("-") and not a.startswith("---"):
            name, eq, value = a.partition("=")
            out[SAME.get(name, name)] = value if eq else b
    return out


def _num(f: dict[str, str], name: str, run: Run) -> float:
    try:
        return float(f[name])
    except KeyError:
        raise KeyError(f"{name} is in no recipe the estimate reads ({run.id})") from None
    except ValueError:
        raise UserError(f"{run.id}: {name} {f[name]!r} is not a number") from None


@functools.cache
def folder_images(root: str, split: str) -> int:
    """Files under root/split (0 where it is not a folder): walked once per process, then cached."""
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        return 0
    return sum(len(files) for _, _, files in os.walk(folder))


def table_size(dataset: str, split: str) -> int:
    """Images of `dataset`'s "train", "val" or "test" split in the dataset table (0: not there, count its folder)."""
    return getattr(getattr(facts.DATASETS.get(dataset), "sizes", None), split, None) or 0


def _attack_steps(run: Run, f: dict[str, str]) -> float:
    if run.mode != "adv":
        return 0.0
    return 1.0 if f.get("--attack") == "fgsm" else _num(f, "--train_step", run)


def imp_passes(run: Run, f: dict[str, str], epochs_done: int) -> Passes:
    """An IMP stage: each epoch trains on --data_number of the train split (with the attack's steps) and
    validates SA on the val split; one-shot pruning (--omp-level/--omp-sparsity) trains nothing."""
    if "--omp-level" in f or "--omp-sparsity" in f:
        return Passes(note="one-shot pruning: no training")
    data = run.command[4]
    images = (folder_images(data, "train") or IMAGENET_TRAIN) * _num(f, "--data_number", run)
    val = folder_images(data, "val") or IMAGENET_VAL
    epochs = max(0.0, _num(f, "--epochs", run) - epochs_done)
    note = "early-bird: at most its full schedule (levels may stop sooner)" if "--early-bird" in f else ""
    return Passes(images * epochs, images * epochs * _attack_steps(run, f), val * epochs, note)


def transfer_passes(run: Run, f: dict[str, str], epochs_done: int) -> Passes:
    """A transfer run: training (with the attack's steps under adv), validation SA and RA (--test_step) from
    --eval_from on, then the final tests' SA and RA."""
    data = f.get("--data", "")
    n = (table_size(run.dataset, "train") or folder_images(data, "train")) * _num(f, "--data_number", run)
    n_val = table_size(run.dataset, "val") or folder_images(data, "val") or folder_images(data, "validation")
    n_test = table_size(run.dataset, "test") or folder_images(data, "test")
    epochs = _num(f, "--epochs", run)
    steps, test_steps = _attack_steps(run, f), _num(f, "--test_step", run)
    train_epochs = max(0.0, epochs - epochs_done)
    val_epochs = max(0.0, epochs - max(_num(f, "--eval_from", run), epochs_done))
    checked = val_epochs * n_val + FINAL_TESTS * n_test  # each through SA (eval) and RA (attack steps + eval)
    return Passes(n * train_epochs, n * train_epochs * steps + checked * test_steps, 2 * checked)


def passes(run: Run, epochs_done: int = 0) -> Passes:
    f = flags(run)
    return imp_passes(run, f, epochs_done) if run.kind == "imp" else transfer_passes(run, f, epochs_done)


def per_image(run: Run) -> dict[str, float]:
    """FLOPs per image of each kind of pass for the run's model, counted by the compute ledger's counter (once per
    architecture, image size and kind in this process)."""
    from models import flops
    f = flags(run)
    arch, size = f["--arch"], int(_num(f, "--image-size", run))
    classes = 1000 if run.kind == "imp" else getattr(facts.DATASETS.get(run.dataset), "num_classes", None) or 10
    small = "--small-input" in f
    return {k: flops.per_image(arch, size, k, num_classes=classes, small_input=small) for k in flops.KINDS}


def run_flop(run: Run, epochs_done: int = 0) -> float:
    """FLOPs of what is left of `run` (its epochs not done yet; a transfer run's final tests too)."""
    p = passes(run, epochs_done)
    if not (p.train or p.attack or p.eval):
        return 0.0
    per = per_image(run)
    return p.train * per["train"] + p.attack * per["attack"] + p.eval * per["eval"]


def gpu_hours(flop: float, amp: bool = True) -> float:
    return flop / RATE["bf16" if amp else "fp32"] / 3600
