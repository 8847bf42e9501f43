"""bench.py plumbing at tiny size (no timing assertions): the baseline really is the original's way (advertorch's
PGD, torch-prune hooks), the harness interleaves and counts FLOPs right, and a --quick run writes its rows."""
from __future__ import annotations

import importlib
import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from benchmarks import bench
from benchmarks import accuracy as bench_accuracy
import benchmarks.baseline as base
import benchmarks.cases as cases
import benchmarks.measure as measure
from infra import errors
import dataset
import models
import pruning_utils


def advertorch_linf_pgd():
    """advertorch 0.2.3's LinfPGDAttack, importable on PyTorch 2 once `zero_gradients` is restored."""
    gradcheck = importlib.import_module("torch.autograd.gradcheck")
    if not hasattr(gradcheck, "zero_gradients"):
        def zero_gradients(x):
            if isinstance(x, torch.Tensor) and x.grad is not None:
                x.grad.detach_()
                x.grad.zero_()
        gradcheck.zero_gradients = zero_gradients
    from advertorch.attacks import LinfPGDAttack
    return LinfPGDAttack


def tiny_ticket(seed: int = 0):
    torch.manual_seed(seed)
    model = models.build("resnet_tiny", 10, mean=dataset.IMAGENET_MEAN, std=dataset.IMAGENET_STD)
    mask = pruning_utils.magnitude_prune(model, pruning_utils.full_mask(model), 0.8)
    pruning_utils.apply_mask(model, mask)
    return model, mask


def batch(n: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


# ---------------------------------------------------------------------------- the baseline is the original's way
def test_baseline_model_is_our_ticket_behind_prune_hooks():
    model, mask = tiny_ticket()
    net = base.build_model("resnet_tiny", 10, mask, model.state_dict())
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == len(mask) and all(hasattr(m, "weight_orig") and m.weight_mask.dtype == torch.float32
                                           for m in convs)
    x, _ = batch()
    model.eval(), net.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-5)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_baseline_pgd_is_advertorchs_bit_for_bit(mode):
    model, mask = tiny_ticket()
    ours, ref = (base.build_model("resnet_tiny", 10, mask, model.state_dict()) for _ in range(2))
    ours.train(mode == "train"), ref.train(mode == "train")
    x, y = batch()
    kw = dict(eps=8 / 255, alpha=2 / 255, steps=3)
    torch.manual_seed(5)
    expected = advertorch_linf_pgd()(ref, loss_fn=F.cross_entropy, eps=kw["eps"], nb_iter=kw["steps"],
                                     eps_iter=kw["alpha"]).perturb(x, y)
    torch.manual_seed(5)
    assert torch.equal(base.advertorch_pgd(ours, x, y, **kw), expected)


def test_baseline_train_attack_skips_weight_grads_but_eval_attack_does_not():
    model, mask = tiny_ticket()
    net = base.build_model("resnet_tiny", 10, mask, model.state_dict())
    x, y = batch()
    kw = dict(eps=8 / 255, alpha=2 / 255, steps=2)
    with base.ctx_noparamgrad(net):
        base.advertorch_pgd(net, x, y, **kw)
    assert all(p.grad is None and p.requires_grad for p in net.parameters())
    base.eval_step(net, x, y, kw)  # the original's validate_adv: weight gradients computed and accumulated
    assert all(p.grad is not None for p in net.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = net[1].conv1.weight.detach().clone()
    base.train_step(net, opt, x, y, kw)
    assert torch.equal(net[1].conv1.weight == 0, before == 0)  # the hook keeps pruned weights at 0


# ---------------------------------------------------------------------------- the harness
def test_interleave_rotates_the_order_and_counts_calls():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = measure.interleave(fns, torch.device("cpu"), rounds=3, warmup=1)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in times.values() for t in v)


