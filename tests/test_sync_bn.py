"""--sync-bn and the compute ledger inside a process group: the ledger counts a SyncBatchNorm model (as plain
BatchNorm: the same FLOPs) with one and two gloo ranks, attack passes in eval mode (a one-image batch whose last
feature map is 1x1 counts too), and the CPU SyncBatchNorm of two ranks is one BatchNorm over the whole batch."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from torch import nn

import models
from attacks import PGD
from training import ledger, syncbn
from training.engine import Step, evaluate

SHAPE = (2, 3, 32, 32)


def _counts(model: nn.Module) -> dict[str, int]:
    table = ledger.FlopTable(model)
    return {kind: table.flop(kind, SHAPE) for kind in ledger.KINDS}


@pytest.fixture
def one_rank_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("convert", [nn.SyncBatchNorm.convert_sync_batchnorm,
                                     lambda m: syncbn.convert(m, torch.device("cpu"))])
def test_the_ledger_counts_a_sync_batchnorm_model_in_a_process_group(one_rank_group, convert):
    torch.manual_seed(0)
    plain = _counts(models.build("resnet_tiny", 10))
    synced = models.build("resnet_tiny", 10)
    convert(synced)
    assert any(isinstance(m, (nn.SyncBatchNorm, syncbn.CpuSyncBatchNorm)) for m in synced.modules())
    assert _counts(synced) == plain and all(plain.values())


def test_a_one_image_batch_with_a_1x1_last_feature_map_is_counted_in_eval_mode():
    """The ImageNet stem at 32 px leaves 1x1 maps: train-mode BatchNorm refuses one value per channel, but
    attacks and evaluation run in eval mode, and so does their count."""
    torch.manual_seed(0)
    model = models.build("resnet_tiny", 3)
    table = ledger.FlopTable(model)
    batch = [(torch.rand(1, 3, 32, 32), torch.tensor([1]))]
    cost = evaluate(model, batch, Step(attack=PGD(8 / 255, 2 / 255, 2), show_progress=False, flops=table))["cost"]
    shape = (1, 3, 32, 32)
    assert cost["flop"] == table.flop("eval", shape) + 2 * table.flop("attack", shape) > 0
    assert table.flop("eval", shape) * 2 == table.flop("eval", (2, 3, 32, 32))


def _two_ranks(rank: int, path: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    torch.manual_seed(0)
    x = torch.randn(8, 4, 3, 3) * 3 + 1
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    synced = syncbn.convert(nn.Sequential(nn.BatchNorm2d(4)), torch.device("cpu"))
    synced.load_state_dict({f"0.{k}": v for k, v in bn.state_dict().items()})
    mine = x[4 * rank: 4 * rank + 4].clone().requires_grad_(True)
    y = synced(mine)
    (y * torch.arange(y.numel()).reshape(y.shape)).sum().backward()  # each rank: its own share of one loss
    grads = [synced[0].weight.grad.clone(), synced[0].bias.grad.clone()]
    for g in grads:
        dist.all_reduce(g)  # as DDP sums (then averages) the weight gradients
    model = models.build("resnet_tiny", 3)
    syncbn.convert(model, torch.device("cpu"))
    counts = _counts(model)  # the ledger's count inside a 2-rank group (it used to raise here)
    torch.save({"y": y.detach(), "x_grad": mine.grad, "grads": grads, "state": synced[0].state_dict(),
                "counts": counts}, os.path.join(out, f"{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_normalise_over_the_whole_batch_and_the_ledger_counts_there(tmp_path):
    torch.multiprocessing.spawn(_two_ranks, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2)
    got = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1)]
    torch.manual_seed(0)
    x = (torch.randn(8, 4, 3, 3) * 3 + 1).requires_grad_(True)
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    y = bn(x)
    weights = torch.cat([torch.arange(y[:4].numel()), torch.arange(y[:4].numel())]).reshape(y.shape)
    (y * weights).sum().backward()
    torch.testing.assert_close(torch.cat([g["y"] for g in got]), y.detach())
    torch.testing.assert_close(torch.cat([g["x_grad"] for g in got]), x.grad)
    for g in got:
        torch.testing.assert_close(g["grads"], [bn.weight.grad, bn.bias.grad], rtol=1e-5, atol=1e-3)  # |g| ~ 100
        torch.testing.assert_close(g["state"], bn.state_dict())
    plain = _counts(models.build("resnet_tiny", 3))
    assert got[0]["counts"] == got[1]["counts"] == plain
