"""pruning_utils: bit-exact torch-prune parity, pruning properties, the mask mechanism, rewind, ticket interop."""
from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

import models
import pruning_utils as pu
from training import engine
from infra.checkpoint import strip_prefix
from infra.errors import CheckpointError, ConfigError, MaskError


def _convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.resnet_tiny()


def _perturb(model: nn.Module, names: list[str], g: torch.Generator, scale: float = 0.01) -> list[torch.Tensor]:
    """Mimic a round of training: the same noise is added to a twin model by the caller."""
    noise = [torch.randn(model.get_parameter(n).shape, generator=g) * scale for n in names]
    with torch.no_grad():
        for n, e in zip(names, noise):
            model.get_parameter(n).add_(e)
    return noise


def _refresh(ref: nn.Module) -> None:
    """torch prune recomputes `weight = weight_orig * weight_mask` in a forward pre-hook (the original validates)."""
    ref.eval()
    with torch.no_grad():
        ref(torch.rand(1, 3, 32, 32))


def _kept(mask: pu.Mask) -> int:
    return sum(int(m.sum()) for m in mask.values())


# ---------------------------------------------------------------------------- bit-exact parity with torch prune
@pytest.mark.slow
def test_magnitude_prune_matches_torch_global_unstructured_on_resnet50():
    torch.manual_seed(0)
    ours = models.resnet50()
    ref = copy.deepcopy(ours)
    convs = _convs(ref)
    params = [(m, "weight") for _, m in convs]
    names = pu.prunable_names(ours)
    assert names == [f"{n}.weight" for n, _ in convs] and len(names) == 53
    mask = pu.full_mask(ours)
    g = torch.Generator().manual_seed(1)
    for rnd in range(3):
        if rnd:
            noise = _perturb(ours, names, g)
            pu.apply_mask(ours, mask)
            with torch.no_grad():
                for (_, m), e in zip(convs, noise):
                    m.weight_orig.add_(e)
            _refresh(ref)
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.2)
        mask = pu.magnitude_prune(ours, mask, 0.2)
        pu.apply_mask(ours, mask)
        for (_, m), n in zip(convs, names):
            assert torch.equal(m.weight_mask.bool(), mask[n]), (rnd, n)
            assert torch.equal(m.weight, ours.get_parameter(n)), (rnd, n)
    assert pu.sparsity(mask) == pytest.approx(1 - 0.8 ** 3, abs=3 / 23454912)


def test_original_imp_loop_with_massive_ties_gives_the_same_masks_and_weights():
    """The original's round: global L1 prune -> extract masks -> prune.remove -> rewind -> custom_from_mask.
    Weights are multiples of 1/64, so thousands of |w| tie at every threshold."""
    model = _tiny()
    g = torch.Generator().manual_seed(3)
    names = pu.prunable_names(model)
    with torch.no_grad():
        for n in names:
            p = model.get_parameter(n)
            p.copy_(torch.randint(-8, 9, p.shape, generator=g) / 64)
    init = copy.deepcopy(model.state_dict())
    ref = copy.deepcopy(model)
    convs = _convs(ref)
    mask = pu.full_mask(model)
    for rnd in range(4):
        steps = [torch.randint(-1, 2, model.get_parameter(n).shape, generator=g) / 64 for n in names]
        with torch.no_grad():
            for (_, m), n, e in zip(convs, names, steps):
                (m.weight_orig if rnd else m.weight).add_(e)
                model.get_parameter(n).add_(e)
        pu.apply_mask(model, mask)
        if rnd:
            _refresh(ref)
        prune.global_unstructured([(m, "weight") for _, m in convs], pruning_method=prune.L1Unstructured, amount=0.2)
        ref_mask = {k: v for k, v in ref.state_dict().items() if "mask" in k}
        for _, m in convs:
            prune.remove(m, "weight")
        ref.load_state_dict(init)
        for name, m in convs:
            prune.CustomFromMask.apply(m, "weight", mask=ref_mask[name + ".weight_mask"])

        mask = pu.magnitude_prune(model, mask, 0.2)
        pu.rewind(model, init, mask)
        for (_, m), n in zip(convs, names):
            assert torch.equal(m.weight_mask.bool(), mask[n]), (rnd, n)
            assert torch.equal(m.weight, model.get_parameter(n)), (rnd, n)


def test_random_prune_matches_torch_random_unstructured_and_follows_its_generator():
    model = _tiny()
    ref = copy.deepcopy(model)
    params = [(m, "weight") for _, m in _convs(ref)]
    torch.manual_seed(5)
    for _ in range(3):
        prune.global_unstructured(params, pruning_method=prune.RandomUnstructured, amount=0.2)
    torch.manual_seed(5)
    mask = pu.full_mask(model)
    for _ in range(3):
        mask = pu.random_prune(model, mask, 0.2)
    for (m, _), n in zip(params, pu.prunable_names(model)):
        assert torch.equal(m.weight_mask.bool(), mask[n]), n

    def draw(seed: int) -> pu.Mask:
        return pu.random_prune(model, pu.full_mask(model), 0.2, torch.Generator().manual_seed(seed))
    a, b, c = draw(1), draw(1), draw(2)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