def test_paired_ratio_takes_each_round_alone_so_a_load_change_between_rounds_does_not_move_it():
    # ours is 1.25x faster in every round; the machine slows down 3x after round 2
    base = [1.0, 1.0, 3.0, 3.0, 3.0]
    ours = [0.8, 0.8, 2.4, 2.4, 2.4]
    med, lo, hi = measure.paired(base, ours)
    assert med == lo == hi == pytest.approx(1.25)
    # busy and quiet rounds (2x), and in round 4 the load lifted between the two calls: the medians come from
    # different rounds and give 2x; the paired ratio stays at the true 1.1x
    base, ours = [1.1, 2.2, 1.1, 2.2, 2.2], [1.0, 2.0, 1.0, 1.0, 2.0]
    assert measure.median(base) / measure.median(ours) == pytest.approx(2.2)
    med, lo, hi = measure.paired(base, ours)
    assert (med, lo, hi) == (pytest.approx(1.1), pytest.approx(1.1), pytest.approx(2.2))
    with pytest.raises(ValueError, match="equally many rounds"):
        measure.paired([1.0], [1.0, 2.0])


def test_count_flops_of_a_matmul_and_of_an_input_gradient_attack():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert measure.count_flops(lambda: a @ b) == 2 * 8 * 16 * 4
    lin = nn.Linear(16, 4, bias=False)
    x = torch.randn(8, 16, requires_grad=True)
    # input gradient only: forward + grad_input (no grad_weight): 2 matmuls
    assert measure.count_flops(lambda: torch.autograd.grad(lin(x + 0).sum(), x)) == 2 * (2 * 8 * 16 * 4)
    fn, flops = measure.matmul(torch.device("cpu"), torch.float32)
    assert flops == 2 * measure.MATMUL_N["cpu"] ** 3 and measure.count_flops(fn) == flops


def test_memory_sweep_warms_up_each_batch_then_measures_and_frees_it(frozen_gc):
    cfg = cases.BenchConfig(arch="resnet_tiny", num_classes=10, batch=4, eval_batch=4, eval_steps=2)
    calls, built = [], []

    def build(batch):
        step = cases.build_step("train", "ours", cfg.replace(batch=batch))
        built.append(batch)
        return lambda: calls.append(batch) or step()
    rows = measure.memory_sweep(build, [2, 4], torch.device("cpu"), steps=2)
    assert built == [2, 4] and calls == [2, 2, 2, 4, 4, 4]  # one warm-up call, then the measured steps
    assert [r["batch"] for r in rows] == [2, 4] and all(r["peak_rss_mib"] > 10 for r in rows)  # MiB: torch at least


def test_the_tf32_off_baseline_runs_on_cuda_only_and_restores_the_flags(monkeypatch):
    assert cases.NO_TF32 in cases.variants("train", torch.device("cuda"))
    assert cases.variants("train", torch.device("cpu")) == cases.SECTIONS["train"]
    assert cases.NO_TF32 not in cases.variants("eval", torch.device("cuda"))
    cfg = cases.BenchConfig(arch="resnet_tiny", num_classes=10, batch=2)
    seen = []
    monkeypatch.setattr(base, "train_step", lambda *a: seen.append((torch.backends.cudnn.allow_tf32,
                                                                    torch.backends.cuda.matmul.allow_tf32)))
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    cases.build_step("train", cases.NO_TF32, cfg)()
    cases.build_step("train", "baseline", cfg)()
    assert seen == [(False, False), before]
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_every_variant_steps_and_ours_keeps_the_ticket():
    cfg = cases.BenchConfig(arch="resnet_tiny", num_classes=10, batch=4, eval_batch=4, eval_steps=2)
    trained = 0
    for section, variants in cases.SECTIONS.items():
        for variant in variants:
            step = cases.build_step(section, variant, cfg)
            model, mask = getattr(step, "model", None), getattr(step, "mask", None)
            before = None if model is None else {k: v.detach().clone() for k, v in model.state_dict().items()}
            step()
            if mask is None:
                continue
            after = model.state_dict()
            for name, m in mask.items():  # a training step of ours: pruned weights exactly 0, kept ones moved
                assert after[name][~m].count_nonzero() == 0, (section, variant, name)
            assert any(not torch.equal(before[k], after[k]) for k in mask), (section, variant)
            trained += 1
    assert trained >= 2  # the train and fgsm sections' ticket variants were checked
    ops = cases.build_mask_ops(cfg)
    ops()


