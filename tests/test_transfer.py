"""Ticket transfer end to end on fabricated CIFAR-10 / SVHN / ImageFolder data with resnet_tiny at 16 px:
files left behind, pruned weights exactly zero, sparsity, test numbers re-computed from the best checkpoints,
original-style tickets, wrong-arch tickets, resume after a crash, and the lr warm-up."""
from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import dataset
from transfer import cli
import models
import pruning_utils
from transfer import run as transfer_run
from transfer import results as transfer_results
from infra.checkpoint import load_file
from infra.paths import CHECKPOINT, INDICES, METRICS, RA_BEST, RESULTS, SA_BEST
from infra.distributed import DistEnv
from training.engine import Step, evaluate
from infra.errors import CheckpointError, ConfigError, run_cli
from recipes import ROW_KEYS, argv, check_run, untimed

def test_std_cifar10_ticket_files_zeros_and_test_numbers(tmp_path, cifar10_root, pretrained):
    out = tmp_path / "run"
    # the PIL pipeline, which the test numbers are re-computed with below (the device pipeline's own check is in
    # test_transfer_pipeline.py: its pixels are within 1/255 of these, so equal accuracies would be luck)
    assert cli.main(argv(out, cifar10_root, "cifar10", pretrained.init, ticket=pretrained.ticket,
                         extra=("--pipeline", "pil"))) == 0
    res = check_run(out, pretrained.mask, 2)
    assert (res["mode"], res["train_attack"], res["ticket"], res["ticket_meta"]["level"]) == \
        ("std", None, pretrained.ticket, 4)
    assert res["test_attack"]["eps_255"] == pytest.approx(8) and res["test_attack"]["steps"] == 2
    assert (res["n_train"], res["n_val"], res["n_test"]) == (54, 6, 20)
    # test SA re-computed from the SA-best checkpoint on the official test split
    splits = dataset.build_datasets("cifar10", cifar10_root, image_size=16, resize_size=16)
    model = models.build("resnet_tiny", 10, small_input=True, mean=splits.mean, std=splits.std)
    plain, _ = pruning_utils.unmask_state_dict(load_file(str(out / SA_BEST))["state_dict"])
    model.load_state_dict(plain)
    loader = torch.utils.data.DataLoader(splits.test, batch_size=7)
    assert evaluate(model, loader, Step(show_progress=False))["top1"] == res["best_sa"]["test_sa"]
    # the last epoch's test SA (what the original's standard transfer printed), from the last checkpoint's weights
    plain, _ = pruning_utils.unmask_state_dict(load_file(str(out / CHECKPOINT))["state_dict"])
    model.load_state_dict(plain)
    assert evaluate(model, loader, Step(show_progress=False))["top1"] == res["last"]["test_sa"]


def test_adv_svhn_dense_cosine_and_late_validation(tmp_path, svhn_root, pretrained):
    out = tmp_path / "run"
    cli.main(argv(out, svhn_root, "svhn", pretrained.init, mode="adv", ticket="none",
                  extra=("--scheduler", "cosine", "--eval_from", "1", "--data_number", "0.5", "--subset", "balanced",
                         "--seed", "3")))
    res = check_run(out, None, 2)
    rows = [json.loads(line) for line in open(out / METRICS)]
    assert all(ROW_KEYS <= r.keys() for r in rows)  # the one schema of both stages
    assert rows[0]["val_sa"] is None and rows[0]["val_ra"] is None and rows[1]["val_sa"] is not None
    assert [r["lr"] for r in rows] == pytest.approx([0.05, 0.05 * (1 + math.cos(math.pi / 2)) / 2])
    assert res["ticket"] is None and res["sparsity"] == 0.0
    assert res["n_train"] == 28  # half of 56: the 60 fabricated images minus 4 held out for validation
    balanced = dataset.build_datasets("svhn", svhn_root, dataset.DataFraction(0.5, subset="balanced", seed=3))
    assert (res["subset"], json.load(open(out / INDICES))) == ("balanced", balanced.train_indices)
    assert res["train_attack"]["eps"] == 8 / 255 and res["train_attack"]["alpha_255"] == pytest.approx(2)
    assert (res["train_attack"]["kind"], res["train_attack"]["steps"]) == ("pgd", 2)
    assert res["best_sa"]["epoch"] == res["best_ra"]["epoch"] == 1
    # the ledger: PGD-2 training, 3 passes per image; validation from epoch 1; the last epoch tested (SA, RA)
    assert [(r["cost"]["train_images"], r["cost"]["eval_images"]) for r in rows] == [(28, 0), (28, 2 * res["n_val"])]
    assert rows[0]["cost"]["forward_passes"] == rows[0]["cost"]["backward_passes"] == 28 * 3
    assert res["cost"]["train_images"] == 56 and res["cost"]["eval_images"] == 2 * res["n_val"] + 2 * res["n_test"]
    assert res["cost"]["flop"] > sum(r["cost"]["flop"] for r in rows) > 0


