"""training/weights.py: files fabricated in each library's on-disk layout load to the weights they came from; bad files
fail with a one-line message."""
from __future__ import annotations

import argparse

import pytest
import torch
import torchvision
from torch import nn

import models
import pruning_utils
from infra.errors import CheckpointError
from fakeweights import (ROBUST_MEAN, ROBUST_STD, half_mask, moco_v2, moco_v3, original_imp, prefixed, robustness,
                         source, state_of)
from training.weights import FORMATS, arch_name, load_into, read_weights


def _assert_same(model: nn.Module, ref: dict) -> None:
    got = model.state_dict()
    assert set(got) == set(ref)
    for key, value in ref.items():
        assert torch.equal(got[key], value), key


def _expected_masked(model: nn.Module, mask: dict) -> dict:
    sd = state_of(model)
    for name, m in mask.items():
        sd[name] = sd[name] * m
    return sd


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("layout", ["torchvision", "ddp", "checkpoint", "checkpoint_ddp"])
def test_plain_layouts_load_exactly(tmp_path, layout):
    src = source()
    ref = state_of(src)
    obj = {"torchvision": ref, "ddp": prefixed(ref, "module."),
           "checkpoint": {"state_dict": ref, "epoch": 3, "best_sa": 50.0},
           "checkpoint_ddp": {"state_dict": prefixed(ref, "module."), "epoch": 3}}[layout]
    torch.save(obj, tmp_path / "w.pth")
    w = read_weights(str(tmp_path / "w.pth"))
    assert w.format == {"checkpoint_ddp": "checkpoint"}.get(layout, layout)
    assert w.dropped == [] and w.mask is None and w.mean is None
    model = models.resnet_tiny(10)
    report = load_into(model, w, head="strict")
    _assert_same(model, ref)
    assert report.startswith(f"{tmp_path / 'w.pth'}: {FORMATS[w.format]}, kept {len(ref)} tensors, dropped 0")


@pytest.mark.parametrize("container", ["model", "state_dict"])
def test_robustness_checkpoint_keeps_model_drops_attacker_reads_stats(tmp_path, container):
    src = source(num_classes=10)
    ref = state_of(src)
    torch.save(robustness(ref, container), tmp_path / "robust.ckpt")
    w = read_weights(str(tmp_path / "robust.ckpt"))
    assert w.format == "robustness"
    assert w.mean == pytest.approx(ROBUST_MEAN) and w.std == pytest.approx(ROBUST_STD)
    assert len(w.dropped) == len(ref) + 4
    assert all(k.startswith(("module.attacker.", "module.normalizer.")) for k in w.dropped)
    model = models.resnet_tiny(10)
    report = load_into(model, w, head="strict")
    _assert_same(model, ref)
    assert f"dropped {len(ref) + 4} (module.normalizer.* 2, module.attacker.* {len(ref) + 2})" in report


@pytest.mark.parametrize("maker,fmt,head_keys", [(moco_v2, "moco_v2", 4), (moco_v3, "moco_v3", 7)])
def test_moco_backbone_loads_projection_head_dropped(tmp_path, maker, fmt, head_keys):
    ref = state_of(source())
    torch.save(maker(ref), tmp_path / "moco.pth.tar")
    w = read_weights(str(tmp_path / "moco.pth.tar"))
    assert w.format == fmt
    assert not any(k.startswith("fc.") for k in w.state_dict)
    n_backbone = len(ref) - 2
    assert len(w.state_dict) == n_backbone
    model = models.resnet_tiny(10)
    fresh_fc = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("fc.")}
    with pytest.raises(CheckpointError, match="no classifier head"):
        load_into(model, w, head="strict")
    load_into(model, w, head="replace")
    _assert_same(model, {**ref, **fresh_fc})
    assert sum(k.startswith(("module.encoder_q.fc.", "module.base_encoder.fc.")) for k in w.dropped) == head_keys


def test_original_imp_checkpoint_gives_masked_weights_mask_and_stats(tmp_path):
    src = source()
    mask = half_mask(src)
    torch.save(original_imp(src, mask), tmp_path / "2-checkpoint.pth.tar")
    w = read_weights(str(tmp_path / "2-checkpoint.pth.tar"))
    assert w.format == "original_imp"
    assert set(w.mask) == set(mask) and all(torch.equal(w.mask[k], mask[k]) for k in mask)
    assert w.mean == pytest.approx(ROBUST_MEAN) and w.std == pytest.approx(ROBUST_STD)
    model = models.resnet_tiny(10)
    report = load_into(model, w, head="strict")
    _assert_same(model, _expected_masked(src, mask))
    assert f"mask at sparsity {100 * pruning_utils.sparsity(mask):.1f}%" in report


