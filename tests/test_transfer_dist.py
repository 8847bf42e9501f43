"""Transfer as two gloo ranks under torchrun (PIL loader on folder data; device pipeline on CIFAR-10): validation
and test accuracies are exact over the whole split (odd image counts over 2 ranks: a padding sampler would count
one twice), and rank 0 alone writes the run's files."""
from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import dataset
from datafiles import fabricate
import models
import pruning_utils
from infra.checkpoint import load_file
from infra.paths import LOG, RESULTS, SA_BEST
from training.engine import Step, evaluate
from recipes import argv, check_run, write_pretrained
from torchrunkit import torchrun


def unpacked(text: str, n: int) -> list[bool]:
    """results.json's per-image correctness (base64 numpy.packbits, big-endian bits) as a list."""
    return np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8), count=n).astype(bool).tolist()


SYNC_BN = ("--batch_size", "4", "--sync-bn")
# the fabricated CIFAR files have no official MD5 sums
FAKE_CHECKSUMS = "from datafiles import fabricate\nfabricate.allow_fake_checksums()"


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One torchrun of two gloo ranks (each launch costs three torch imports) running the three transfers the tests
    below read, one after the other: `pil`, a ticket on folder splits of 9 images; `device`, the dense model on
    CIFAR-10 (70 train, 21 test images) through the device pipeline; `sync_bn`, a ticket with --sync-bn on folder
    splits of 12 images. All adversarial, global batch 4."""
    tmp = tmp_path_factory.mktemp("two_ranks")
    odd = fabricate.make_image_folder(str(tmp / "odd"), n_per_class=3, splits=("train", "val", "test"))
    even = fabricate.make_image_folder(str(tmp / "even"), n_per_class=4, splits=("train", "val", "test"))
    cifar = fabricate.make_cifar10(str(tmp / "cifar"), n_train=70, n_test=21)
    pre = write_pretrained(str(tmp), 0.5)
    runs = [argv(tmp / "pil", odd, "folder", pre.init, mode="adv", ticket=pre.ticket, extra=("--batch_size", "4")),
            argv(tmp / "device", cifar, "cifar10", pre.init, mode="adv", extra=("--batch_size", "4")),
            argv(tmp / "sync_bn", even, "folder", pre.init, mode="adv", ticket=pre.ticket, extra=SYNC_BN)]
    done = torchrun(str(tmp), [("main_train_downstream", run) for run in runs], setup=FAKE_CHECKSUMS)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return SimpleNamespace(odd=odd, even=even, cifar=cifar, pre=pre, pil=tmp / "pil", device=tmp / "device",
                           sync_bn=tmp / "sync_bn")


@pytest.mark.slow
def test_two_gloo_ranks_report_exact_whole_split_accuracies(two_ranks):
    data, mask, out = two_ranks.odd, two_ranks.pre.mask, two_ranks.pil
    assert "rank 0/2 on cpu (gloo)" in open(out / LOG).read()
    res = check_run(out, mask, 2)
    assert res["world_size"] == 2 and (res["n_val"], res["n_test"], res["best_sa"]["test_images"]) == (9, 9, 9)

    splits = dataset.build_datasets("folder", data, image_size=16, resize_size=16)
    model = models.build("resnet_tiny", 3, small_input=True, mean=splits.mean, std=splits.std)
    best = load_file(str(out / SA_BEST))
    model.load_state_dict(pruning_utils.unmask_state_dict(best["state_dict"])[0])
    for split, key in ((splits.val, "val_sa"), (splits.test, "test_sa")):
        whole = evaluate(model, torch.utils.data.DataLoader(split, batch_size=5), Step(show_progress=False),
                         per_image=True)
        assert whole["n"] == 9 and whole["top1"] == pytest.approx(res["best_sa"][key], abs=1e-9), key
    assert unpacked(res["best_sa"]["test_sa_correct"], 9) == whole["correct"]  # both ranks' images, in order
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert rows[best["epoch"]]["val_sa"] == res["best_sa"]["val_sa"]
    assert json.load(open(out / RESULTS))["complete"] is True


@pytest.mark.slow
def test_two_gloo_ranks_on_the_device_pipeline_report_exact_whole_split_accuracies(two_ranks, fake_checksums):
    """CIFAR-10 through the device pipeline (the default for it) on two ranks: 7 val and 21 test images, so a
    padded evaluation shard would count one twice; the numbers equal a one-process evaluation of the best
    checkpoint over the same device batches."""
    data, out = two_ranks.cifar, two_ranks.device
    log = open(out / LOG).read()
    assert "rank 0/2 on cpu (gloo)" in log and "input pipeline: device" in log
    res = check_run(out, None, 2)
    assert res["pipeline"] == "device" and res["world_size"] == 2
    assert (res["n_val"], res["n_test"], res["best_sa"]["test_images"]) == (7, 21, 21)

    from transfer import pipeline
    splits = dataset.build_datasets("cifar10", data, image_size=16, resize_size=16)
    model = models.build("resnet_tiny", 10, small_input=True, mean=splits.mean, std=splits.std)
    best = load_file(str(out / SA_BEST))
    model.load_state_dict(pruning_utils.unmask_state_dict(best["state_dict"])[0])
    resize = pipeline.DeviceEvalResize(16, 16, channels_last=False)
    for split, key in ((splits.val, "val_sa"), (splits.test, "test_sa")):
        whole = evaluate(model, pipeline.DeviceBatches(*pipeline.uint8_tensors(split), 5, transform=resize),
                         Step(show_progress=False), per_image=True)
        assert whole["top1"] == pytest.approx(res["best_sa"][key], abs=1e-9), key
    assert unpacked(res["best_sa"]["test_sa_correct"], 21) == whole["correct"]  # both ranks' images, in order


COUNTED = ("train_images", "eval_images", "forward_passes", "backward_passes", "flop")


@pytest.mark.slow
def test_two_gloo_ranks_with_sync_bn_count_what_one_process_counts(two_ranks, tmp_path):
    """Adversarial transfer with --sync-bn on two gloo ranks (12 images per split: no padding): every epoch's
    ledger and results.json's total (the final tests too) hold the sum over the ranks, equal to one process's
    counts, with 2 devices and device-seconds = wall seconds x 2."""
    from transfer import cli
    data, pre, one, two = two_ranks.even, two_ranks.pre, tmp_path / "one", two_ranks.sync_bn
    assert cli.main(argv(one, data, "folder", pre.init, mode="adv", ticket=pre.ticket, extra=SYNC_BN)) == 0
    assert "rank 0/2 on cpu (gloo)" in open(two / LOG).read()
    rows = {d: [json.loads(line) for line in open(d / "metrics.jsonl")] for d in (one, two)}
    for a, b in zip(rows[one], rows[two], strict=True):
        assert {k: b["cost"][k] for k in COUNTED} == {k: a["cost"][k] for k in COUNTED}
        assert a["cost"]["train_images"] == 12 and (a["cost"]["devices"], b["cost"]["devices"]) == (1, 2)
        assert b["cost"]["device_s"] == pytest.approx(2 * b["cost"]["wall_s"])

    def per_test(d) -> dict:
        """results.json's total less the epochs': the final tests, per model tested (the last epoch's, and the
        best-SA and best-RA checkpoints' where they are other epochs: each run picks its own)."""
        res = json.load(open(d / RESULTS))
        tested = len({res[k]["epoch"] for k in ("last", "best_sa", "best_ra")})
        return {k: (res["cost"][k] - sum(r["cost"][k] for r in rows[d])) / tested for k in COUNTED}
    assert per_test(two) == per_test(one)
    assert per_test(one)["eval_images"] == 24 and per_test(one)["flop"] > 0  # 12 test images, SA and RA
