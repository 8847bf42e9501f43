"""engine.train_one_epoch / evaluate: exact metrics, one loop for clean and adversarial work, masks, NaN stop."""
from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import attacks
from training import engine
import models
import pruning_utils
from infra.errors import NonFiniteLossError

CPU = torch.device("cpu")


def _data(n=40, classes=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.rand(n, 3, 16, 16, generator=g) * 0.5
    x[:, y % 3] += 0.4 * (y[:, None, None] // 3).float()  # a learnable colour cue
    return TensorDataset(x.clamp(0, 1), y)


def _model(seed=0):
    torch.manual_seed(seed)
    return models.resnet_tiny(6, small_input=True)


def _manual_metrics(model, ds):
    model.eval()
    x, y = ds.tensors
    with torch.no_grad():
        logits = model(x)
    top5 = logits.topk(5, 1).indices.eq(y[:, None]).any(1).float().mean().item() * 100
    return {"loss": F.cross_entropy(logits, y).item(), "top1": (logits.argmax(1) == y).float().mean().item() * 100,
            "top5": top5, "n": len(y)}


def test_evaluate_equals_a_manual_pass_over_uneven_batches():
    model, ds = _model(), _data()
    got = engine.evaluate(model, DataLoader(ds, batch_size=7), engine.Step(show_progress=False))
    want = _manual_metrics(model, ds)
    assert got["n"] == want["n"] == 40
    assert got["top1"] == pytest.approx(want["top1"]) and got["top5"] == pytest.approx(want["top5"])
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)


def test_per_image_correctness_in_the_split_order_over_ranks():
    """Each image's top-1 hit, in order; two shards taking every other image (as ShardSampler does on two ranks)
    fill in the positions of their own images."""
    model, ds = _model(), _data()
    got = engine.evaluate(model, DataLoader(ds, batch_size=7), engine.Step(show_progress=False), per_image=True)
    x, y = ds.tensors
    with torch.no_grad():
        want = (model(x).argmax(1) == y).tolist()
    assert got["correct"] == want and sum(want) == round(got["top1"] * 40 / 100)
    shards = []
    for rank in (0, 1):
        env = types.SimpleNamespace(rank=rank, world_size=2, distributed=False)
        shards.append(engine._per_image([torch.tensor(want[rank::2])], 40, env))
    assert [a or b for a, b in zip(*shards)] == want and not any(a and b for a, b in zip(*shards))


def test_robust_accuracy_is_below_standard_accuracy_and_eval_mode_is_used():
    model, ds = _model(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(4):
        engine.train_one_epoch(model, DataLoader(ds, batch_size=10, shuffle=True), opt,
                               engine.Step(show_progress=False), epoch=epoch)
    loader = DataLoader(ds, batch_size=20)
    sa = engine.evaluate(model, loader, engine.Step(show_progress=False))
    seen = []
    pgd = attacks.PGD(16 / 255, 4 / 255, 5)

    def spy(net, x, y):
        seen.append(net.training)
        return pgd(net, x, y)

    ra = engine.evaluate(model, loader, engine.Step(attack=spy, show_progress=False))
    assert seen == [False, False]
    assert sa["top1"] > 50 and ra["top1"] < sa["top1"] - 10


def test_adversarial_training_attacks_in_train_mode_and_trains_on_the_attacked_batch():
    model, ds = _model(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the step must not change what we compare
    modes, made = [], []

    def spy(net, x, y):
        modes.append(net.training)
        x_adv = (x + 0.01).clamp(0, 1)
        made.append(x_adv)
        return x_adv

    stats = engine.train_one_epoch(model, DataLoader(ds, batch_size=40), opt,
                                   engine.Step(attack=spy, show_progress=False))
    assert modes == [True]
    model.train()
    with torch.no_grad():
        want = F.cross_entropy(model(made[0]), ds.tensors[1]).item()
    assert stats["loss"] == pytest.approx(want, rel=1e-5) and stats["n"] == 40


def test_a_ticket_keeps_pruned_weights_exactly_zero_through_training():
    model, ds = _model(), _data()
    mask = pruning_utils.magnitude_prune(model, pruning_utils.full_mask(model), 0.6)
    pruning_utils.apply_mask(model, mask)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    engine.train_one_epoch(model, DataLoader(ds, batch_size=8), opt,
                           engine.Step(attack=attacks.fgsm_rs(8 / 255), mask=mask, show_progress=False))
    params = dict(model.named_parameters())
    for name, m in mask.items():
        assert torch.all(params[name][~m] == 0), name
        assert not torch.equal(params[name][m], before[name][m]), name  # the survivors did train
    assert pruning_utils.sparsity(mask) == pytest.approx(0.6, abs=1e-3)


def test_non_finite_loss_stops_with_a_clear_error():
    model, ds = _model(), _data()
    x, y = ds.tensors
    x = x.clone()
    x[3] = float("nan")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError, match=r"NaN/inf .*epoch 7.*lower --lr") as info:
        engine.train_one_epoch(model, DataLoader(TensorDataset(x, y), batch_size=8), opt,
                               engine.Step(show_progress=False), epoch=7)
    assert "\n" not in str(info.value)


def test_channels_last_gives_the_same_numbers():
    ds = _data()
    a, b = _model(1), _model(1)
    b = b.to(memory_format=torch.channels_last)
    ra = engine.evaluate(a, DataLoader(ds, batch_size=20), engine.Step(show_progress=False))
    rb = engine.evaluate(b, DataLoader(ds, batch_size=20), engine.Step(channels_last=True, show_progress=False))
    assert ra["top1"] == rb["top1"] and ra["loss"] == pytest.approx(rb["loss"], rel=1e-4)


def test_progress_lines_show_the_running_loss_and_accuracy_while_the_epoch_runs(capsys):
    """In a log (no terminal) the ~10% lines carry the loss and top-1 of the batches seen so far; the last line's
    numbers are the epoch's."""
    model, ds = _model(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: every batch sees the same model, as evaluate does
    stats = engine.train_one_epoch(model, DataLoader(ds, batch_size=2), opt, engine.Step(), desc="ep")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ep: ")]
    assert len(lines) == 10 and lines[0].startswith("ep: 2/20 ")
    assert all(" loss " in line and " top1 " in line for line in lines)
    last = lines[-1].split()
    assert float(last[last.index("loss") + 1]) == pytest.approx(stats["loss"], abs=1e-4)
    assert last[last.index("top1") + 1] == f"{stats['top1']:.2f}%"
