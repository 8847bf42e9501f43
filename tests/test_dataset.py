"""dataset.py: the original's splits, data fractions, transforms and clear errors, on data fabricated in the true
on-disk formats and read through torchvision's real loaders."""
from __future__ import annotations

import json
import math
import os
from collections import Counter

import numpy as np
import pytest
import torch
import torchvision
from torch.utils.data import DataLoader

from datafiles import facts
from datafiles import formats as data_formats
import dataset
from datafiles import fabricate
import readers
from infra.errors import DataError, UserError

CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def as_tensor(images: np.ndarray) -> torch.Tensor:
    """HWC uint8 -> CHW float in [0, 1], as ToTensor makes it."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


@pytest.fixture
def no_download(monkeypatch):
    """Any attempt to fetch data fails loudly; returns the list of attempted calls."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("download attempted")
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", refuse)
    monkeypatch.setattr(torchvision.datasets.svhn, "download_url", refuse)
    return calls


# ---------------------------------------------------------------------------- splits
def test_official_sizes_give_protocol_boundaries():
    assert data_formats.train_val_split(50000, official_n=50000) == (range(0, 45000), range(45000, 50000))
    assert data_formats.train_val_split(73257, official_n=73257) == (range(0, 68257), range(68257, 73257))


def test_small_files_hold_out_the_same_fraction():
    assert data_formats.train_val_split(60, official_n=50000) == (range(0, 54), range(54, 60))
    assert data_formats.train_val_split(60, official_n=73257) == (range(0, 56), range(56, 60))  # round(4.09)
    assert data_formats.train_val_split(3, official_n=50000) == (range(0, 2), range(2, 3))  # at least one val image
    with pytest.raises(DataError, match="too small"):
        data_formats.train_val_split(1, official_n=50000)


def test_cifar10_splits_are_exact_images_of_the_files(cifar10_root):
    s = dataset.build_datasets("cifar10", cifar10_root, image_size=32, resize_size=32)
    images, labels = readers.read_cifar_images(cifar10_root, CIFAR10_TRAIN, "cifar-10-batches-py")
    test_images, test_labels = readers.read_cifar_images(cifar10_root, ["test_batch"], "cifar-10-batches-py")
    assert (len(s.train), len(s.val), len(s.test)) == (54, 6, 20)
    assert s.train_indices == list(range(54)) and s.train.targets == labels[:54]
    val_x = torch.stack([s.val[j][0] for j in range(6)])
    assert torch.equal(val_x, as_tensor(images[54:]))  # eval transform at 32/32 is the identity
    assert [s.val[j][1] for j in range(6)] == labels[54:]
    assert torch.equal(torch.stack([s.test[j][0] for j in range(20)]), as_tensor(test_images))
    assert [s.test[j][1] for j in range(20)] == test_labels
    assert (s.num_classes, s.mean, s.std) == (10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def test_cifar100_reads_fine_labels(cifar100_root):
    s = dataset.build_datasets("cifar100", cifar100_root, image_size=32, resize_size=32)
    images, labels = readers.read_cifar_images(cifar100_root, ["train"], "cifar-100-python")
    assert (len(s.train), len(s.val), len(s.test), s.num_classes) == (54, 6, 20, 100)
    assert s.val.targets == labels[54:] and max(labels) >= 50  # fine labels, not the 20 coarse ones
    assert torch.equal(s.val[5][0], as_tensor(images[59:])[0])


def test_svhn_split_and_label_10_is_digit_0(svhn_root):
    s = dataset.build_datasets("svhn", svhn_root, image_size=32, resize_size=32)
    images, raw = readers.read_svhn(svhn_root, "train")
    assert 10 in raw and 0 not in raw
    digits = np.where(raw == 10, 0, raw).tolist()
    assert (len(s.train), len(s.val), len(s.test)) == (56, 4, 20)
    assert s.train.targets == digits[:56] and [s.val[j][1] for j in range(4)] == digits[56:]
    assert torch.equal(torch.stack([s.val[j][0] for j in range(4)]), as_tensor(images[56:]))
    assert s.mean == (0.4377, 0.4438, 0.4728)


# ---------------------------------------------------------------------------- data-limited transfer
def test_data_number_keeps_the_first_fraction(cifar10_root):
    _, labels = readers.read_cifar_images(cifar10_root, CIFAR10_TRAIN, "cifar-10-batches-py")
    s = dataset.build_datasets("cifar10", cifar10_root, dataset.DataFraction(0.1))
    assert s.train_indices == [0, 1, 2, 3, 4]  # int(54 * 0.1), as the original's int(45000 * data_rate)
    assert [s.train[i][1] for i in range(5)] == labels[:5]
    assert len(s.val) == 6  # validation does not shrink
    assert dataset.build_datasets("cifar10", cifar10_root, dataset.DataFraction(0.001)).train_indices == [0]


def test_data_number_of_the_paper_on_official_sizes():
    pool = range(45000)
    assert len(dataset.choose_train([], pool, 0.01, "first", 1)) == 450
    assert len(dataset.choose_train([], pool, 0.1, "first", 1)) == 4500
    assert dataset.choose_train([], range(68257), 0.01, "first", 1) == list(range(682))
    assert dataset.choose_train([], range(19), 0.1, "first", 1) == [0]  # truncates, never rounds up


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, math.nan])
def test_data_number_outside_unit_interval_is_a_user_error(cifar10_root, bad):
    with pytest.raises(UserError, match="--data_number"):
        dataset.build_datasets("cifar10", cifar10_root, dataset.DataFraction(bad))


