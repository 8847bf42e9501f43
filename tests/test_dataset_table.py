"""The dataset table (datafiles/facts.py): a dataset added with one entry and its builder is a transfer flag's
choice, a campaign's dataset with its recipe's driver, estimated from the table's sizes, loaded by dataset.py and
served by the device pipeline with the table's transforms; the campaign reads the table without torch; a missing
recipe or a transform the device pipeline lacks is one clear error naming the dataset."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from torchvision import datasets as tvd

import dataset
from campaign import estimate, spec
from datafiles import facts, formats
from infra.distributed import DistEnv
from infra.errors import ConfigError, UserError
from models import flops
from recipes import argv
from transfer import cli, data as transfer_data, pipeline, run as transfer_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADV = os.path.join(ROOT, "script", "train_downstream")


def build_tiny(root: str, download: bool) -> formats.RawSplits:
    """A made-up dataset: CIFAR-10's python pickles, the last fifth of the training file held out for validation,
    the test file as test."""
    train, test = tvd.CIFAR10(root, train=True), tvd.CIFAR10(root, train=False)
    cut = len(train) * 4 // 5
    return formats.RawSplits(train, range(cut), train, range(cut, len(train)), test, len(train.classes))


# the one entry (the conftest's CIFAR-10 files: 60 training images, 20 test images)
TINY = facts.Dataset("test_dataset_table:build_tiny", 10, facts.CIFAR10_MEAN, facts.CIFAR10_STD,
                     facts.Sizes(48, 12, 20), "adv_svhn", device=True)


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(facts.DATASETS, "tiny", TINY)
    return TINY


def _parse(*extra: str):
    return cli.config_from_args(cli.get_args_parser().parse_args(["--init", "w.pth", "--save_dir", "s", *extra]))[0]


def _campaign(tmp_path, datasets: list[str], modes: list[str]) -> spec.Campaign:
    weights = tmp_path / "init.pth"
    weights.write_bytes(b"")
    path = tmp_path / "c.toml"
    path.write_text(f'root = "{tmp_path / "runs"}"\ndata = "{tmp_path / "data"}"\n[[init]]\nname = "r"\n'
                    f'weights = "{weights}"\ndatasets = {json.dumps(datasets)}\nmodes = {json.dumps(modes)}\n'
                    'overrides = ["--arch", "resnet_tiny", "--image-size", "32"]\n')
    return spec.load(str(path))


# ---------------------------------------------------------------------------- one entry, everywhere
def test_an_entry_is_a_transfer_flag_choice_and_its_pipeline_is_the_tables(tiny):
    cfg = _parse("--dataset", "tiny")
    assert cfg.dataset == "tiny" and transfer_run.resolve_pipeline(cfg) == "device"
    assert transfer_run.resolve_pipeline(_parse("--dataset", "tiny", "--pipeline", "pil")) == "pil"


def test_without_the_entry_the_flag_refuses_the_name(capsys):
    with pytest.raises(SystemExit):
        _parse("--dataset", "tiny")
    assert "invalid choice: 'tiny'" in capsys.readouterr().err


def test_a_campaign_runs_an_entry_with_its_recipes_driver_and_estimates_it_from_the_table(tmp_path, tiny):
    runs = {(r.dataset, r.mode): r for r in _campaign(tmp_path, ["tiny", "svhn", "cifar100"], ["std", "adv"]).runs}
    adv = runs["tiny", "adv"].command
    assert adv[1] == os.path.join(ADV, "adv_svhn.sh") and adv[2:6] == (
        str(tmp_path / "init.pth"), str(tmp_path / "runs" / "r" / "tiny-1" / "dense" / "adv" / "s1"), "",
        "--dataset") and adv[6] == "tiny"  # adv_svhn.sh fixes svhn: told the dataset after its positionals
    assert runs["tiny", "std"].command[1:3] == (os.path.join(ADV, "std.sh"), "tiny")
    # the paper's datasets keep their commands: svhn's adv driver takes no DATASET, the others adv_cifar.sh's
    assert runs["svhn", "adv"].command[1] == os.path.join(ADV, "adv_svhn.sh") and "--dataset" not in \
        runs["svhn", "adv"].command and runs["svhn", "adv"].command[2] == str(tmp_path / "init.pth")
    assert runs["cifar100", "adv"].command[1:3] == (os.path.join(ADV, "adv_cifar.sh"), "cifar100")
    p = estimate.passes(runs["tiny", "adv"])  # adv_svhn.sh: 80 epochs, PGD-10, validation from epoch 0, PGD-20 tests
    assert (p.train, p.attack, p.eval) == (48 * 80, 48 * 80 * 10 + (80 * 12 + 3 * 20) * 20, 2 * (80 * 12 + 3 * 20))
    per = estimate.per_image(runs["tiny", "adv"])
    assert per == {k: flops.per_image("resnet_tiny", 32, k, num_classes=10) for k in flops.KINDS}


def test_dataset_py_loads_an_entry_with_the_tables_sizes_and_transforms(cifar10_root, tiny):
    s = dataset.build_datasets("tiny", cifar10_root, image_size=16, resize_size=20)
    assert (len(s.train), len(s.val), len(s.test)) == (tiny.sizes.train, tiny.sizes.val, tiny.sizes.test)
    assert (s.num_classes, s.mean, s.std) == (10, facts.CIFAR10_MEAN, facts.CIFAR10_STD)
    assert [type(t).__name__ for t in s.train.transform.transforms] == ["RandomResizedCrop", "RandomHorizontalFlip",
                                                                        "ToTensor"]
    assert [type(t).__name__ for t in s.test.transform.transforms] == ["Resize", "CenterCrop", "ToTensor"]
    cfg = transfer_run.TransferConfig(save_dir="unused", dataset="tiny", data=cifar10_root, batch_size=8,
                                      image_size=16, resize_size=20, channels_last=False, workers=0)
    data = transfer_data.run_data("device", s, cfg, DistEnv(), 8)
    assert (data.train.transform.size, data.train.transform.scale) == ((16, 16), pipeline.SCALE)
    assert (data.val.transform.size, data.val.transform.resize_size) == (16, 20)
    x, y = next(iter(data.train_epoch(0)))
    assert x.shape == (8, 3, 16, 16) and len(y) == 8


@pytest.mark.slow
def test_a_transfer_run_on_an_entry_completes(tmp_path, cifar10_root, pretrained, tiny):
    out = tmp_path / "run"
    assert cli.main(argv(out, cifar10_root, "tiny", pretrained.init, epochs=1)) == 0
    results = json.load(open(out / "results.json"))
    assert results["dataset"] == "tiny" and results["complete"] is True


def test_the_campaign_reads_the_table_without_torch():
    code = ("import sys; sys.modules.update(torch=None, torchvision=None, numpy=None); sys.path.insert(0, sys.argv[1]);"
            "from campaign import estimate, spec; from datafiles import facts;"
            "print(facts.downstream(), spec.driver('adv', 'svhn')[0], estimate.table_size('svhn', 'test'))")
    out = subprocess.run([sys.executable, "-I", "-c", code, ROOT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["('cifar10',", "'cifar10_2',", "'cifar100',", "'svhn',", "'folder',", "'visda')",
                                  os.path.join(ADV, "adv_svhn.sh"), "26032"]


# ---------------------------------------------------------------------------- clear errors
def test_a_dataset_without_an_adversarial_recipe_is_named_by_the_campaign(tmp_path, monkeypatch):
    monkeypatch.setitem(facts.DATASETS, "tiny", facts.Dataset("m:f", 10, facts.CIFAR10_MEAN, facts.CIFAR10_STD,
                                                              None, None))
    assert [r.mode for r in _campaign(tmp_path, ["tiny"], ["std"]).runs] == ["std"]
    with pytest.raises(spec.SpecError, match=r"init\[0\]\.modes: adv on tiny: dataset 'tiny' has no adversarial "
                                             r"transfer recipe: set its adv_recipe in datafiles/facts.py to one of "
                                             r"adv_cifar, adv_svhn"):
        _campaign(tmp_path, ["tiny"], ["std", "adv"])


def test_a_device_entry_with_a_transform_the_device_pipeline_lacks_is_refused(monkeypatch):
    monkeypatch.setitem(facts.DATASETS, "tiny", facts.Dataset("m:f", 10, facts.CIFAR10_MEAN, facts.CIFAR10_STD,
                                                              None, "adv_cifar", device=True, eval_transform="squeeze"))
    for asked in ("auto", "device"):
        with pytest.raises(ConfigError, match="dataset 'tiny' is marked device=True in datafiles/facts.py but the "
                                              "device pipeline has no eval transform 'squeeze' .*set device=False"):
            transfer_run.resolve_pipeline(transfer_run.TransferConfig(save_dir="s", dataset="tiny", pipeline=asked))
    assert transfer_run.resolve_pipeline(transfer_run.TransferConfig(save_dir="s", dataset="tiny",
                                                                     pipeline="pil")) == "pil"


def test_entries_are_checked_and_what_they_name_must_exist(monkeypatch):
    with pytest.raises(ValueError, match="adv_recipe 'adv_mnist': expected one of adv_cifar, adv_svhn or None"):
        facts.Dataset("m:f", 10, facts.CIFAR10_MEAN, facts.CIFAR10_STD, None, "adv_mnist")
    with pytest.raises(ValueError, match="builder 'formats.tiny': expected 'module:function'"):
        facts.Dataset("formats.tiny", 10, facts.CIFAR10_MEAN, facts.CIFAR10_STD, None, None)
    monkeypatch.setitem(facts.DATASETS, "tiny", facts.Dataset("datafiles.formats:tiny", 10, facts.CIFAR10_MEAN,
                                                              facts.CIFAR10_STD, None, None, train_transform="jitter"))
    with pytest.raises(UserError, match="dataset 'tiny': its builder 'datafiles.formats:tiny' .*cannot be loaded"):
        dataset.build_datasets("tiny", ".")
    with pytest.raises(UserError, match="dataset 'tiny': its train_transform 'jitter' .*not one of dataset.py's "
                                        "crop_flip, visda_crop_flip"):
        dataset.transform("tiny", "train")


# ---------------------------------------------------------------------------- the paper's entries
def test_the_paper_datasets_entries_resolve_and_their_sizes_are_the_official_splits():
    for name, entry in facts.DATASETS.items():
        assert callable(dataset.builder(name)) and dataset.transform(name, "train") and dataset.transform(name, "eval")
        assert entry.adv_recipe is not None or not entry.downstream, name
        if entry.device:
            assert entry.train_transform in pipeline.TRAIN_TRANSFORMS and entry.eval_transform in \
                pipeline.EVAL_TRANSFORMS, name
    for name, official in (("cifar10", 50000), ("cifar10_2", 50000), ("cifar100", 50000), ("svhn", 73257)):
        train, val = formats.train_val_split(official, official)
        assert (len(train), len(val)) == (facts.DATASETS[name].sizes.train, facts.DATASETS[name].sizes.val)
    paper = ("imagenet", "cifar10", "cifar10_2", "cifar100", "svhn", "folder", "visda")
    assert [n for n in paper if facts.DATASETS[n].device] == ["cifar10", "cifar100", "svhn"]
    assert {n: facts.DATASETS[n].adv_recipe for n in paper} == {
        "imagenet": None, "cifar10": "adv_cifar", "cifar10_2": "adv_cifar", "cifar100": "adv_cifar",
        "svhn": "adv_svhn", "folder": "adv_cifar", "visda": "adv_cifar"}  # as before the table: all but SVHN adv_cifar
