"""Faults and bad input as a user meets them. FAULTS is the table: every row runs the real command (in-process
through errors.run_cli, or as a separate process where the process boundary is the point: a fresh interpreter, or
a child of a fork server that imported the entry points once, tests/forkserver.py) and checks the exit status,
the one `error:` line, and that nothing already in SAVE_DIR was damaged. docs/FAULTS.md is rendered
from the table and a test keeps the two equal:

    python tests/test_faults.py --write     # regenerate docs/FAULTS.md after changing the table
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]  # for `python tests/test_faults.py --write`; pytest sets both itself

from infra import checkpoint  # noqa: E402
from infra import paths
from training import savedir  # noqa: E402
from infra import errors  # noqa: E402
from infra import flags  # noqa: E402
from datafiles import fabricate  # noqa: E402
from lottery import config as imp_config  # noqa: E402
import main_imp_adv  # noqa: E402
import main_imp_std  # noqa: E402
import main_train_downstream  # noqa: E402
import models  # noqa: E402
import pruning_utils  # noqa: E402
import report  # noqa: E402
from training import runner  # noqa: E402
from transfer import config as transfer_config  # noqa: E402
from transfer import run as transfer_run  # noqa: E402
from recipes import run_untimed  # noqa: E402
import forkserver  # noqa: E402

DOC = os.path.join(ROOT, "docs", "FAULTS.md")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny runs: a second intra-op thread only adds contention

# "…" in a command stands for these: the required flags and a tiny, fast configuration (resnet_tiny, 32 px)
BASE = {
    "main_train_downstream.py": (
        "--dataset", "folder", "--data", "{folder}", "--init", "{init}", "--tickets_file", "", "--save_dir",
        "{save}", "--arch", "resnet_tiny", "--small-input", "--image-size", "32", "--resize-size", "32",
        "--mode", "std", "--epochs", "2", "--decreasing_lr", "1", "--batch_size", "8", "--lr", "0.05",
        "--test_step", "1", "-j", "0", "--no-progress", "--no-channels-last", "--deterministic"),
    "main_imp_std.py": (
        "--init", "{init3}", "--save_dir", "{save}", "-a", "resnet_tiny", "--small-input", "--image-size", "32",
        "--resize-size", "32", "-b", "4", "-j", "0", "-p", "0", "--epochs", "1", "--prune_epoch", "1",
        "--lr", "0.05"),
}
BASE["main_imp_adv.py"] = BASE["main_imp_std.py"] + ("--train_step", "1")
ENTRIES = {"main_train_downstream.py": main_train_downstream.main, "main_imp_std.py": main_imp_std.main,
           "main_imp_adv.py": main_imp_adv.main, "report.py": report.main}

# what each {placeholder} of a command is (the files are fabricated by the `shared` fixture)
PLACEHOLDERS = {
    "folder": "an ImageFolder dataset: train/ and val/ with 3 class folders",
    "folder_test": "the same with a test/ split too",
    "train_only": "a dataset folder with train/ but no val/",
    "missing": "a path that does not exist",
    "file": "a regular file (a folder under it cannot be made, not even by root)",
    "save": "the run's SAVE_DIR",
    "init": "resnet_tiny weights with a 1000-class head (a stand-in for ImageNet weights)",
    "init3": "resnet_tiny weights with a 3-class head (IMP loads its head strictly)",
    "init_7x7": "resnet_tiny weights with the ImageNet 7x7 stem (the model here has the 3x3 one)",
    "init_nan": "{init} with one NaN weight",
    "init_truncated": "the first half of {init}",
    "trap": "a torch file holding a pickled object whose unpickling would create a marker file",
    "ticket_r18": "a ticket of a ResNet-18 layout (other layer names)",
    "ticket_7x7": "a ticket of resnet_tiny with the 7x7 stem (other conv1 shape)",
    "ticket_truncated": "the first half of a valid ticket",
    "ticket_changed": "a packed ticket (`tickets.py export`) with one byte of its masks changed",
    "evil_runs": "a runs tree whose results.json and *.pth.tar are pickles that would create a marker file",
}


@dataclass(frozen=True)
class Fault:
    id: str
    tried: str                          # the fault, in words
    command: tuple[str, ...] = ()       # entry point or script, then its arguments; "…" expands to BASE
    says: tuple[str, ...] = ()          # what the last stderr line (exit 0: some output line) must contain
    does: str = "stops before training; no checkpoint written"
    code: int = 2
    before: str | None = None           # SAVE_DIR prepared first (a key of BEFORE)
    inject: str | None = None           # a fault injected into the in-process run (a key of INJECT)
    check: str | None = None            # extra checks afterwards (a key of CHECKS)
    subprocess: bool = False            # a separate process (python entry points run in-process otherwise)
    fresh: bool = False                 # that process a fresh interpreter (else a child of the fork server)
    proof: str | None = None            # the test proving a row that needs its own set-up (no command then)


T = "main_train_downstream.py"
IS, IA = "main_imp_std.py", "main_imp_adv.py"
FAULTS = [
    # ---------------------------------------------------------------- data
    Fault("data-missing-imp", "IMP data folder does not exist", (IS, "{missing}", "…"),
          ("{missing}/train is not a folder", "pass the folder that holds train/"), subprocess=True, fresh=True),
    Fault("data-missing-transfer", "--data folder does not exist", (T, "…", "--data", "{missing}"),
          ("{missing}/train is not a folder",)),
    Fault("data-one-split", "--data points at the train/ split itself", (T, "…", "--data", "{folder}/train"),
          ("{folder}/train looks like one split: pass its parent folder",)),
    Fault("data-no-val", "IMP data folder without val/", (IS, "{train_only}", "…"),
          ("{train_only}/val is not a folder",)),
    Fault("dataset-unknown", "unknown --dataset", (T, "…", "--dataset", "imagenet"),
          ("argument --dataset: invalid choice: 'imagenet'",), subprocess=True),
    Fault("arch-unknown-imp", "unknown -a/--arch (IMP)", (IS, "{folder}", "…", "-a", "resnet99"),
          ("argument -a/--arch: invalid choice: 'resnet99'",)),
    Fault("arch-unknown-transfer", "unknown -a/--arch (transfer)", (T, "…", "--arch", "resnet99"),
          ("argument -a/--arch: invalid choice: 'resnet99'",)),
    # ---------------------------------------------------------------- init weights
    Fault("init-missing", "--init file does not exist", (IS, "{folder}", "…", "--init", "{missing}.pth"),
          ("'{missing}.pth' not found",), subprocess=True),
    Fault("init-truncated-imp", "--init file truncated (IMP)", (IS, "{folder}", "…", "--init", "{init_truncated}"),
          ("{init_truncated} is truncated or corrupt",)),
    Fault("init-truncated-transfer", "--init file truncated (transfer)", (T, "…", "--init", "{init_truncated}"),
          ("{init_truncated} is truncated or corrupt",)),
    Fault("init-other-arch", "--init of another architecture", (T, "…", "--arch", "resnet18"),
          ("does not fit the model (resnet18", "the init looks like resnet_tiny")),
    Fault("init-other-stem", "--init with another stem (7x7 weights, 3x3 model)",
          (IS, "{folder}", "…", "--init", "{init_7x7}"), ("a 7x7 stem vs the model's 3x3",)),
    Fault("init-nan", "--init holding NaN weights", (T, "…", "--init", "{init_nan}"),
          ("{init_nan}: 1 tensors hold NaN or inf values (first: conv1.weight)",)),
    Fault("init-pickle", "--init needs full unpickling (may run code)", (T, "…", "--init", "{trap}"),
          ("{trap} holds Python objects", "pass --trust-pickle"),
          "refuses without unpickling anything (the trap's marker file is not created)", check="no-marker"),
    # ---------------------------------------------------------------- tickets
    Fault("ticket-other-arch", "--tickets_file of another architecture",
          (T, "…", "--tickets_file", "{ticket_r18}"),
          ("does not fit --arch resnet_tiny", "'layer1.1.conv1.weight' is not a Conv2d weight")),
    Fault("ticket-shape", "--tickets_file with a mask of another shape", (T, "…", "--tickets_file", "{ticket_7x7}"),
          ("'conv1.weight' has shape (16, 3, 7, 7) but the model's weight has shape (16, 3, 3, 3)",)),
    Fault("ticket-truncated", "--tickets_file truncated", (T, "…", "--tickets_file", "{ticket_truncated}"),
          ("{ticket_truncated} is truncated or corrupt",)),
    Fault("ticket-changed", "--tickets_file changed on the way (one byte)",
          (T, "…", "--tickets_file", "{ticket_changed}"),
          ("{ticket_changed}: its masks do not give the mask_digest it records",)),
    Fault("ticket-no-masks", "--tickets_file holding weights, not masks", (T, "…", "--tickets_file", "{init}"),
          ("{init} holds no pruning masks",)),
    # ---------------------------------------------------------------- flags
    Fault("data-number-0", "--data_number 0", (T, "…", "--data_number", "0"),
          ("--data_number must be in (0, 1]",)),
    Fault("data-number-1.5", "--data_number 1.5", (T, "…", "--data_number", "1.5"),
          ("--data_number must be in (0, 1]",)),
    Fault("eps-imp", "--train_eps 8 meant as 8/255 (IMP)", (IA, "{folder}", "…", "--train_eps", "8"),
          ("--train_eps 8 is above 1", "write it as 8/255")),
    Fault("eps-transfer-train", "--train_eps 8 meant as 8/255 (transfer)",
          (T, "…", "--mode", "adv", "--train_eps", "8"), ("--train_eps 8 is above 1", "write it as 8/255")),
    Fault("eps-transfer-test", "--test_eps 8 meant as 8/255", (T, "…", "--test_eps", "8"),
          ("--test_eps 8 is above 1", "write it as 8/255")),
    Fault("pipeline-device-folder", "--pipeline device with folder data (image files, no uint8 array)",
          (T, "…", "--pipeline", "device"), ("--pipeline device serves", "--dataset folder", "pass --pipeline pil"),
          "stops before SAVE_DIR is made"),
    Fault("milestones-late", "--decreasing_lr milestones beyond --epochs (a short trial run)",
          (T, "…", "--data", "{folder_test}", "--decreasing_lr", "50,75"),
          ("WARNING: --decreasing_lr milestone(s) 50,75 at or after --epochs 2",),
          "runs to the end with one warning line", code=0, check="one-warning"),
    Fault("eval-from-late", "--eval_from 45 (adv_cifar.sh's value) with --epochs 2 (a short trial run)",
          (T, "…", "--data", "{folder_test}", "--eval_from", "45"),
          ("WARNING: --eval_from 45 is not below --epochs 2: validating every epoch",),
          "validates every epoch, with one warning line", code=0, check="one-warning"),
    # ---------------------------------------------------------------- SAVE_DIR
    Fault("save-dir-unwritable-transfer", "--save_dir cannot be created (under a regular file)",
          (T, "…", "--save_dir", "{file}/run"), ("--save_dir {file}/run cannot be written (Not a directory)",),
          "stops before reading anything", subprocess=True),
    Fault("save-dir-unwritable-imp", "--save_dir cannot be created (IMP)",
          (IS, "{folder}", "…", "--save_dir", "{file}/run"),
          ("--save_dir {file}/run cannot be written (Not a directory)",), "stops before reading anything"),
    Fault("config-mismatch-transfer", "re-run into a finished run's SAVE_DIR with another --lr",
          (T, "…", "--lr", "0.1"), ("lr (0.05 -> 0.1)", "pass --restart to start over"),
          "refuses; every file in SAVE_DIR unchanged", before="transfer-done"),
    Fault("config-mismatch-imp", "re-run into an IMP SAVE_DIR with another --rate",
          (IS, "{folder}", "…", "--rate", "0.5"), ("rate (0.2 -> 0.5)", "pass --restart to start over"),
          "refuses; every file in SAVE_DIR unchanged", before="imp-done"),
    Fault("config-unreadable", "SAVE_DIR's config.json is not JSON (a bad hand edit)", (T, "…"),
          ("{save}/config.json is not valid JSON", "pass --restart to start over"),
          "refuses; every file in SAVE_DIR unchanged", before="transfer-bad-config"),
    Fault("checkpoint-corrupt", "SAVE_DIR's checkpoint.pth.tar truncated (e.g. a damaged copy)", (T, "…"),
          ("{save}/checkpoint.pth.tar is truncated or corrupt", "pass --restart to start this run over"),
          "refuses to resume; every file in SAVE_DIR unchanged", before="transfer-corrupt"),
    Fault("checkpoint-pickle", "SAVE_DIR's 1-checkpoint.pth.tar needs unpickling, run with --trust-pickle",
          (IS, "{folder}", "…", "--trust-pickle"),
          ("1-checkpoint.pth.tar holds Python objects", "not unpickled: pass --restart"),
          "refuses: files found in SAVE_DIR are never unpickled, --trust-pickle or not (no marker file)",
          before="imp-trapped", check="no-marker"),
    # ---------------------------------------------------------------- during the run
    Fault("nan-loss", "the loss turns NaN in the 2nd epoch (weights poisoned)", (T, "…"),
          ("training loss became NaN/inf in epoch 1",),
          "stops; checkpoint.pth.tar of epoch 1 kept (finite weights), no results.json", inject="nan", check="nan"),
    Fault("nan-loss-lr", "IMP with --lr 1e30 (the loss overflows in the first epoch)",
          (IS, "{folder}", "…", "--lr", "1e30"), ("training loss became NaN/inf in epoch 0", "lower --lr"),
          "stops in the first epoch; no checkpoint written (level 1's ticket, pruned from the init, is valid)"),
    Fault("disk-full", "disk full while writing the 2nd epoch's checkpoint", (T, "…"),
          ("writing {save}/checkpoint.pth.tar failed (No space left on device)", "previous version", "is intact"),
          "stops (storage full: exit 4, no node to blame); epoch 1's checkpoint intact, no temp file left; re-running "
          "the same command finishes with the numbers of an uninterrupted run", code=4, inject="disk-full",
          check="disk-full"),
    Fault("killed-transfer", "transfer killed with SIGKILL mid-run, then the same command re-run",
          does="resumes at the last completed epoch; results.json equals an uninterrupted run's",
          code=0, proof="tests/test_faults.py::test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_results"),
    Fault("killed-imp", "A-IMP killed with SIGKILL mid-level, then the same command re-run",
          does="resumes at the first unfinished level and epoch; metrics, masks and checkpoints equal an "
               "uninterrupted run's", code=0,
          proof="tests/test_imp_dist.py::test_run_killed_mid_level_resumes_to_the_uninterrupted_result"),
    Fault("killed-while-writing", "a process killed with SIGKILL while it writes a checkpoint",
          does="the previous complete file stays readable; the next run removes the temp file", code=0,
          proof="tests/test_faults.py::test_sigkill_during_a_write_keeps_the_previous_file"),
    Fault("torn-metrics", "metrics.jsonl ends in half a line (killed mid-append)",
          does="readers skip it, the next row starts on its own line, resume rewrites the file without it", code=0,
          proof="tests/test_faults.py::test_torn_metrics_line_is_skipped_and_dropped_on_resume"),
    # ---------------------------------------------------------------- bash scripts and the report
    Fault("script-imp-adv", "imp_adv.sh with an empty INIT_WEIGHTS",
          ("script/imp_pretrain/imp_adv.sh", "", "{save}", "{folder}"), ("INIT_WEIGHTS (argument 1) is empty",),
          "prints its usage line and the error; starts nothing"),
    Fault("script-imp-std", "imp_std.sh with an empty SAVE_DIR",
          ("script/imp_pretrain/imp_std.sh", "{init3}", "", "{folder}"), ("SAVE_DIR (argument 2) is empty",),
          "prints its usage line and the error; starts nothing"),
    Fault("script-adv-cifar", "adv_cifar.sh with an empty SAVE_DIR",
          ("script/train_downstream/adv_cifar.sh", "cifar10", "{init}", "", ""), ("SAVE_DIR (argument 3) is empty",),
          "prints its usage line and the error; starts nothing"),
    Fault("script-adv-svhn", "adv_svhn.sh with an empty INIT_WEIGHTS",
          ("script/train_downstream/adv_svhn.sh", "", "{save}", ""), ("INIT_WEIGHTS (argument 1) is empty",),
          "prints its usage line and the error; starts nothing"),
    Fault("script-std", "std.sh with an empty DATASET", ("script/train_downstream/std.sh", "", "{init}", "{save}", ""),
          ("DATASET (argument 1) is empty",), "prints its usage line and the error; starts nothing"),
    Fault("script-std-short", "std.sh with two of its four positionals",
          ("script/train_downstream/std.sh", "cifar10", "{init}"), ("expected 4 positional arguments, got 2",),
          "prints its usage line and the error; starts nothing"),
    Fault("script-report", "report.sh with an empty ROOT", ("script/report.sh", ""), ("ROOT (argument 1) is empty",),
          "prints its usage line and the error; starts nothing"),
    Fault("report-pickles", "report over runs whose results.json / checkpoints are pickles",
          ("report.py", "{evil_runs}", "--out", "{save}", "--no-plots"), ("results.json unreadable",),
          "lists the run as a problem; reads JSON only, unpickles nothing (no marker file)", code=0,
          check="no-marker"),
]


# ---------------------------------------------------------------------------- fabricated files
class Trap:
    """Unpickling this creates `path`: a visible side effect, proof that a file was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _truncated(src: str, dst: str) -> str:
    data = open(src, "rb").read()
    open(dst, "wb").write(data[: len(data) // 2])
    return dst


@pytest.fixture(scope="module")
def shared(_fake_files, tmp_path_factory) -> dict[str, str]:
    """The read-only inputs every case may use (see PLACEHOLDERS)."""
    d = tmp_path_factory.mktemp("faults")
    p = {"folder": _fake_files("folder"), "missing": str(d / "missing"), "marker": str(d / "UNPICKLED")}
    p["folder_test"] = fabricate.make_image_folder(str(d / "folder_test"), splits=("train", "val", "test"))
    p["train_only"] = fabricate.make_image_folder(str(d / "train_only"), splits=("train",))
    torch.manual_seed(0)
    tiny = models.resnet_tiny(1000)
    p["init"] = str(d / "init.pth")
    torch.save(tiny.state_dict(), p["init"])
    p["init3"] = str(d / "init3.pth")
    torch.save(models.build("resnet_tiny", 3, small_input=True).state_dict(), p["init3"])
    p["init_7x7"] = str(d / "init_7x7.pth")
    torch.save(models.resnet_tiny(3, small_input=False).state_dict(), p["init_7x7"])
    poisoned = tiny.state_dict()
    poisoned["conv1.weight"][0, 0, 0, 0] = float("nan")
    p["init_nan"] = str(d / "init_nan.pth")
    torch.save(poisoned, p["init_nan"])
    p["init_truncated"] = _truncated(p["init"], str(d / "init_truncated.pth"))
    p["trap"] = str(d / "trap.pth")
    torch.save({"conv1.weight": Trap(p["marker"])}, p["trap"])
    r18 = models.ResNet(models.resnet.BasicBlock, (2, 2, 2, 2), 10, width=16, small_input=True)
    p["ticket_r18"] = str(d / "r18-ticket.pth.tar")
    pruning_utils.save_ticket(p["ticket_r18"], pruning_utils.full_mask(r18), {})
    p["ticket_7x7"] = str(d / "7x7-ticket.pth.tar")
    pruning_utils.save_ticket(p["ticket_7x7"], pruning_utils.full_mask(models.resnet_tiny(3, small_input=False)), {})
    ticket = str(d / "ticket.pth.tar")
    pruning_utils.save_ticket(ticket, pruning_utils.full_mask(tiny), {})
    p["ticket_truncated"] = _truncated(ticket, str(d / "ticket_truncated.pth.tar"))
    p["ticket_changed"] = str(d / "ticket_changed.safetensors")
    pruning_utils.save_ticket(p["ticket_changed"], pruning_utils.full_mask(tiny), {}, packed=True)
    changed = bytearray(open(p["ticket_changed"], "rb").read())
    changed[8 + int.from_bytes(changed[:8], "little")] ^= 0x01  # the first mask byte, after the header
    open(p["ticket_changed"], "wb").write(bytes(changed))
    evil = d / "evil_runs" / "c10_run"
    evil.mkdir(parents=True)
    (evil / paths.CONFIG).write_text("{}")
    (evil / paths.RESULTS).write_bytes(pickle.dumps(Trap(p["marker"])))
    for name in (paths.CHECKPOINT, paths.SA_BEST, paths.RA_BEST):
        torch.save({"state_dict": Trap(p["marker"])}, evil / name)
    p["evil_runs"] = str(d / "evil_runs")
    return p


def expand(command: tuple[str, ...], paths: dict[str, str]) -> list[str]:
    """The argv after the entry point: "…" replaced by the entry's BASE flags, {placeholders} filled."""
    args = [a for part in command[1:] for a in (BASE[command[0]] if part == "…" else (part,))]
    return [a.format(**paths) for a in args]


def run_in_process(entry: str, argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        errors.run_cli(ENTRIES[entry], argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def run_process(entry: str, argv: list[str], cwd: str, forked: forkserver.Forkserver | None) -> tuple[int, str, str]:
    """A bash script, or a python entry point in a fresh interpreter (`forked` None) or as a fork server's child."""
    if entry.endswith(".sh"):  # an interpreter that exits 1 when run: a script that wrongly went on exits 1, not 2
        stand_in = os.path.join(cwd, "python")
        with open(stand_in, "w") as f:
            f.write('#!/bin/sh\ncase "$1" in -c|-) exit 0;; esac\nexit 1\n')  # script/env.sh's checks of it pass
        os.chmod(stand_in, 0o755)
        cmd, env = ["bash", os.path.join(ROOT, entry), *argv], {**ENV, "DOUBLEWIN_PY": stand_in}
    elif forked is not None:
        done = forked.run(entry, argv, env=ENV, cwd=cwd, timeout=120)
        return done.returncode, done.stdout, done.stderr
    else:
        cmd, env = [sys.executable, os.path.join(ROOT, entry), *argv], ENV
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def forked():
    """A fork server that imported the python entry points: each child runs one as `python ENTRY ARGS` would."""
    server = forkserver.Forkserver(ENV, preload=("main_train_downstream", "main_imp_std", "main_imp_adv"))
    yield server
    server.close()


# ---------------------------------------------------------------------------- SAVE_DIR states
@pytest.fixture(scope="module")
def finished(shared, tmp_path_factory) -> dict[str, str]:
    """One finished run of each kind made by the BASE command (cases copy them; save_dir is volatile)."""
    runs = {}
    for entry in (T, IS):
        save = str(tmp_path_factory.mktemp("done"))
        args = ([shared["folder"]] if entry == IS else []) + expand((entry, "…"), {**shared, "save": save})
        with pytest.raises(SystemExit) as e:
            errors.run_cli(ENTRIES[entry], args)
        assert e.value.code == 0
        runs[entry] = save
    return runs


def _before(name: str, save: str, finished: dict[str, str], shared: dict[str, str]) -> None:
    shutil.copytree(finished[T if name.startswith("transfer") else IS], save)
    if name == "transfer-corrupt":  # killed in its final test, then its checkpoint got damaged
        os.remove(os.path.join(save, paths.RESULTS))
        path = os.path.join(save, paths.CHECKPOINT)
        _truncated(path, path + ".half")
        os.replace(path + ".half", path)
    elif name == "transfer-bad-config":
        with open(os.path.join(save, paths.CONFIG), "a") as f:
            f.write("lr: 0.1\n")
    elif name == "imp-trapped":
        torch.save({"state_dict": Trap(shared["marker"]), "epoch": 1}, paths.imp_checkpoint(save, 1))


BEFORE = {"transfer-done": "a finished transfer run", "imp-done": "a finished IMP run",
          "transfer-corrupt": "a transfer run with a truncated checkpoint.pth.tar",
          "transfer-bad-config": "a finished transfer run whose config.json got a stray line",
          "imp-trapped": "an IMP run whose checkpoint is a pickle trap"}


VOLATILE = flags.result_free(imp_config.IMPConfig) | flags.result_free(transfer_config.TransferConfig) | {"launch"}


def snapshot(folder: str) -> dict[str, bytes | dict]:
    """Every file's bytes but the append-only log; config.json's settings but those a re-run may change (a
    copied run is re-run from its new place, --trust-pickle may come and go)."""
    if not os.path.isdir(folder):
        return {}
    out: dict[str, bytes | dict] = {}
    names = {n for n in os.listdir(folder) if not n.startswith(".tmp-")}  # but the lease holder's temp folder
    for name in sorted(names - {paths.LOG, paths.LEASE}):
        out[name] = open(os.path.join(folder, name), "rb").read()
        if name == paths.CONFIG:
            try:
                out[name] = {k: v for k, v in json.loads(out[name]).items() if k not in VOLATILE}
            except json.JSONDecodeError:
                pass
    return out


# ---------------------------------------------------------------------------- injected faults
def _inject_nan(monkeypatch) -> None:
    real = transfer_run.train_one_epoch

    def poisoned(model, *args, epoch, **kwargs):
        if epoch == 1:  # as if training had diverged: the real loop must notice the non-finite loss
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return real(model, *args, epoch=epoch, **kwargs)
    monkeypatch.setattr(transfer_run, "train_one_epoch", poisoned)


def _inject_disk_full(monkeypatch) -> None:
    real, writes = os.fsync, []

    def fsync(fd):
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(f".{paths.CHECKPOINT}."):
            writes.append(name)
            if len(writes) == 2:  # the second epoch's checkpoint
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)


INJECT = {"nan": _inject_nan, "disk-full": _inject_disk_full}


# ---------------------------------------------------------------------------- checks after a case
def _check_nan(save: str, **_) -> None:
    ck = checkpoint.load_file(os.path.join(save, paths.CHECKPOINT))
    assert ck["epoch"] == 1 and all(bool(torch.isfinite(v).all()) for v in ck["state_dict"].values()
                                    if v.is_floating_point())
    assert [r["epoch"] for r in checkpoint.read_jsonl(os.path.join(save, paths.METRICS))] == [0]
    assert not os.path.exists(os.path.join(save, paths.RESULTS))


def _check_disk_full(save: str, argv: list[str], finished: dict[str, str], capsys, **_) -> None:
    assert checkpoint.load_file(os.path.join(save, paths.CHECKPOINT))["epoch"] == 1
    assert not [n for n in os.listdir(save) if n.endswith(".tmp")]
    assert run_in_process(T, argv, capsys)[0] == 0  # space freed: the same command again
    (res_a, rows_a), (res_b, rows_b) = run_untimed(finished[T]), run_untimed(save)
    assert res_a == res_b and rows_a == rows_b and len(rows_a) == 2


def _check_no_marker(shared: dict[str, str], **_) -> None:
    assert not os.path.exists(shared["marker"]), "a file was unpickled"


def _check_one_warning(out: str, err: str, **_) -> None:
    warnings = [line for line in (out + err).splitlines() if "WARNING" in line]
    assert len(warnings) == 1, warnings


CHECKS = {"nan": _check_nan, "disk-full": _check_disk_full, "no-marker": _check_no_marker,
          "one-warning": _check_one_warning}


# ---------------------------------------------------------------------------- the table, run
@pytest.mark.parametrize("fault", [pytest.param(f, marks=pytest.mark.slow) if f.subprocess else f  # a process: slow
                                   for f in FAULTS if f.proof is None], ids=lambda f: f.id)
def test_fault(fault: Fault, shared, finished, tmp_path, capsys, monkeypatch, request):
    (tmp_path / "afile").write_text("a regular file\n")
    where = {**shared, "save": str(tmp_path / "save"), "file": str(tmp_path / "afile")}
    if fault.before:
        _before(fault.before, where["save"], finished, shared)
    before = snapshot(where["save"])
    entry, argv = fault.command[0], expand(fault.command, where)
    if fault.subprocess or entry.endswith(".sh"):
        server = None if fault.fresh or entry.endswith(".sh") else request.getfixturevalue("forked")
        code, out, err = run_process(entry, argv, str(tmp_path), server)
    else:
        with monkeypatch.context() as m:
            if fault.inject:
                INJECT[fault.inject](m)
            code, out, err = run_in_process(entry, argv, capsys)
    assert code == fault.code, (out[-2000:], err[-2000:])
    assert "Traceback" not in err, err
    says = [s.format(**where) for s in fault.says]
    if fault.code:
        lines = [line for line in err.splitlines() if line.strip()]
        usage = 1 if entry.endswith(".sh") else 0  # a script prints its usage line first
        assert len(lines) == 1 + usage and lines[-1].startswith("error: ") and "error" not in "".join(lines[:-1]), err
        assert all(s in lines[-1] for s in says), (says, lines[-1])
    else:
        assert not any(line.startswith("error") for line in err.splitlines()), err
        assert any(all(s in line for s in says) for line in (out + err).splitlines()), (says, out[-2000:])
    if fault.before:  # no damage: every file that was there is still there, byte for byte
        after = snapshot(where["save"])
        assert {n: after.get(n) for n in before} == before
    elif fault.code and not fault.inject and os.path.isdir(where["save"]):  # stopped before any training output
        assert not [n for n in os.listdir(where["save"]) if "checkpoint" in n or "best" in n or n == paths.RESULTS]
    if fault.check:
        CHECKS[fault.check](save=where["save"], argv=argv, finished=finished, capsys=capsys, shared=shared,
                            out=out, err=err)


def test_every_proof_names_a_test_that_exists():
    for fault in FAULTS:
        if fault.proof:
            path, name = fault.proof.split("::")
            assert f"\ndef {name}(" in open(os.path.join(ROOT, path)).read(), fault.proof
    assert len({f.id for f in FAULTS}) == len(FAULTS)


# ---------------------------------------------------------------------------- faults with their own set-up
def _transfer_argv(shared: dict[str, str], save: str) -> list[str]:
    return expand((T, "…", "--epochs", "5", "--mode", "adv", "--train_step", "2"), {**shared, "save": save})


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_results(shared, tmp_path, capsys, forked):
    """The victim is a process of its own (SIGKILL; a child of the fork server); the uninterrupted run and the
    re-run of the same command run in this process (the entry point's main: the same code)."""
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    victim = forked.start(T, _transfer_argv(shared, killed), env=ENV)
    first = os.path.join(killed, paths.CHECKPOINT)
    deadline = time.time() + 120
    while not os.path.exists(first) and victim.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(0.2)  # into the second epoch
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = checkpoint.load_file(first)["epoch"]
    assert 1 <= done < 5 and not os.path.exists(os.path.join(killed, paths.RESULTS)), "not killed mid-run"
    code, _, err = run_in_process(T, _transfer_argv(shared, killed), capsys)
    assert code == 0, err[-3000:]
    code, _, err = run_in_process(T, _transfer_argv(shared, whole), capsys)
    assert code == 0, err[-3000:]
    assert f"resuming from {first}: {done} of 5 epochs done" in open(os.path.join(killed, paths.LOG)).read()
    (res_a, rows_a), (res_b, rows_b) = run_untimed(whole), run_untimed(killed)
    assert rows_a == rows_b and len(rows_a) == 5
    assert res_a == res_b
    a, b = (checkpoint.load_file(os.path.join(d, paths.CHECKPOINT)) for d in (whole, killed))
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


# two writers from one torch import: the process forks, each half rewrites its own path (argv 1 or 2) in a loop
WRITER = """
import os, sys, torch
sys.path.insert(0, {root!r})
from infra import checkpoint
big = {{"w": torch.arange(4_000_000, dtype=torch.float32)}}
i = 0 if os.fork() == 0 else 1  # the child writes the first path, the parent the second
path = sys.argv[1 + i]
checkpoint.atomic_save({{"version": 0, **big}}, path)
os.write(1, f"ready {{i}} {{os.getpid()}}\\n".encode())  # one write: the two lines never mix
v = 0
while True:
    v += 1
    checkpoint.atomic_save({{"version": v, **big}}, path)
"""


@pytest.mark.slow
def test_sigkill_during_a_write_keeps_the_previous_file(tmp_path):
    """Two writers rewrite a 16 MB checkpoint in a loop and are killed at different moments: the file always loads
    whole, and remove_temp_files (run by the next run) clears what the cut write left."""
    targets = [str(tmp_path / f"{i}" / "checkpoint.pth.tar") for i in range(2)]
    for path in targets:
        os.makedirs(os.path.dirname(path))
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(root=ROOT), *targets], env=ENV,
                            stdout=subprocess.PIPE, text=True)
    try:
        pids = {}
        for _ in range(2):
            line = proc.stdout.readline().split()
            assert line[:1] == ["ready"], line
            pids[int(line[1])] = int(line[2])
        for i, path in enumerate(targets):
            time.sleep(0.05 + 0.13 * i)
            os.kill(pids[i], signal.SIGKILL)
            deadline = time.time() + 30
            while not forkserver.gone(pids[i]) and time.time() < deadline:
                time.sleep(0.005)
            assert forkserver.gone(pids[i])
            obj = checkpoint.load_file(path)
            assert obj["w"].shape == (4_000_000,) and obj["w"][-1] == 3_999_999 and obj["version"] >= 0
            assert os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()
            savedir.remove_temp_files(os.path.dirname(path))
            assert os.listdir(os.path.dirname(path)) == ["checkpoint.pth.tar"]
    finally:
        proc.kill()
        proc.wait()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_torn_metrics_line_is_skipped_and_dropped_on_resume(tmp_path):
    path = str(tmp_path / paths.METRICS)
    checkpoint.append_jsonl(path, {"epoch": 0})
    with open(path, "a") as f:
        f.write('{"epoch": 1, "val_')  # killed mid-append
    checkpoint.append_jsonl(path, {"epoch": 1})
    assert checkpoint.read_jsonl(path) == [{"epoch": 0}, {"epoch": 1}]
    with open(path, "a") as f:
        f.write('{"epoch": 2, "val_')
    runner.truncate_metrics(str(tmp_path), 2)
    assert open(path).read() == '{"epoch": 0}\n{"epoch": 1}\n'


def test_a_failed_write_keeps_the_previous_file_and_its_permissions(tmp_path, monkeypatch):
    path = str(tmp_path / "results.json")
    checkpoint.atomic_write_json(path, {"v": 1})
    os.chmod(path, 0o640)
    old = open(path, "rb").read()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(errors.NodeError, match="writing .*results.json failed \\(No space left on device\\)"):
        checkpoint.atomic_write_json(path, {"v": 2})
    with pytest.raises(errors.NodeError, match="No space left"):
        checkpoint.append_jsonl(str(tmp_path / "m.jsonl"), {"v": 2})
    monkeypatch.undo()
    assert open(path, "rb").read() == old and sorted(os.listdir(tmp_path)) == ["m.jsonl", "results.json"]
    checkpoint.atomic_write_json(path, {"v": 3})
    assert os.stat(path).st_mode & 0o777 == 0o640  # a replaced file keeps its mode (mkstemp would give 0600)


# ---------------------------------------------------------------------------- the page
def render() -> str:
    """docs/FAULTS.md from FAULTS."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    def command(f: Fault) -> str:
        if f.proof:
            return f"`{f.proof.split('::')[1]}`"
        shown = " ".join(repr(a) if a == "" else a for a in f.command)
        return f"`{cell(shown)}`"
    head = [
        "# Faults and bad input: what the programs do",
        "",
        "Generated from the table `FAULTS` in `tests/test_faults.py` by `python tests/test_faults.py --write`;",
        "`test_docs_faults_md_is_the_rendered_table` fails when this page and the table differ, and every row is",
        "a test that runs the command (or the named test) and checks what the columns say.",
        "",
        "Every error is one line on stderr starting with `error: ` (a bash script prints its usage line first),",
        "names the flag or file and what to do, and exits with status 2; no Python traceback for user errors.",
        "Each message below must contain the quoted text. `…` stands for the entry point's required flags and a",
        "tiny test configuration; a SAVE_DIR prepared before the command is named in the last column.",
        "",
        "| Fault | Command | Exit | The message contains | What happens |",
        "|---|---|---|---|---|",
    ]
    rows = []
    for f in FAULTS:
        says = "<br>".join(f"`{cell(s)}`" for s in f.says) or "-"
        does = f.does + (f" (SAVE_DIR: {BEFORE[f.before]})" if f.before else "")
        rows.append(f"| {cell(f.tried)} | {command(f)} | {f.code} | {says} | {cell(does)} |")
    legend = ["", "`…` stands for:", ""] + [f"- `{entry}`: `{' '.join(repr(a) if a == '' else a for a in flags)}`"
                                             for entry, flags in BASE.items()]
    legend += ["", "Placeholders:", ""] + [f"- `{{{k}}}`: {v}" for k, v in PLACEHOLDERS.items()]
    notes = ["", "Loading: every torch file is read with `torch.load(weights_only=True)` (`checkpoint.load_file`);",
             "full unpickling only with `--trust-pickle`, and only for a file named on the command line (`--init`,",
             "`--tickets_file`, `--resume`), never for one a run finds in its SAVE_DIR (`checkpoint.load_own`).",
             "`report.py` reads JSON only. The CIFAR python files are pickles by their official format and are read",
             "by torchvision: use copies from the official source.", ""]
    return "\n".join(head + rows + legend + notes)


def test_docs_faults_md_is_the_rendered_table():
    assert os.path.exists(DOC) and open(DOC).read() == render(), "run: python tests/test_faults.py --write"


def test_every_placeholder_is_explained():
    used = {m for f in FAULTS for a in f.command + f.says for m in re.findall(r"\{(\w+)\}", a)}
    assert used <= set(PLACEHOLDERS), used - set(PLACEHOLDERS)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_faults.py --write   (regenerates docs/FAULTS.md)")
    with open(DOC, "w") as f:
        f.write(render())
    print(f"wrote {DOC}")