def test_balanced_subset_evens_out_a_skewed_pool():
    targets = [0] * 50 + [1] * 10 + [2] * 3 + [3] * 7
    pool = list(range(65))  # only 2 images of class 3 are in the pool
    chosen = dataset.balanced_subset(targets, pool, 12, seed=1)
    counts = Counter(targets[i] for i in chosen)
    assert chosen == sorted(set(chosen)) and set(chosen) <= set(pool) and len(chosen) == 12
    # shares of 3; classes 2 and 3 run out (3 and 2 in the pool), the one image left goes to class 0 or 1
    assert (counts[2], counts[3]) == (3, 2) and sorted([counts[0], counts[1]]) == [3, 4]
    assert dataset.balanced_subset(targets, pool, 12, seed=1) == chosen
    assert dataset.balanced_subset(targets, pool, 12, seed=2) != chosen
    assert sorted(dataset.balanced_subset(targets, pool, 65, seed=3)) == pool


def test_balanced_subset_through_build_datasets(cifar10_root):
    _, labels = readers.read_cifar_images(cifar10_root, CIFAR10_TRAIN, "cifar-10-batches-py")
    assert len(set(labels[:54])) == 10
    a = dataset.build_datasets("cifar10", cifar10_root, dataset.DataFraction(0.2, subset="balanced", seed=1))
    b = dataset.build_datasets("cifar10", cifar10_root, dataset.DataFraction(0.2, subset="balanced", seed=1))
    c = dataset.build_datasets("cifar10", cifar10_root, dataset.DataFraction(0.2, subset="balanced", seed=2))
    assert len(a.train_indices) == 10 and max(a.train_indices) < 54
    assert Counter(labels[i] for i in a.train_indices) == Counter(range(10))  # one image per class
    assert a.train.targets == [labels[i] for i in a.train_indices]
    assert a.train_indices == b.train_indices != c.train_indices


def test_unknown_subset_is_a_user_error(cifar10_root):
    with pytest.raises(UserError, match="--subset"):
        dataset.build_datasets("cifar10", cifar10_root, dataset.DataFraction(subset="random"))


def test_write_indices_round_trips(tmp_path):
    path = tmp_path / "run" / "train_indices.json"
    dataset.write_indices(str(path), [3, np.int64(7), torch.tensor(9).item()])
    assert json.loads(path.read_text()) == [3, 7, 9]
    assert os.listdir(path.parent) == ["train_indices.json"]  # no temp file left behind