def test_our_imp_checkpoint_and_pickled_module(tmp_path):
    src = source()
    mask = half_mask(src)
    torch.save({"state_dict": pruning_utils.masked_state_dict(src, mask), "level": 1, "epoch": 4},
               tmp_path / "1-checkpoint.pth.tar")
    w = read_weights(str(tmp_path / "1-checkpoint.pth.tar"))
    assert w.format == "doublewin_imp"
    model = models.resnet_tiny(10)
    load_into(model, w, head="strict")
    _assert_same(model, _expected_masked(src, mask))

    torch.save(src, tmp_path / "module.pth")  # a whole pickled model: needs trust
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        read_weights(str(tmp_path / "module.pth"))
    w = read_weights(str(tmp_path / "module.pth"), trusted=True)
    assert w.format == "module"
    load_into(model, w, head="strict")
    _assert_same(model, state_of(src))


def test_downstream_head_of_other_size_needs_replace(tmp_path):
    src = source(num_classes=100)
    torch.save({"state_dict": state_of(src), "epoch": 99}, tmp_path / "checkpoint.pth.tar")
    w = read_weights(str(tmp_path / "checkpoint.pth.tar"))
    model = models.resnet_tiny(10)
    with pytest.raises(CheckpointError, match="init has 100 classes and the data 10"):
        load_into(model, w, head="strict")
    fresh_fc = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("fc.")}
    report = load_into(model, w, head="replace")
    _assert_same(model, {**{k: v for k, v in state_of(src).items() if not k.startswith("fc.")}, **fresh_fc})
    assert report.endswith("head replaced")


def test_old_file_without_bn_counters_loads(tmp_path):
    ref = {k: v for k, v in state_of(source()).items() if not k.endswith("num_batches_tracked")}
    torch.save(ref, tmp_path / "old.pth")
    model = models.resnet_tiny(10)
    counters = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}
    report = load_into(model, read_weights(str(tmp_path / "old.pth")), head="strict")
    _assert_same(model, {**ref, **counters})
    assert f"{len(counters)} BatchNorm counters absent" in report


# ---------------------------------------------------------------------------- refusals
def test_wrong_architecture_names_missing_and_unexpected_keys(tmp_path):
    torch.save(models.resnet18(1000).state_dict(), tmp_path / "r18.pth")
    w = read_weights(str(tmp_path / "r18.pth"))
    model = models.resnet50(10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for head in ("replace", "strict"):  # the architecture is named before the head's 1000 vs 10 classes
        with pytest.raises(CheckpointError) as e:
            load_into(model, w, head=head)
        msg = str(e.value)
        assert "r18.pth" in msg and "resnet50" in msg and "looks like resnet18" in msg
        assert "missing (" in msg and "layer1.0.conv3.weight" in msg
        assert "\n" not in msg
    _assert_same(model, before)  # nothing half-loaded


def test_wrong_stem_is_named(tmp_path):
    torch.save(state_of(source(small_input=False)), tmp_path / "imagenet_stem.pth")
    shapes = r"7x7 stem vs the model's 3x3.*conv1.weight \[16, 3, 7, 7\] vs \[16, 3, 3, 3\]"
    with pytest.raises(CheckpointError, match=shapes):
        load_into(models.resnet_tiny(10), read_weights(str(tmp_path / "imagenet_stem.pth")), head="strict")


def test_truncated_file_is_named(tmp_path):
    path = tmp_path / "robust.ckpt"
    torch.save(robustness(state_of(source())), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"robust\.ckpt is truncated or corrupt"):
        read_weights(str(path))


def test_unsafe_pickle_refused_then_trusted(tmp_path):
    ref = state_of(source())
    path = tmp_path / "with_args.pth.tar"
    torch.save({"state_dict": ref, "args": argparse.Namespace(arch="resnet50", lr=0.1)}, path)
    with pytest.raises(CheckpointError, match="pass --trust-pickle") as e:
        read_weights(str(path))
    assert str(path) in str(e.value)
    w = read_weights(str(path), trusted=True)
    model = models.resnet_tiny(10)
    load_into(model, w, head="strict")
    _assert_same(model, ref)


def test_unrecognised_structures_list_keys(tmp_path):
    torch.save({"weights": [1, 2], "note": "x"}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"odd\.pth: unrecognised checkpoint structure.*weights \(list\)"):
        read_weights(str(tmp_path / "odd.pth"))
    torch.save({"encoder.blocks.0.weight": torch.zeros(2)}, tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match=r"vit\.pth: unrecognised weights.*encoder\.blocks\.0\.weight"):
        read_weights(str(tmp_path / "vit.pth"))
    mask = half_mask(source())
    pruning_utils.save_ticket(str(tmp_path / "t.pth.tar"), mask, {"level": 1})
    with pytest.raises(CheckpointError, match="mask-only ticket"):
        read_weights(str(tmp_path / "t.pth.tar"))
    with pytest.raises(CheckpointError, match="not found"):
        read_weights(str(tmp_path / "absent.pth"))


def test_arch_name_recognises_the_zoo():
    assert arch_name(models.resnet50(10).state_dict()) == "resnet50, 7x7 stem"
    assert arch_name(torchvision.models.resnet18().state_dict()) == "resnet18, 7x7 stem"
    assert arch_name(models.resnet_tiny(10).state_dict()) == "resnet_tiny, 3x3 stem"
