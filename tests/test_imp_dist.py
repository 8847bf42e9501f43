"""IMP as separate processes: two gloo ranks under torchrun agree on every mask, and a run killed with SIGKILL
then re-run with the same command ends bit-identical to an uninterrupted one."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from infra import checkpoint
from infra import paths
from lottery import levels as imp_levels
import main_imp_adv
import pruning_utils
from recipes import TINY, same_masks, ticket, tiny_model, untimed, write_init
from torchrunkit import torchrun

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tiny(_fake_files, tmp_path):
    return _fake_files("folder"), write_init(str(tmp_path / "init.pth"))


# One intra-op thread per process: these tiny runs would otherwise spend most of their time in thread sync.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def command(entry: str, data: str, init: str, save_dir: str, *extra: str) -> list[str]:
    return [sys.executable, os.path.join(ROOT, entry), data, "--init", init, "--save_dir", save_dir, *TINY, *extra]


SYNC_BN = ("--epochs", "2", "--prune_epoch", "1", "--lr", "0.05", "--train_step", "1", "--sync-bn")


@pytest.fixture(scope="module")
def two_ranks(_fake_files, tmp_path_factory):
    """One torchrun of two gloo ranks (a launch costs three torch imports) running the two IMP runs the tests below
    read, one after the other: `std`, IMP for 2 levels of 1 epoch; `sync_bn`, A-IMP with --sync-bn."""
    tmp = tmp_path_factory.mktemp("two_ranks")
    data, init = _fake_files("folder"), write_init(str(tmp / "init.pth"))
    runs = [("main_imp_std", command("main_imp_std.py", data, init, str(tmp / "std"), "--epochs", "2",
                                     "--prune_epoch", "1", "--lr", "0.05")[2:]),
            ("main_imp_adv", command("main_imp_adv.py", data, init, str(tmp / "sync_bn"), *SYNC_BN)[2:])]
    done = torchrun(str(tmp), runs)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return SimpleNamespace(data=data, init=init, std=str(tmp / "std"), sync_bn=str(tmp / "sync_bn"))


@pytest.mark.slow
def test_two_gloo_ranks_hold_the_same_masks(two_ranks):
    init, save_dir = two_ranks.init, two_ranks.std
    log = open(os.path.join(save_dir, paths.LOG)).read()
    assert "rank 0/2 on cpu (gloo)" in log and "torchrun: 2 processes" in log
    # Each rank fingerprints the mask it holds; imp_levels raises unless all agree; rank 0 logs the shared digest.
    logged = dict(re.findall(r"level (\d+): mask digest ([0-9a-f]{16}) on rank\(s\) 0, 1\n", log))
    assert sorted(logged) == ["1", "2", "3"]
    for level, digest in logged.items():
        assert digest == pruning_utils.mask_digest(ticket(save_dir, int(level)))
    # Level 1 prunes the init, so it is the one-process mask too; later levels follow the 2-rank training.
    net = tiny_model()
    net.load_state_dict(torch.load(init, weights_only=True))
    assert same_masks(ticket(save_dir, 1), pruning_utils.magnitude_prune(net, pruning_utils.full_mask(net), 0.2))
    rows = checkpoint.read_jsonl(os.path.join(save_dir, paths.METRICS))
    assert [r["level"] for r in rows] == [1, 2]
    assert sorted(f for f in os.listdir(save_dir) if f.endswith("checkpoint.pth.tar")) == \
        ["1-checkpoint.pth.tar", "2-checkpoint.pth.tar"]


@pytest.mark.slow
def test_run_killed_mid_level_resumes_to_the_uninterrupted_result(tiny, tmp_path):
    data, init = tiny
    flags = ("--epochs", "4", "--prune_epoch", "2", "--lr", "0.05", "--train_step", "1", "--deterministic")
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    victim = subprocess.Popen(command("main_imp_adv.py", data, init, killed, *flags), cwd=ROOT, env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = paths.imp_checkpoint(killed, 1)
    deadline = time.time() + 240
    while not os.path.exists(first) and victim.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    rows = checkpoint.read_jsonl(os.path.join(killed, paths.METRICS))
    assert 1 <= len(rows) < 4, "the run was not interrupted mid-way"
    # the same command again, and the uninterrupted reference: their main() in this process (all the re-run gets
    # from the killed process are its files, whichever process reads them)
    assert main_imp_adv.main(command("main_imp_adv.py", data, init, killed, *flags)[2:]) == 0
    assert main_imp_adv.main(command("main_imp_adv.py", data, init, whole, *flags)[2:]) == 0
    assert "resuming from" in open(os.path.join(killed, paths.LOG)).read()

    def rows(save_dir):
        return untimed(checkpoint.read_jsonl(os.path.join(save_dir, paths.METRICS)))
    assert rows(killed) == rows(whole) and len(rows(whole)) == 4
    for level in (1, 2, 3):
        assert same_masks(ticket(killed, level), ticket(whole, level))
    assert pruning_utils.load_ticket(paths.imp_ticket(killed, 3))[1]["family"] == "aimp"
    for level in (1, 2):
        for path in (paths.imp_checkpoint, paths.imp_best):
            a, b = checkpoint.load_file(path(killed, level)), checkpoint.load_file(path(whole, level))
            assert a["epoch"] == b["epoch"] and a["best_acc1"] == b["best_acc1"]
            assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in b["state_dict"])


@pytest.mark.slow
def test_unchanged_script_runs_on_a_machine_without_gpu(tiny, tmp_path):
    data, init = tiny
    save_dir = str(tmp_path / "run")
    done = subprocess.run(["bash", os.path.join(ROOT, "script", "imp_pretrain", "imp_std.sh"), init, save_dir, data,
                           *TINY, "--epochs", "1", "--prune_epoch", "1"], cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=300, env={**ENV, "DOUBLEWIN_PY": sys.executable})
    assert done.returncode == 0, done.stderr[-3000:]
    log = open(os.path.join(save_dir, paths.LOG)).read()
    assert "--multiprocessing-distributed asked for one process per GPU, but no GPU is visible: one CPU process" in log
    assert os.path.exists(paths.imp_best(save_dir, 1)) and os.path.exists(paths.imp_ticket(save_dir, 2))


COUNTED = ("train_images", "eval_images", "forward_passes", "backward_passes", "flop")


@pytest.mark.slow
def test_two_gloo_ranks_with_sync_bn_count_what_one_process_counts(two_ranks, tmp_path):
    """A-IMP with --sync-bn on two gloo ranks (each trains and validates half of every batch, BatchNorm over
    both halves): each epoch's ledger holds the sum over the ranks, equal to one process's counts for the same
    images (12 train, 12 val: no padding), with 2 devices and device-seconds = wall seconds x 2."""
    one, two = str(tmp_path / "one"), two_ranks.sync_bn
    assert main_imp_adv.main(command("main_imp_adv.py", two_ranks.data, two_ranks.init, one, *SYNC_BN)[2:]) == 0
    assert "rank 0/2 on cpu (gloo)" in open(os.path.join(two, paths.LOG)).read()
    rows = {d: checkpoint.read_jsonl(os.path.join(d, paths.METRICS)) for d in (one, two)}
    assert len(rows[one]) == len(rows[two]) == 2
    for a, b in zip(rows[one], rows[two]):
        assert {k: b["cost"][k] for k in COUNTED} == {k: a["cost"][k] for k in COUNTED}
        assert (a["cost"]["train_images"], a["cost"]["eval_images"], a["cost"]["backward_passes"]) == (12, 12, 24)
        assert (a["cost"]["devices"], b["cost"]["devices"]) == (1, 2)
        assert b["cost"]["device_s"] == pytest.approx(2 * b["cost"]["wall_s"])
    tickets = [pruning_utils.load_ticket(paths.imp_ticket(d, 3))[1]["cost"] for d in (one, two)]
    assert {k: tickets[1][k] for k in COUNTED} == {k: tickets[0][k] for k in COUNTED} and tickets[0]["flop"] > 0