# ---------------------------------------------------------------------------- properties (open_lth style)
@pytest.mark.parametrize("rule", ["magnitude", "random"])
def test_pruning_properties_over_rounds(rule):
    model = _tiny()
    names = pu.prunable_names(model)
    mask = pu.full_mask(model)
    total = sum(m.numel() for m in mask.values())
    g = torch.Generator().manual_seed(7)
    for k in range(1, 7):
        _perturb(model, names, g)
        pu.apply_mask(model, mask)
        alive = _kept(mask)
        if rule == "magnitude":
            new = pu.magnitude_prune(model, mask, 0.2)
        else:
            new = pu.random_prune(model, mask, 0.2, torch.Generator().manual_seed(k))
        assert alive - _kept(new) == round(0.2 * alive)  # exact pruned fraction of the alive weights
        assert all(not (new[n] & ~mask[n]).any() for n in names)  # masks only shrink
        assert pu.sparsity(new) == pytest.approx(1 - 0.8 ** k, abs=k / total)
        if rule == "magnitude":
            w = torch.cat([model.get_parameter(n).detach().abs().flatten() for n in names])
            keep = torch.cat([new[n].flatten() for n in names])
            assert w[~keep].max() <= w[keep].min()  # every pruned |w| <= every kept |w|
        mask = new
        pu.apply_mask(model, mask)


def test_rate_bounds():
    model = _tiny()
    full = pu.full_mask(model)
    assert all(torch.equal(full[n], m) for n, m in pu.magnitude_prune(model, full, 0.0).items())
    assert pu.sparsity(pu.magnitude_prune(model, full, 1.0)) == 1.0
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="--rate"):
            pu.magnitude_prune(model, full, bad)


def test_pruning_ignores_memory_layout_and_keeps_it():
    model = _tiny()
    twin = copy.deepcopy(model).to(memory_format=torch.channels_last)
    a = pu.magnitude_prune(model, pu.full_mask(model), 0.5)
    b = pu.magnitude_prune(twin, pu.full_mask(twin), 0.5)
    assert all(torch.equal(a[n], b[n]) and b[n].dtype == torch.bool for n in a)
    pu.apply_mask(twin, b)
    w = twin.get_parameter("layer1.0.conv1.weight")
    assert w.is_contiguous(memory_format=torch.channels_last) and w.dtype == torch.float32
    assert (w[~b["layer1.0.conv1.weight"]] == 0).all()


def test_prunable_names_sparsity_and_layer_sparsity():
    model = _tiny()
    names = pu.prunable_names(model)
    assert names == [f"{n}.weight" for n, _ in _convs(model)]
    assert "fc.weight" not in names and not any(".bn" in n or n.startswith("bn") for n in names)
    assert pu.prunable_names(nn.DataParallel(model)) == names
    mask = {"a.weight": torch.tensor([True, False, False, True]), "b.weight": torch.ones(2, 3, dtype=torch.bool)}
    assert pu.sparsity(mask) == pytest.approx(0.2)
    assert pu.layer_sparsity(mask) == {
        "a.weight": {"shape": [4], "total": 4, "kept": 2, "sparsity": 0.5},
        "b.weight": {"shape": [2, 3], "total": 6, "kept": 6, "sparsity": 0.0}}
    assert pu.sparsity(pu.full_mask(model)) == 0.0