# ---------------------------------------------------------------------------- the command line
@pytest.mark.slow
def test_quick_run_writes_rows_and_a_summary(tmp_path, capsys, frozen_gc):
    jsonl, md = tmp_path / "b.jsonl", tmp_path / "B.md"
    assert bench.main(["--quick", "--rounds", "1", "--jsonl", str(jsonl), "--md", str(md)]) == 0
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    got = {(r["section"], r["variant"]) for r in rows}
    expected = {(s, v) for s, vs in cases.SECTIONS.items() for v in vs} | {("memory", "ours"), ("memory", "baseline")}
    assert expected | {("pipeline", "baseline"), ("pipeline", "ours-device"), ("pipeline", "ours-host")} == got
    memory = [r for r in rows if r["section"] == "memory"]
    assert all([p["batch"] for p in r["sweep"]] == [2, 4, 8] and r["sweep"][0]["peak_rss_mib"] > 0 for r in memory)
    rows = [r for r in rows if r["section"] != "memory"]
    for r in rows:
        assert r["device"] and r["torch"] == torch.__version__ and r["images_per_s"] > 0
        if r["variant"] == "baseline":
            assert r["ratio_vs_baseline"] == 1.0 and r["paired_ratio"] == 1.0 and r["paired_range"] == [1.0, 1.0]
        lo, hi = r["paired_range"]
        assert lo <= r["paired_ratio"] <= hi
        if r["section"] != "pipeline":
            assert r["flops"] > 0 and r["ceiling_flop_per_s"] > 0
    assert sum(r.get("chosen", False) for r in rows) == 1
    train = {r["variant"]: r for r in rows if r["section"] == "train"}
    ticket = {r["variant"]: r for r in rows if r["section"] == "ticket"}
    assert train["ours"]["flops"] == train["baseline"]["flops"] == ticket["ours-dense"]["flops"]
    evals = {r["variant"]: r for r in rows if r["section"] == "eval"}
    assert evals["ours"]["flops"] < evals["baseline"]["flops"]  # no weight gradients in our attack
    line = md.read_text().strip()
    assert line.startswith("| ") and line.count(" | ") == 10 and "paired" in line
    out = capsys.readouterr().out
    assert "ticket over dense" in out
    assert "ticket_overhead_paired" in ticket["ours"] and "peak MiB of ours" in out


def test_bad_flags_are_user_errors():
    with pytest.raises(errors.UserError, match="--amp fp16"):
        bench.config_from_args(bench.get_args_parser().parse_args(["--device", "cpu", "--amp", "fp16"]))
    with pytest.raises(errors.UserError, match="--sections"):
        bench.main(["--quick", "--sections", "train,warp"])
    cfg = bench.config_from_args(bench.get_args_parser().parse_args(["--device", "cpu", "--quick", "--batch", "3"]))
    assert cfg.arch == "resnet_tiny" and cfg.batch == 3 and cfg.amp is None


def test_max_batch_fits_the_line_through_the_sweep():
    sweep = [{"batch": b, "peak_reserved_mib": 1000.0 + 3.0 * b + noise} for b, noise in ((64, 1.0), (128, -2.0),
                                                                                          (256, 1.0))]
    assert measure.max_batch(sweep, "peak_reserved_mib", capacity_mib=1000.0 + 3.0 * 500) in (499, 500)
    assert measure.max_batch(sweep[:1], "peak_reserved_mib", 1e6) is None  # one batch size: no line
    flat = [{"batch": b, "peak_reserved_mib": 1000.0} for b in (8, 16)]
    assert measure.max_batch(flat, "peak_reserved_mib", 1e6) is None


def test_cuda_without_a_gpu_is_a_user_error():
    with pytest.raises(errors.UserError, match="no GPU"):
        bench.config_from_args(bench.get_args_parser().parse_args(["--device", "cuda"]))


def test_accuracy_check_runs_every_arm(capsys):
    cfg = bench_accuracy.AccuracyConfig(epochs=1, seeds=(0,), train_images=64, test_images=32, test_steps=2)
    results = bench_accuracy.run(cfg)
    assert set(results) == {"ours", "ours+pil", "baseline"}
    assert all(len(v) == 1 and all(0 <= a <= 100 for a in v[0]) for v in results.values())
    assert "mean +- sd over 1 seeds" in capsys.readouterr().out