def test_adv_folder_ticket_with_autoattack(tmp_path, image_folder_root, pretrained):
    out = tmp_path / "run"
    cli.main(argv(out, image_folder_root, "folder", pretrained.init, mode="adv", ticket=pretrained.ticket, extra=(
        "--autoattack", "5", "--autoattack-version", "custom", "--autoattack-attacks", "apgd-ce")))
    res = check_run(out, pretrained.mask, 2)
    assert res["autoattack"]["n"] == 5 and res["autoattack"]["attacks"] == ["apgd-ce"]
    splits = dataset.build_datasets("folder", image_folder_root, image_size=16, resize_size=16)
    x = torch.stack([splits.test[i][0] for i in range(5)])
    y = torch.tensor([splits.test[i][1] for i in range(5)])
    for tag, name in (("best_sa", SA_BEST), ("best_ra", RA_BEST)):
        aa = res[tag]["test_aa_ra"]
        assert res[tag]["aa_images"] == 5 and res[tag]["aa_attacks"] == ["apgd-ce"]
        assert (aa * 5 / 100) == pytest.approx(round(aa * 5 / 100))
        model = models.build("resnet_tiny", 3, small_input=True, mean=splits.mean, std=splits.std).eval()
        model.load_state_dict(pruning_utils.unmask_state_dict(load_file(str(out / name))["state_dict"])[0])
        with torch.no_grad():
            clean = 100 * (model(x).argmax(1) == y).float().mean().item()
        assert aa <= clean + 1e-9  # AutoAttack only counts images it could not flip among the correct ones


@pytest.mark.parametrize("classes", [3, 4])
def test_autoattack_adapts_targeted_attacks_to_few_classes_and_is_exact(classes):
    """A constant classifier is robust exactly on its own class. With 4 classes apgd-t's 9 targets must be
    clamped to 3; with 3 classes the targeted DLR loss (top-4 logits) cannot run and apgd-t is dropped."""

    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, classes)
            with torch.no_grad():
                self.fc.weight.zero_()
                self.fc.bias.copy_(torch.arange(classes).float().roll(1))  # always predicts class 0

        def forward(self, x):
            return self.fc(x.mean(dim=(2, 3)))

    data = [(torch.rand(3, 4, 4), c) for c in (0, 0, 1, 2, 1, 0)]  # the 6th image is beyond --autoattack 5
    cfg = SimpleNamespace(autoattack=5, autoattack_version="custom", autoattack_attacks=("apgd-ce", "apgd-t"),
                          test_attack=SimpleNamespace(eps=8 / 255), seed=1, batch_size=4)
    run = ["apgd-ce", "apgd-t"] if classes == 4 else ["apgd-ce"]
    assert transfer_results.autoattack_ra(Constant(), data, cfg, DistEnv()) == (40.0, 5, run)


def test_original_style_ticket_transfers(tmp_path, image_folder_root, pretrained):
    """A checkpoint written the original's way: torch prune's weight_orig/weight_mask in {'state_dict': ...}."""
    model = models.resnet_tiny(1000)
    convs = [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d)]
    prune.global_unstructured(convs, pruning_method=prune.L1Unstructured, amount=0.3)
    sd = model.state_dict()
    masks = [sd[k] for k in sd if k.endswith("weight_mask")]
    expected = 1 - sum(float(m.sum()) for m in masks) / sum(m.numel() for m in masks)
    path = str(tmp_path / "2-checkpoint.pth.tar")
    torch.save({"epoch": 60, "state_dict": sd, "best_acc1": torch.tensor(51.2), "state_prune": 2}, path)
    out = tmp_path / "run"
    cli.main(argv(out, image_folder_root, "folder", pretrained.init, ticket=path, epochs=1, extra=("--lr", "0")))
    mask = {k[: -len("_mask")]: sd[k].bool() for k in sd if k.endswith("weight_mask")}
    res = check_run(out, mask, 1)
    assert res["sparsity"] == pytest.approx(expected, abs=1e-12) and res["ticket_meta"]["state_prune"] == 2
    # with lr 0 the weights are still the init's (not the ticket file's) under the ticket's mask; a fresh head
    init = torch.load(pretrained.init, weights_only=True)
    plain, _ = pruning_utils.unmask_state_dict(load_file(str(out / CHECKPOINT))["state_dict"])
    for k, v in init.items():
        if k in mask:
            assert torch.equal(plain[k], v * mask[k]), k
        elif k.endswith(("weight", "bias")) and not k.startswith("fc."):
            assert torch.equal(plain[k], v), k
    assert plain["fc.weight"].shape == (3, init["fc.weight"].shape[1])