# ---------------------------------------------------------------------------- the one mask mechanism
def _batches(steps: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(11)
    return [(torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(steps)]


def _sgd(model: nn.Module) -> torch.optim.SGD:
    """SGD as the downstream recipe: momentum 0.9, weight decay 5e-4."""
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def _train(model: nn.Module, mask: pu.Mask | None, steps: int = 5) -> torch.optim.SGD:
    """One epoch of `steps` batches through the training loop itself (engine.train_one_epoch), under `mask`."""
    opt = _sgd(model)
    engine.train_one_epoch(model, _batches(steps), opt, engine.Step(mask=mask, show_progress=False))
    return opt


def _plain_sgd(model: nn.Module) -> None:
    """The same five steps as a plain loop with no mask handling: what the original ran on a torch-pruned model."""
    opt = _sgd(model)
    model.train()
    for x, y in _batches():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _pruned_tiny() -> tuple[nn.Module, pu.Mask]:
    model = _tiny()
    mask = pu.magnitude_prune(model, pu.full_mask(model), 0.5)
    pu.apply_mask(model, mask)
    return model, mask


def test_pruned_weights_stay_exactly_zero_through_sgd_with_momentum_and_weight_decay():
    model, mask = _pruned_tiny()
    start = copy.deepcopy(model.state_dict())
    opt = _train(model, mask)
    for n, m in mask.items():
        p = model.get_parameter(n)
        assert (p[~m] == 0).all(), n
        assert (opt.state[p]["momentum_buffer"][~m] == 0).all(), n
        assert not torch.equal(p[m], start[n][m]), n  # the survivors do train

    control, mask = _pruned_tiny()
    _train(control, None)
    for n, m in mask.items():
        assert (control.get_parameter(n)[~m] != 0).any(), n  # without the mechanism pruned weights revive


def test_mechanism_trains_exactly_like_torch_prune_reparametrisation():
    """The original trained a torch-pruned model (weight = weight_orig * weight_mask) with plain SGD steps; our
    training loop with the mask must match it bit for bit."""
    model, mask = _pruned_tiny()
    ref = copy.deepcopy(model)
    for name, m in _convs(ref):
        prune.custom_from_mask(m, "weight", mask=mask[name + ".weight"])
    _train(model, mask)
    _plain_sgd(ref)
    _refresh(ref)
    ours = model.state_dict()
    theirs, ref_mask = pu.unmask_state_dict(ref.state_dict())
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), [k for k in ours if not torch.equal(ours[k], theirs[k])]
    assert all(torch.equal(ref_mask[n], mask[n]) for n in mask)


# ---------------------------------------------------------------------------- rewind
@pytest.mark.parametrize("prefix", ["", "module."])
def test_rewind_restores_survivors_and_bn_buffers_exactly(prefix):
    model = _tiny()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.num_batches_tracked.fill_(3)
    init = copy.deepcopy(model.state_dict())
    mask = pu.magnitude_prune(model, pu.full_mask(model), 0.3)
    pu.apply_mask(model, mask)
    _train(model, mask, steps=2)  # changes weights, BN affine params and running statistics
    assert not torch.equal(model.bn1.running_mean, init["bn1.running_mean"])
    pu.rewind(model, {prefix + k: v for k, v in init.items()}, mask)
    state = model.state_dict()
    for k, v in init.items():
        if k in mask:
            assert torch.equal(state[k][mask[k]], v[mask[k]]) and (state[k][~mask[k]] == 0).all(), k
        else:
            assert torch.equal(state[k], v), k


# ---------------------------------------------------------------------------- validation
def test_validate_mask_names_the_first_mismatched_key_and_both_shapes(tmp_path):
    model = _tiny()
    pu.validate_mask(pu.full_mask(model), model)

    other = pu.full_mask(models.resnet18(10, small_input=True))
    path = str(tmp_path / "r18-ticket.pth.tar")
    pu.save_ticket(path, other, {})
    with pytest.raises(MaskError, match=r"'layer1\.1\.conv1\.weight'"):
        pu.validate_mask(pu.load_ticket(path)[0], model)

    missing = pu.full_mask(model)
    del missing["layer2.0.downsample.0.weight"]
    with pytest.raises(MaskError, match=r"'layer2\.0\.downsample\.0\.weight'"):
        pu.validate_mask(missing, model)

    wrong = pu.full_mask(model)
    wrong["layer1.0.conv2.weight"] = torch.ones(16, 16, 1, 1, dtype=torch.bool)
    with pytest.raises(MaskError, match=r"'layer1\.0\.conv2\.weight'.*\(16, 16, 1, 1\).*\(16, 16, 3, 3\)"):
        pu.validate_mask(wrong, model)
    with pytest.raises(MaskError, match="layer1.0.conv2.weight"):
        pu.apply_mask(model, wrong)

    soft = pu.full_mask(model)
    soft["conv1.weight"] = torch.full((16, 3, 3, 3), 0.5)
    with pytest.raises(MaskError, match="0 and 1"):
        pu.validate_mask(soft, model)


def test_load_ticket_rejects_files_without_masks(tmp_path):
    model = _tiny()
    dense = str(tmp_path / "dense.pth.tar")
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, dense)
    with pytest.raises(MaskError, match="dense.pth.tar.*no pruning masks"):
        pu.load_ticket(dense)
    tensor = str(tmp_path / "tensor.pth")
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(MaskError, match="tensor.pth"):
        pu.load_ticket(tensor)
    with pytest.raises(MaskError, match="conv1.weight_orig"):
        pu.unmask_state_dict({"conv1.weight_orig": torch.zeros(2)})
    future = str(tmp_path / "future-ticket.pth.tar")
    torch.save({"format": pu.TICKET_FORMAT, "version": 2, "state_dict": {"conv1.weight_mask": torch.ones(2)}}, future)
    with pytest.raises(CheckpointError, match="future-ticket.pth.tar.*version 2"):
        pu.load_ticket(future)


