"""Where transfer's batches are augmented (--pipeline): auto is the device path for CIFAR/SVHN and PIL for
folder data; the device path resumes exactly, is a function of the seed, shards evaluation exactly, gives
AutoAttack the PGD test's pixels, and results.json records the choice; fused SGD survives resume. Fabricated
CIFAR-10 with resnet_tiny at 16 px, as in test_transfer."""
from __future__ import annotations

import base64
import json
import os

import numpy as np
import pytest
import pyautoattack
import torch
from torch import nn

import attacks
import dataset
from transfer import pipeline
from transfer import cli
import models
import pruning_utils
from transfer import data as transfer_data
from transfer import run as transfer_run
from infra import reproducibility
from infra.checkpoint import load_file
from infra.paths import CHECKPOINT, CONFIG, LOG, METRICS, RESULTS, SA_BEST
from infra import flags
from infra.distributed import DistEnv
from training.engine import Step, evaluate
from infra.errors import ConfigError, run_cli
from recipes import argv, check_run, run_untimed as untimed

CPU = torch.device("cpu")


def device_data(root: str, *, seed: int = 1, rank: int = 0, world_size: int = 1, pipeline: str = "device"):
    cfg = transfer_run.TransferConfig(save_dir="unused", dataset="cifar10", data=root, seed=seed, batch_size=16,
                                      image_size=16, resize_size=16, channels_last=False, workers=0)
    splits = dataset.build_datasets("cifar10", root, image_size=16, resize_size=16)
    return transfer_data.run_data(pipeline, splits, cfg, DistEnv(rank=rank, world_size=world_size), 16 // world_size)


def test_both_pipelines_serve_one_interface(cifar10_root):
    """The device and the PIL data of a run answer the loop the same way: an epoch's batches, the val and test
    batches (every image once), and AutoAttack's test images by index."""
    for name, kind in (("device", transfer_data.DeviceData), ("pil", transfer_data.HostData)):
        data = device_data(cifar10_root, pipeline=name)
        assert isinstance(data, kind) and data.name == name and data.describe()
        x, y = next(iter(data.train_epoch(0)))
        assert x.shape == (16, 3, 16, 16) and x.dtype == torch.float32 and len(y) == 16
        for split in ("val", "test"):
            labels = torch.cat([y for _, y in getattr(data, split)]).tolist()
            assert labels == [getattr(data.splits, split)[i][1] for i in range(len(getattr(data.splits, split)))]
        x, y = data.fetch([2, 0])
        assert x.shape == (2, 3, 16, 16) and y.tolist() == [data.splits.test[2][1], data.splits.test[0][1]]


# ---------------------------------------------------------------------------- choosing the pipeline
@pytest.mark.parametrize("name,asked,used", [
    ("cifar10", "auto", "device"), ("cifar100", "auto", "device"), ("svhn", "auto", "device"),
    ("folder", "auto", "pil"), ("cifar10", "pil", "pil"), ("svhn", "device", "device"), ("folder", "pil", "pil"),
    ("cifar10_2", "auto", "pil"), ("visda", "auto", "pil")])  # the original's variants: their own PIL transforms
def test_auto_is_device_for_uint8_arrays_and_pil_for_folders(name, asked, used):
    cfg = transfer_run.TransferConfig(save_dir="s", dataset=name, pipeline=asked)
    assert transfer_run.resolve_pipeline(cfg) == used


def test_flags_default_to_auto_and_fused_and_both_change_the_config():
    parse = cli.get_args_parser().parse_args
    base = ["--init", "w.pth", "--save_dir", "s", "--dataset", "svhn"]
    cfg = cli.config_from_args(parse(base))[0]
    assert (cfg.pipeline, cfg.fused_sgd) == ("auto", True)
    cfg = cli.config_from_args(parse(base + ["--pipeline", "pil", "--no-fused-sgd"]))[0]
    assert (cfg.pipeline, cfg.fused_sgd) == ("pil", False)
    assert not {"pipeline", "fused_sgd"} & flags.result_free(cli.TransferConfig)  # both change a run's numbers


def test_device_pipeline_with_folder_data_is_one_line_naming_the_flag(tmp_path, image_folder_root, pretrained, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        run_cli(cli.main, argv(out, image_folder_root, "folder", pretrained.init, extra=("--pipeline", "device")))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert all(s in err for s in ("--pipeline device", "--dataset folder", "--pipeline pil"))
    assert not os.path.exists(out)  # refused while the flags are converted, before SAVE_DIR is made


# ---------------------------------------------------------------------------- whole runs
@pytest.mark.slow
def test_device_run_resumes_to_the_uninterrupted_numbers_and_repeats_with_its_seed(tmp_path, cifar10_root, pretrained,
                                                                                    monkeypatch):
    """Adversarial, warm-up, ticket, 3 epochs: an uninterrupted run, a run crashed in epoch 1 and re-run, and
    a second uninterrupted run give the same rows, results and weights (crops and order replay exactly)."""
    common = dict(mode="adv", ticket=pretrained.ticket, epochs=3, extra=("--deterministic", "--warmup", "2"))
    whole, crashed, twin = tmp_path / "whole", tmp_path / "crashed", tmp_path / "twin"
    seen = []
    real = transfer_run.train_one_epoch

    def recording(net, loader, *args, epoch, **kwargs):
        seen.append((epoch, type(loader).__name__, type(getattr(loader, "loader", loader)).__name__, len(loader)))
        return real(net, loader, *args, epoch=epoch, **kwargs)

    with monkeypatch.context() as m:  # (not monkeypatch.undo(): that would undo the fake checksums too)
        m.setattr(transfer_run, "train_one_epoch", recording)
        cli.main(argv(whole, cifar10_root, "cifar10", pretrained.init, **common))
    # the warm-up wraps the device batches in its two epochs; 54 images in batches of 16
    assert seen == [(0, "Warmup", "DeviceBatches", 4), (1, "Warmup", "DeviceBatches", 4),
                    (2, "DeviceBatches", "DeviceBatches", 4)]

    def crash_in_second_epoch(*args, epoch, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt("simulated crash")
        return real(*args, epoch=epoch, **kwargs)
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(transfer_run, "train_one_epoch", crash_in_second_epoch)
        cli.main(argv(crashed, cifar10_root, "cifar10", pretrained.init, **common))
    assert load_file(str(crashed / CHECKPOINT))["epoch"] == 1 and not os.path.exists(crashed / RESULTS)
    cli.main(argv(crashed, cifar10_root, "cifar10", pretrained.init, **common))
    cli.main(argv(twin, cifar10_root, "cifar10", pretrained.init, **common))

    res = check_run(whole, pretrained.mask, 3)
    assert res["pipeline"] == "device" and len({r["train_loss"] for r in untimed(whole)[1]}) == 3
    assert untimed(whole) == untimed(crashed) == untimed(twin)
    states = [load_file(str(d / CHECKPOINT)) for d in (whole, crashed, twin)]
    assert all(torch.equal(states[0]["state_dict"][k], s["state_dict"][k]) for s in states[1:]
               for k in states[0]["state_dict"])
    for s in states:  # fused SGD's state saved and, on resume, loaded back into a fused optimizer
        assert s["optimizer"]["param_groups"][0]["fused"] is True and s["optimizer"]["state"]
    assert "resuming from" in open(crashed / LOG).read()
    assert open(whole / LOG).read().count("input pipeline: device (--pipeline auto)") == 1

    # the pipeline and the fused optimizer are part of the run's settings: switching either is refused
    for flags, key in ((("--pipeline", "pil"), "pipeline"), (("--no-fused-sgd",), "fused_sgd")):
        with pytest.raises(ConfigError, match=key):
            cli.main(argv(whole, cifar10_root, "cifar10", pretrained.init, **common) + list(flags))


def test_device_test_numbers_and_autoattack_use_the_same_pixels(tmp_path, cifar10_root, pretrained, monkeypatch):
    """Test SA re-computed from the SA-best checkpoint on DeviceEvalResize batches equals results.json's, and
    AutoAttack is handed exactly those images (the attack itself is stubbed: every image survives)."""
    handed = []

    def stub(self, x, y, /, *, batch_size=250, state_path=None):
        handed.append((x.clone(), y.clone(), batch_size))
        return x, y
    monkeypatch.setattr(pyautoattack.AutoAttack, "run_standard_evaluation", stub)
    out = tmp_path / "run"
    cli.main(argv(out, cifar10_root, "cifar10", pretrained.init, epochs=1, extra=(
        "--autoattack", "5", "--autoattack-version", "custom", "--autoattack-attacks", "apgd-ce",
        "--batch_size", "4")))
    res = check_run(out, None, 1)
    assert res["pipeline"] == "device" and res["best_sa"]["test_aa_ra"] == 100.0
    assert res["best_sa"]["aa_images"] == 5 and res["best_sa"]["test_images"] == 20

    splits = dataset.build_datasets("cifar10", cifar10_root, image_size=16, resize_size=16)
    images, labels = pipeline.uint8_tensors(splits.test)
    resize = pipeline.DeviceEvalResize(16, 16, channels_last=False)
    assert len(handed) == 1  # best SA and best RA are the same epoch: tested once
    x, y, bs = handed[0]
    assert torch.equal(x, resize(images[:5])) and torch.equal(y, labels[:5]) and bs == 4
    # the PIL transform's pixels differ (within 1/255): AutoAttack does not see those
    pil = torch.stack([splits.test[i][0] for i in range(5)])
    assert (x - pil).abs().max() <= 1 / 255 + 1e-6 and not torch.equal(x, pil)

    model = models.build("resnet_tiny", 10, small_input=True, mean=splits.mean, std=splits.std)
    model.load_state_dict(pruning_utils.unmask_state_dict(load_file(str(out / SA_BEST))["state_dict"])[0])
    batches = pipeline.DeviceBatches(images, labels, 7, transform=resize)
    again = evaluate(model, batches, Step(show_progress=False), per_image=True)
    assert again["top1"] == res["best_sa"]["test_sa"]
    # per-image correctness, packed in the test split's order (big-endian bits), is the same test's
    bits = np.unpackbits(np.frombuffer(base64.b64decode(res["best_sa"]["test_sa_correct"]), np.uint8), count=20)
    assert bits.astype(bool).tolist() == again["correct"] and 100 * bits.mean() == pytest.approx(again["top1"])
    assert res["best_sa"]["test_ra_correct"] == res["last"]["test_ra_correct"]  # one epoch: the same model


def test_pil_pipeline_on_cifar_is_recorded_and_unfused_sgd_runs(tmp_path, cifar10_root, pretrained):
    out = tmp_path / "run"
    cli.main(argv(out, cifar10_root, "cifar10", pretrained.init, epochs=1, extra=("--pipeline", "pil", "--no-fused-sgd")))
    res = check_run(out, None, 1)
    assert res["pipeline"] == "pil" and json.load(open(out / CONFIG))["pipeline"] == "pil"
    assert "input pipeline: pil (--pipeline pil)" in open(out / LOG).read()
    assert not load_file(str(out / CHECKPOINT))["optimizer"]["param_groups"][0]["fused"]


# ---------------------------------------------------------------------------- the batches themselves
def test_training_batches_are_a_function_of_seed_epoch_and_rank(cifar10_root):
    def epoch_batches(data: transfer_data.DeviceData, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(data.train_epoch(epoch))

    a, b = device_data(cifar10_root), device_data(cifar10_root)
    first = epoch_batches(a, 0)
    assert [len(y) for _, y in first] == [16, 16, 16, 6] and first[0][0].shape == (16, 3, 16, 16)
    second = epoch_batches(a, 1)
    # a fresh pipeline (a resumed run) jumping straight to epoch 1 sees the same batches, pixel for pixel
    for (xa, ya), (xb, yb) in zip(second, epoch_batches(b, 1)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(first[0][0], second[0][0])  # another epoch: other order and crops
    other = epoch_batches(device_data(cifar10_root, seed=2), 0)
    assert not torch.equal(torch.cat([y for _, y in first]), torch.cat([y for _, y in other]))
    assert not torch.equal(first[0][0], other[0][0])
    # the same images in another order get other crops too: not the order's random stream replayed
    assert reproducibility.augment_seed(1, 0) != reproducibility.epoch_generator(1, 0).initial_seed()
    assert reproducibility.augment_seed(1, 0, 0) != reproducibility.augment_seed(1, 0, 1)


@pytest.mark.parametrize("world_size", [2, 3])
def test_eval_shards_cover_every_image_exactly_once(cifar10_root, world_size):
    """Ranks built with rank/world_size directly (no processes): rank r evaluates images r, r+W, ..., the
    whole split once in all (6 val and 20 test images: with 3 ranks the shards are unequal, never padded)."""
    whole = device_data(cifar10_root)
    ranks = [device_data(cifar10_root, rank=r, world_size=world_size) for r in range(world_size)]
    for split in ("val", "test"):
        xs, ys = map(torch.cat, zip(*getattr(whole, split)))
        n = len(ys)
        shards = [list(getattr(data, split)) for data in ranks]
        counts = [sum(len(y) for _, y in shard) for shard in shards]
        assert sum(counts) == n and counts == [len(range(r, n, world_size)) for r in range(world_size)]
        for r, shard in enumerate(shards):
            x, y = map(torch.cat, zip(*shard))
            assert torch.equal(x, xs[r::world_size]) and torch.equal(y, ys[r::world_size])
    # training shards: equal lengths (padded like DistributedSampler), together the whole split each epoch
    train = [data.train_epoch(0)._indices() for data in ranks]
    assert len({len(t) for t in train}) == 1 and sum(map(len, train)) == 54 + (-54) % world_size
    assert torch.equal(torch.cat(train).unique(), torch.arange(54))


def test_warmup_steps_the_lr_over_device_batches():
    images, labels = torch.zeros(10, 3, 4, 4, dtype=torch.uint8), torch.arange(10)
    batches = pipeline.DeviceBatches(images, labels, 4, transform=pipeline.DeviceAugment(4), shuffle=True)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    seen = []
    for epoch in range(2):
        batches.set_epoch(epoch)
        for x, _ in transfer_run.Warmup(batches, opt, 0.1, 2, epoch):
            assert x.shape[1:] == (3, 4, 4)
            seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx([0.1 * s / 6 for s in range(1, 7)])


def test_a_run_continues_only_with_the_flags_that_change_its_numbers(tmp_path, cifar10_root, pretrained, capsys,
                                                                     monkeypatch):
    """A run with --pipeline pil --no-fused-sgd --attack-loss sum (the summed loss reaching the PGD attack) is
    refused when continued with the defaults, naming each differing setting; with its flags it continues."""
    out = tmp_path / "run"
    args = argv(out, cifar10_root, "cifar10", pretrained.init, epochs=1)
    old_flags = ["--pipeline", "pil", "--no-fused-sgd", "--attack-loss", "sum"]
    calls, summed = [], attacks.LOSSES["sum"]
    monkeypatch.setitem(attacks.LOSSES, "sum", lambda out, y: calls.append(len(y)) or summed(out, y))
    assert cli.main(args + old_flags) == 0
    assert calls, "--attack-loss sum must reach the PGD val/test attack"
    os.remove(os.path.join(out, RESULTS))  # stopped during its final test: a checkpoint, no results yet
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(cli.main, args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--restart" in err
    assert "pipeline ('pil' -> 'auto')" in err and "fused_sgd (False -> True)" in err
    assert "attack_loss ('sum' -> 'mean')" in err
    assert not os.path.exists(os.path.join(out, RESULTS))
    assert json.load(open(os.path.join(out, CONFIG)))["pipeline"] == "pil"
    assert cli.main(args + old_flags) == 0
    results = json.load(open(os.path.join(out, RESULTS)))
    assert (results["pipeline"], results["attack_loss"]) == ("pil", "sum")


@pytest.mark.slow
def test_compile_flag_compiles_in_place_and_files_keep_the_plain_names(tmp_path, cifar10_root, pretrained,
                                                                      eager_compile):
    """--compile reaches nn.Module.compile (dynamo's eager backend here, so no inductor build): an adversarial
    ticket run completes, pruned weights stay zero, and the checkpoints hold the plain model's names."""
    out = tmp_path / "c"
    assert cli.main(argv(out, cifar10_root, "cifar10", pretrained.init, mode="adv", ticket=pretrained.ticket, epochs=1,
                         extra=("--compile",))) == 0
    assert eager_compile == ["ResNet"]
    check_run(out, pruning_utils.load_ticket(pretrained.ticket)[0], 1)
    state = load_file(os.path.join(out, SA_BEST))["state_dict"]
    assert not [k for k in state if "_orig_mod" in k]
    assert json.load(open(os.path.join(out, CONFIG)))["compile"] is True


@pytest.mark.slow
def test_sync_bn_converts_batchnorm_and_changes_nothing_on_one_process(tmp_path, cifar10_root, pretrained,
                                                                      monkeypatch):
    """--sync-bn (multi-GPU: BatchNorm over the global batch, as the single-GPU original) swaps every BatchNorm
    for SyncBatchNorm; on one process that is plain BatchNorm, so the numbers are bit-identical to a run without."""
    converted = []
    convert = nn.SyncBatchNorm.convert_sync_batchnorm

    def spy(module, process_group=None):
        out = convert(module, process_group)  # recursive: calls the spy for every child too
        if hasattr(module, "fc"):  # the model itself
            converted.append(sum(isinstance(m, nn.SyncBatchNorm) for m in out.modules()))
        return out
    monkeypatch.setattr(nn.SyncBatchNorm, "convert_sync_batchnorm", spy)
    results = []
    for flags in ((), ("--sync-bn",)):
        out = tmp_path / ("sync" if flags else "plain")
        assert cli.main(argv(out, cifar10_root, "cifar10", pretrained.init, mode="adv", epochs=1, extra=flags)) == 0
        results.append(json.load(open(os.path.join(out, RESULTS))))
        assert json.load(open(os.path.join(out, CONFIG)))["sync_bn"] is bool(flags)
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in models.build("resnet_tiny", 10, small_input=True).modules())
    assert converted == [bns] and bns > 0
    assert [(r["best_sa"], r["best_ra"], r["last"]) for r in results[:1]] == \
        [(r["best_sa"], r["best_ra"], r["last"]) for r in results[1:]]