def test_ticket_of_another_arch_fails_naming_the_first_mismatched_key(tmp_path, image_folder_root, pretrained, capsys):
    other = models.resnet18(10)
    path = str(tmp_path / "r18-ticket.pth.tar")
    pruning_utils.save_ticket(path, pruning_utils.full_mask(other), {})
    names = set(pruning_utils.prunable_names(models.resnet_tiny(3)))
    first = next(k for k in pruning_utils.prunable_names(other) if k not in names)
    with pytest.raises(SystemExit) as e:
        run_cli(cli.main, argv(tmp_path / "run", image_folder_root, "folder", pretrained.init, ticket=path))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert all(s in err for s in (path, "--arch resnet_tiny", repr(first)))
    assert not os.path.exists(tmp_path / "run" / CHECKPOINT)


@pytest.mark.slow
def test_resume_after_crash_gives_the_same_numbers(tmp_path, image_folder_root, pretrained, monkeypatch, caplog):
    common = dict(ticket=pretrained.ticket, extra=("--deterministic",))
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    cli.main(argv(whole, image_folder_root, "folder", pretrained.init, **common))

    real = transfer_run.train_one_epoch

    def crash_in_second_epoch(*args, epoch, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt("simulated crash")
        return real(*args, epoch=epoch, **kwargs)
    monkeypatch.setattr(transfer_run, "train_one_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        cli.main(argv(crashed, image_folder_root, "folder", pretrained.init, **common))
    monkeypatch.undo()
    assert load_file(str(crashed / CHECKPOINT))["epoch"] == 1 and not os.path.exists(crashed / RESULTS)
    with open(crashed / METRICS, "a") as f:  # as if it had died between epoch 1's metrics row and its checkpoint
        f.write(json.dumps({"epoch": 1, "val_sa": -1.0}) + "\n")
    cli.main(argv(crashed, image_folder_root, "folder", pretrained.init, **common))

    a, b = (json.load(open(d / RESULTS)) for d in (whole, crashed))
    assert (a["best_sa"], a["best_ra"], a["last"]) == (b["best_sa"], b["best_ra"], b["last"])
    rows = [untimed([json.loads(line) for line in open(d / METRICS)]) for d in (whole, crashed)]
    assert rows[0] == rows[1]
    sd_a, sd_b = (load_file(str(d / CHECKPOINT))["state_dict"] for d in (whole, crashed))
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)

    # a finished run is left alone; other settings in the same SAVE_DIR are refused
    stamp = os.stat(crashed / RESULTS).st_mtime_ns
    cli.main(argv(crashed, image_folder_root, "folder", pretrained.init, **common))
    assert os.stat(crashed / RESULTS).st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="lr"):
        cli.main(argv(crashed, image_folder_root, "folder", pretrained.init, **common) + ["--lr", "0.2"])


def test_require_checkpoint_flag_needs_a_checkpoint(tmp_path, image_folder_root, pretrained):
    with pytest.raises(CheckpointError, match="--require-checkpoint"):
        cli.main(argv(tmp_path / "run", image_folder_root, "folder", pretrained.init, extra=("--require-checkpoint",)))


def test_warmup_is_linear_per_step_as_the_original():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    seen = []
    for epoch in range(2):
        for _ in transfer_run.Warmup([0, 1, 2, 3], opt, 0.1, 2, epoch):
            seen.append(opt.param_groups[0]["lr"])
    # the original's warmup_lr: lr * (epoch * steps + step) / (warmup * steps), step counted from 1
    assert seen == pytest.approx([0.1 * s / 8 for s in range(1, 9)])