# ---------------------------------------------------------------------------- files: torch-prune naming, interop
def test_masked_state_dict_has_torch_prune_keys_and_round_trips():
    model, mask = _pruned_tiny()
    sd = pu.masked_state_dict(model, mask)
    ref = _tiny(seed=1)
    for _, m in _convs(ref):
        prune.custom_from_mask(m, "weight", mask=torch.ones_like(m.weight))
    assert set(sd) == set(ref.state_dict())
    assert sd["conv1.weight_mask"].dtype == torch.float32  # as torch prune makes them
    ref.load_state_dict(sd)  # strict
    model.eval(), ref.eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ref(x), model(x))
    plain, back = pu.unmask_state_dict(sd)
    assert list(plain) == list(model.state_dict())
    assert all(torch.equal(plain[k], v) for k, v in model.state_dict().items())
    assert back.keys() == mask.keys() and all(torch.equal(back[n], mask[n]) for n in mask)


@pytest.mark.parametrize("data_parallel", [False, True])
def test_checkpoint_of_the_original_imp_loads_in_ours(tmp_path, data_parallel):
    model = _tiny()
    init = copy.deepcopy(model.state_dict())
    net = nn.DataParallel(model) if data_parallel else model  # the original saved `module.`-prefixed keys
    convs = _convs(model)
    for _ in range(2):
        prune.global_unstructured([(m, "weight") for _, m in convs], pruning_method=prune.L1Unstructured, amount=0.2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    path = str(tmp_path / "1checkpoint.pth.tar")
    torch.save({"state": 2, "best_prec1": 71.25, "state_dict": net.state_dict(), "optimizer": opt.state_dict(),
                "init_weight": init}, path)

    mask, meta = pu.load_ticket(path)
    assert meta == {"state": 2, "best_prec1": 71.25}
    assert list(mask) == [f"{n}.weight" for n, _ in convs]
    assert all(torch.equal(mask[f"{n}.weight"], m.weight_mask.bool()) for n, m in convs)
    fresh = models.resnet_tiny()
    pu.validate_mask(mask, fresh)

    plain, mask2 = pu.unmask_state_dict(torch.load(path)["state_dict"])
    fresh.load_state_dict(strip_prefix(plain))  # strict
    for n, m in convs:
        w = fresh.get_parameter(f"{n}.weight")
        assert torch.equal(w, m.weight_orig * m.weight_mask) and torch.equal(w, m.weight), n
        assert torch.equal(mask2[f"{n}.weight"], mask[f"{n}.weight"])


def test_our_ticket_loads_the_way_the_original_downstream_script_loads_it(tmp_path):
    pretrained = _tiny().state_dict()
    model = models.resnet_tiny()
    model.load_state_dict(pretrained)
    mask = pu.magnitude_prune(model, pu.full_mask(model), 0.2)
    pu.apply_mask(model, mask)
    mask = pu.magnitude_prune(model, mask, 0.2)
    pu.apply_mask(model, mask)
    path = str(tmp_path / "2-ticket.pth.tar")
    pu.save_ticket(path, mask, {"level": 2, "arch": "resnet_tiny"})

    # PyTorch 1.5 (the original's) reads only the pre-1.6 serialisation, not zip archives
    import zipfile
    assert not zipfile.is_zipfile(path)
    # The original: torch.load, keep every key holding 'mask', custom_from_mask on a freshly loaded model.
    ckpt = torch.load(path, map_location="cpu")
    state = ckpt["state_dict"] if "state_dict" in ckpt else ckpt
    current_mask = {k: v for k, v in state.items() if "mask" in k}
    assert current_mask and all(v.dtype == torch.bool for v in current_mask.values())
    down = models.resnet_tiny()
    down.load_state_dict(pretrained)
    modules = dict(down.named_modules())
    for key, m in current_mask.items():
        prune.custom_from_mask(modules[key[: -len("_mask")].rsplit(".", 1)[0]], "weight", mask=m)
    for n, m in _convs(down):
        assert torch.equal(m.weight_mask.bool(), mask[f"{n}.weight"]), n
        assert torch.equal(m.weight, model.get_parameter(f"{n}.weight")), n
    model.eval(), down.eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(down(x), model(x))

    back, meta = pu.load_ticket(path)
    assert meta == {"format": pu.TICKET_FORMAT, "version": pu.TICKET_VERSION, "level": 2, "arch": "resnet_tiny",
                    "mask_digest": pu.mask_digest(mask)}  # every ticket written carries its digest
    assert all(torch.equal(back[n], mask[n]) for n in mask)

    float_path = str(tmp_path / "float.pth.tar")
    torch.save({"state_dict": pu.mask_to_state_dict(mask)}, float_path)
    assert os.path.getsize(path) < 0.4 * os.path.getsize(float_path)  # bool masks keep tickets small
