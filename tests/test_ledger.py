"""The compute ledger: FLOPs counted on a meta copy equal torch.utils.flop_counter run on the real model, and the
images and passes of PGD-k training and robust evaluation add up (k + 1 forward passes per image), checked against
forward passes counted independently by a hook on the model."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import models
from attacks import PGD
from training import ledger
from training.engine import Step, evaluate, train_one_epoch


def _real_flop(model: torch.nn.Module, x: torch.Tensor, kind: str) -> int:
    """FLOPs of one pass of `kind` on the real model and a real batch, counted by torch.utils.flop_counter."""
    y = torch.zeros(x.shape[0], dtype=torch.long)
    for p in model.parameters():
        p.requires_grad_(kind == "train")
    x = x.clone().requires_grad_(kind == "attack")
    model.train(kind != "eval")
    with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(kind != "eval"):
        loss = F.cross_entropy(model(x * 1), y)
        if kind != "eval":
            loss.backward()
    for p in model.parameters():
        p.requires_grad_(True)
    return int(counter.get_total_flops())


@pytest.mark.slow
def test_resnet50_flops_match_the_flop_counter_on_the_real_model():
    torch.manual_seed(0)
    model = models.build("resnet50", 10)
    x = torch.rand(2, 3, 64, 64)
    table = ledger.FlopTable(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    counted = {kind: table.flop(kind, tuple(x.shape)) for kind in ledger.KINDS}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # counting changed nothing
    for kind in ledger.KINDS:
        assert counted[kind] == _real_flop(model, x, kind) > 0, kind
    fwd, attack, train = (table.flop(k, tuple(x.shape)) for k in ("eval", "attack", "train"))
    assert fwd < attack < train  # forward; + the input gradient; + the weight gradients too
    assert table.flop("eval", (4, 3, 64, 64)) == pytest.approx(2 * fwd, rel=1e-6)  # another shape: counted anew


class _Forwards:
    """Images through the model's forward, counted by a hook: independent of the ledger's own counting."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.images = 0
        model.register_forward_pre_hook(self._count)

    def _count(self, module, args) -> None:
        self.images += args[0].shape[0]


@pytest.mark.parametrize("k", [1, 3])
def test_pgd_k_training_and_robust_evaluation_add_up(k):
    torch.manual_seed(0)
    model = models.build("resnet_tiny", 3, small_input=True)
    batches = [(torch.rand(4, 3, 16, 16), torch.randint(0, 3, (4,))) for _ in range(2)]
    batches.append((torch.rand(3, 3, 16, 16), torch.randint(0, 3, (3,))))  # a last, smaller batch
    seen = _Forwards(model)
    table = ledger.FlopTable(model)
    step = Step(attack=PGD(8 / 255, 2 / 255, k), show_progress=False, flops=table)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    cost = train_one_epoch(model, batches, opt, step)["cost"]
    flop = 2 * (table.flop("train", (4, 3, 16, 16)) + k * table.flop("attack", (4, 3, 16, 16))) + \
        table.flop("train", (3, 3, 16, 16)) + k * table.flop("attack", (3, 3, 16, 16))
    assert cost == {"images": 11, "forward_passes": 11 * (k + 1), "backward_passes": 11 * (k + 1), "flop": flop}
    assert seen.images == cost["forward_passes"]
    seen.images = 0
    cost = evaluate(model, batches, step)["cost"]
    assert (cost["images"], cost["forward_passes"], cost["backward_passes"]) == (11, 11 * (k + 1), 11 * k)
    assert seen.images == cost["forward_passes"]
    clean = evaluate(model, batches, Step(show_progress=False, flops=table))["cost"]
    assert clean == {"images": 11, "forward_passes": 11, "backward_passes": 0,
                     "flop": 2 * table.flop("eval", (4, 3, 16, 16)) + table.flop("eval", (3, 3, 16, 16))}


def test_epoch_costs_add_up_and_list_mixed_devices():
    train = {"cost": {"images": 8, "forward_passes": 24, "backward_passes": 24, "flop": 1000}}
    val = {"cost": {"images": 4, "forward_passes": 4, "backward_passes": 0, "flop": 100}}
    cpu = torch.device("cpu")
    a = ledger.epoch_cost(train, [val], 2.0, device=cpu, devices=2, amp="bf16")
    assert (a["train_images"], a["eval_images"], a["forward_passes"], a["flop"]) == (8, 4, 28, 1100)
    assert (a["device_s"], a["devices"], a["precision"]) == (4.0, 2, "bf16")
    b = ledger.epoch_cost(None, [val], 1.0, device=cpu, devices=1, amp=None)
    t = ledger.total([a, b])
    assert (t["eval_images"], t["flop"], t["device_s"], t["devices"], t["precision"]) == \
        (8, 1200, 5.0, [2, 1], ["bf16", "fp32"])
    assert t["device_hours"] == pytest.approx(5.0 / 3600)
    assert ledger.total([])["flop"] == 0


def test_a_tickets_cost_names_the_levels_whose_rows_are_not_here(tmp_path):
    """A run resumed from another folder has no rows for its earlier levels: its ticket's cost says so (the report
    shows it as not recorded, not as free); one-shot pruning trains nothing, so its zero is complete."""
    import json
    from lottery.level_files import level_costs
    rows = [{"level": 2, "cost": {"device_s": 7.0, "flop": 5}}, {"level": 3, "cost": {"device_s": 1.0, "flop": 2}}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cost, last = level_costs(str(tmp_path), 4)
    assert (cost["flop"], cost["device_s"], cost["not_recorded_levels"]) == (7, 8.0, [1])
    assert (last["flop"], last["epochs"]) == (2, 1) and "not_recorded_levels" not in last
    assert "not_recorded_levels" not in level_costs(str(tmp_path), 1)[0]  # ticket 1: the init pruned, no training
    assert level_costs(str(tmp_path), 2)[0]["not_recorded_levels"] == [1]
    empty = tmp_path / "omp"
    empty.mkdir()
    cost, _ = level_costs(str(empty), 8, trained=False)
    assert cost["flop"] == 0 and "not_recorded_levels" not in cost
    assert level_costs(str(empty), 8)[0]["not_recorded_levels"] == list(range(1, 8))