# ---------------------------------------------------------------------------- transforms
def test_transforms_give_unit_range_tensors_of_image_size(cifar10_root):
    s = dataset.build_datasets("cifar10", cifar10_root, image_size=24, resize_size=28)
    for view in (s.train, s.val, s.test):
        x, y = view[0]
        assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and isinstance(y, int)
        assert 0 <= x.min() and x.max() <= 1 and x.max() > 0.5  # ToTensor only, no Normalize
    names = [type(t).__name__ for t in dataset.make_eval_transform(24, 28).transforms]
    assert names == ["Resize", "CenterCrop", "ToTensor"]
    names = [type(t).__name__ for t in dataset.make_train_transform(24).transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor"]


def test_custom_transforms_and_dataloader_batches(cifar10_root):
    tf = dataset.make_eval_transform(16, 16)
    s = dataset.build_datasets("cifar10", cifar10_root, train_transform=tf, eval_transform=tf)
    x, y = next(iter(DataLoader(s.train, batch_size=8)))
    assert x.shape == (8, 3, 16, 16) and y.tolist() == s.train.targets[:8]


# ---------------------------------------------------------------------------- the original's variants
def test_cifar10_2_is_cifar10_evaluated_without_the_crop(cifar10_root):
    """The original's cifar10_2: CIFAR-10's files, splits, stats and training transform; eval Resize(224), no crop."""
    plain = dataset.build_datasets("cifar10", cifar10_root, image_size=16, resize_size=24)
    variant = dataset.build_datasets("cifar10_2", cifar10_root, image_size=16, resize_size=24)
    assert (variant.train_indices, variant.val.indices, variant.mean, variant.num_classes) == \
        (plain.train_indices, plain.val.indices, plain.mean, 10)
    assert [type(t).__name__ for t in variant.train.transform.transforms] == \
        ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor"]
    image, _ = variant.test.dataset[0]
    expected = torchvision.transforms.functional.to_tensor(image.resize((16, 16), resample=2))  # bilinear
    for view in (variant.val, variant.test):
        assert [type(t).__name__ for t in view.transform.transforms] == ["Resize", "ToTensor"]
    x, _ = variant.test[0]
    assert x.shape == (3, 16, 16) and torch.allclose(x, expected, atol=1 / 255 + 1e-6)
    assert not torch.equal(x, plain.test[0][0])  # cifar10 crops 16 of 24 px: another view of the image


def test_visda_trains_on_train_and_tests_on_validation(tmp_path):
    """The original's visda: ImageFolder train/ and validation/, validation also the test set; RandomResizedCrop
    with scale (0.75, 1.33); eval squeezes the whole image to image_size x image_size (no crop)."""
    root = fabricate.make_image_folder(tmp_path, n_per_class=2, splits=("train", "validation"), size=32)
    s = dataset.build_datasets("visda", root, image_size=16, resize_size=24)
    assert (len(s.train), len(s.val), s.num_classes, s.mean) == (6, 6, 3, dataset.IMAGENET_MEAN)
    assert s.val.dataset.root == s.test.dataset.root == os.path.join(root, "validation")
    crop = s.train.transform.transforms[0]
    assert type(crop).__name__ == "RandomResizedCrop" and crop.scale == (0.75, 1.33) and crop.size == (16, 16)
    resize = s.test.transform.transforms[0]
    assert type(resize).__name__ == "Resize" and resize.size == (16, 16) and len(s.test.transform.transforms) == 2
    assert s.train[0][0].shape == s.test[0][0].shape == (3, 16, 16)
    with pytest.raises(DataError, match="validation"):
        dataset.build_datasets("visda", fabricate.make_image_folder(tmp_path / "v", splits=("train", "val")))


# ---------------------------------------------------------------------------- folders
def test_imagenet_layout(image_folder_root):
    s = dataset.build_datasets("imagenet", image_folder_root, image_size=32, resize_size=32)
    assert s.test is None and (len(s.train), len(s.val), s.num_classes) == (12, 12, 3)
    assert s.mean == (0.485, 0.456, 0.406) and facts.DATASETS["imagenet"].num_classes == 1000
    assert s.val.targets == [0] * 4 + [1] * 4 + [2] * 4


def test_folder_with_only_test_uses_it_for_val_and_test(tmp_path):
    root = fabricate.make_image_folder(tmp_path, n_per_class=2, splits=("train", "test"))
    s = dataset.build_datasets("folder", root, image_size=32, resize_size=32)
    assert (len(s.train), len(s.val), len(s.test), s.num_classes) == (6, 6, 6, 3)
    assert s.val.dataset.root == s.test.dataset.root == os.path.join(root, "test")
    assert s.std == (0.229, 0.224, 0.225)


def test_folder_with_val_and_test_keeps_them_apart(tmp_path):
    root = fabricate.make_image_folder(tmp_path, n_per_class=1, splits=("train", "val", "test"))
    s = dataset.build_datasets("folder", root)
    assert s.val.dataset.root.endswith("val") and s.test.dataset.root.endswith("test")


def test_folder_errors_name_the_path(tmp_path):
    root = fabricate.make_image_folder(tmp_path / "a", n_per_class=1, splits=("train",))
    with pytest.raises(DataError, match="no val/ or test/"):
        dataset.build_datasets("folder", root)
    fabricate.make_image_folder(tmp_path / "a", classes=("ant", "bee", "dog"), n_per_class=1, splits=("val",))
    with pytest.raises(DataError, match=r"class folders of .*val differ.*'cat'"):
        dataset.build_datasets("folder", root)
    empty = tmp_path / "b" / "train"
    empty.mkdir(parents=True)
    with pytest.raises(DataError, match=f"{empty}.*malformed"):
        dataset.build_datasets("imagenet", str(tmp_path / "b"))
    with pytest.raises(DataError, match=f"{tmp_path / 'c' / 'train'} is not a folder.*never downloaded"):
        dataset.build_datasets("imagenet", str(tmp_path / "c"))


# ---------------------------------------------------------------------------- errors, no downloads
@pytest.mark.parametrize("name, expected", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                            ("svhn", "train_32x32.mat")])
def test_missing_data_is_one_clear_error_without_download(tmp_path, no_download, name, expected):
    with pytest.raises(DataError) as info:
        dataset.build_datasets(name, str(tmp_path / "nodata"))
    message = str(info.value)
    assert f"{name} data not found in {tmp_path / 'nodata'}" in message
    assert expected in message and "--download" in message
    assert "\n" not in message and no_download == []


