"""Tiny command lines, models and checks that several run tests share (fixtures live in conftest.py)."""
from __future__ import annotations

import copy
import json
import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from infra import paths
import models
import pruning_utils
from infra.checkpoint import load_file, read_jsonl
from infra.paths import CHECKPOINT, CONFIG, CURVES, INDICES, LOG, METRICS, RA_BEST, RESULTS, SA_BEST


# ---------------------------------------------------------------------------- ticket finding
TINY = ["-a", "resnet_tiny", "--small-input", "--image-size", "32", "--resize-size", "32", "-b", "4", "-j", "0",
        "--no-progress"]


# the metrics.jsonl keys both stages write in every row (training.runner.metrics_row, and the ledger's cost)
ROW_KEYS = {"epoch", "lr", "train_loss", "train_acc", "val_sa", "val_ra", "time", "cost"}
# timings, in results.json, metrics rows and their cost ledgers: every other value must reproduce exactly
TIMED = {"time", "wall_time_s", "wall_s", "device_s", "device_hours"}


def untimed(value):
    """`value` (a results.json, a metrics row, a list of them) without its timings, at any depth."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k not in TIMED}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def run_untimed(save_dir) -> tuple[dict, list[dict]]:
    """results.json and the metrics rows of a transfer run without their timings (all else must reproduce)."""
    res = json.load(open(os.path.join(save_dir, RESULTS)))
    return untimed(res), untimed(read_jsonl(os.path.join(save_dir, METRICS)))


def imp_argv(data: str, init: str, save_dir: str, *extra: str) -> list[str]:
    return [data, "--init", init, "--save_dir", save_dir, *TINY, *extra]


def tiny_model() -> nn.Module:
    return models.build("resnet_tiny", 3, small_input=True)


def write_init(path: str, seed: int = 0, num_classes: int = 3) -> str:
    torch.manual_seed(seed)
    torch.save(models.build("resnet_tiny", num_classes, small_input=True).state_dict(), path)
    return path


def ticket(save_dir: str, level: int) -> dict:
    return pruning_utils.load_ticket(paths.imp_ticket(save_dir, level))[0]


def same_masks(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].bool(), b[k].bool()) for k in a)


# ---------------------------------------------------------------------------- transfer
def write_pretrained(folder, sparsity: float, meta: dict | None = None) -> SimpleNamespace:
    """A 'pre-trained' resnet_tiny init (1000-class head, as ImageNet weights) in `folder` and a magnitude ticket
    of it at `sparsity`: (init, ticket, mask)."""
    torch.manual_seed(0)
    model = models.resnet_tiny(1000)
    init = os.path.join(folder, "init.pth")
    torch.save(model.state_dict(), init)
    mask = pruning_utils.magnitude_prune(model, pruning_utils.full_mask(model), sparsity)
    ticket = os.path.join(folder, "4-ticket.pth.tar")
    pruning_utils.save_ticket(ticket, mask, meta or {})
    return SimpleNamespace(init=init, ticket=ticket, mask=mask)


FILES = (CONFIG, METRICS, LOG, CHECKPOINT, SA_BEST, RA_BEST, RESULTS, CURVES, INDICES)


def argv(save_dir, data: str, name: str, init: str, *, mode: str = "std", ticket: str = "", epochs: int = 2,
         extra: tuple = ()) -> list[str]:
    return ["--mode", mode, "--data", data, "--dataset", name, "--arch", "resnet_tiny", "--small-input",
            "--init", init, "--tickets_file", ticket, "--save_dir", str(save_dir), "--epochs", str(epochs),
            "--batch_size", "16", "--lr", "0.05", "--image-size", "16", "--resize-size", "16", "-j", "0",
            "--train_step", "2", "--test_step", "2", "--no-progress", "--no-channels-last", *extra]


def check_run(save_dir, mask, epochs: int) -> dict:
    """Every file exists and parses, every saved state dict keeps pruned weights at exactly 0; returns results."""
    for name in FILES:
        assert os.path.getsize(os.path.join(save_dir, name)) > 0, name
    with open(os.path.join(save_dir, CURVES), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in open(os.path.join(save_dir, METRICS))]
    assert [r["epoch"] for r in rows] == list(range(epochs))
    json.load(open(os.path.join(save_dir, CONFIG)))
    for name in (CHECKPOINT, SA_BEST, RA_BEST):
        sd = load_file(os.path.join(save_dir, name))["state_dict"]  # weights_only loading works
        plain, saved_mask = pruning_utils.unmask_state_dict(sd)
        if mask is None:
            assert saved_mask is None
            continue
        assert saved_mask.keys() == mask.keys()
        for k, m in mask.items():
            assert torch.equal(saved_mask[k], m)
            assert plain[k][~m].count_nonzero() == 0 and sd[k + "_orig"][~m].count_nonzero() == 0, (name, k)
    res = json.load(open(os.path.join(save_dir, RESULTS)))
    assert res["complete"] is True
    assert res["last"]["epoch"] == epochs - 1 and res["last"]["test_images"] == res["n_test"]
    assert 0 <= res["last"]["test_ra"] <= 100 and 0 <= res["last"]["test_sa"] <= 100
    expected = 0.0 if mask is None else pruning_utils.sparsity(mask)
    assert res["sparsity"] == expected and res["sparsity_percent"] == pytest.approx(100 * expected)
    for tag, key in (("best_sa", "val_sa"), ("best_ra", "val_ra")):  # the best checkpoint is the best val epoch
        measured = [r for r in rows if r[key] is not None]
        top = max(measured, key=lambda r: r[key])  # max keeps the first of equals, as strict improvement does
        assert (res[tag]["epoch"], res[tag][key]) == (top["epoch"], top[key])
    return res


# ---------------------------------------------------------------------------- optimizer steps
def set_grads(net: nn.Module, k: int, scale: float = 1.0, poison: bool = False) -> None:
    """Seeded gradients (draw `k`) in each parameter's strides, as autograd gives them; `poison` puts an inf in
    each, as an overflowing fp16 step does."""
    for i, p in enumerate(net.parameters()):
        g = torch.randn(p.shape, generator=torch.Generator().manual_seed(100 * k + i)).to(p.device) * scale
        p.grad = torch.empty_like(p).copy_(g)
        if poison:
            p.grad[(0,) * p.dim()] = float("inf")


def loop_reference(net: nn.Module, state: dict, k: int) -> nn.Module:
    """`net` after one step of the loop SGD (lr 0.1, momentum 0.9, wd 1e-4) resumed from `state` with gradients
    `k`: what a resumed fused run must match, whatever flags the saved state carried."""
    loop = torch.optim.SGD(net.parameters(), 0.1, momentum=0.9, weight_decay=1e-4)
    loop.load_state_dict(copy.deepcopy(state))
    loop.param_groups[0]["fused"] = False
    set_grads(net, k)
    loop.step()
    return net