def test_download_flag_reaches_torchvision(tmp_path, no_download):
    with pytest.raises(AssertionError, match="download attempted"):
        dataset.build_datasets("cifar10", str(tmp_path), download=True)
    assert len(no_download) == 1


def test_fabricated_files_fail_the_real_md5_check(_fake_files, no_download):
    with pytest.raises(DataError, match="MD5"):
        dataset.build_datasets("cifar10", _fake_files("cifar10"))


def test_malformed_pickle_is_a_data_error(tmp_path, fake_checksums):
    root = fabricate.make_cifar10(tmp_path, n_train=10, n_test=5)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="cifar10 data in .*cifar-10-batches-py is malformed"):
        dataset.build_datasets("cifar10", root)


def test_unknown_dataset_lists_the_known_names():
    with pytest.raises(UserError, match="unknown dataset 'mnist'.*cifar10, cifar100, cifar10_2, folder, imagenet, "
                                        "svhn, visda"):
        dataset.build_datasets("mnist", ".")


def test_table_holds_the_protocol_stats():
    assert set(facts.DATASETS) == {"imagenet", "cifar10", "cifar100", "svhn", "folder", "cifar10_2", "visda"}
    assert "cifar10_3" not in facts.DATASETS  # it changes the model's stem: not supported (README)
    spec = facts.DATASETS["cifar100"]
    assert (spec.mean, spec.std, spec.num_classes) == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), 100)
    assert facts.DATASETS["svhn"].std == (0.1201, 0.1231, 0.1052) and facts.DATASETS["folder"].num_classes is None
