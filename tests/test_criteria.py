"""Pruning criteria as a registry (lottery/criteria.py): a criterion registered in one place, here layer-wise
magnitude, is accepted and listed by the IMP command line, prunes each level as torch prune's per-layer
l1_unstructured does, and names its tickets' family; the registry's own checks."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import main_imp_std
import pruning_utils
from infra import checkpoint
from infra import paths
from infra.errors import ConfigError
from lottery import cli as imp_cli
from lottery import config as imp_config
from lottery import criteria
from recipes import imp_argv, same_masks, ticket, tiny_model, write_init
from reporting.runs import ticket_family

RATE, SEED = 0.2, 5
CONTEXTS: list[tuple[int, tuple]] = []  # (generator seed, first batch's image shape) of every layer-wise selection


def layerwise(model: nn.Module, mask: pruning_utils.Mask, rate: float, ctx: criteria.Context) -> pruning_utils.Mask:
    """Each conv layer loses `rate` of its surviving weights on its own, smallest |w| first."""
    CONTEXTS.append((ctx.generator.initial_seed(), tuple(next(iter(ctx.batches()))[0].shape)))
    params = dict(model.named_parameters())
    out = {}
    for name, m in mask.items():
        alive = params[name].detach()[m]
        keep = torch.ones_like(alive, dtype=torch.bool)
        keep[torch.topk(alive.abs(), round(rate * alive.numel()), largest=False).indices] = False
        out[name] = m.clone().masked_scatter_(m, keep)
    return out


# the one place the criterion is declared: registered for this module's tests, removed after them
LAYERWISE = criteria.Criterion("layerwise", layerwise, "each conv layer pruned by --rate on its own",
                               family_suffix="-layerwise", early_bird=True)


@pytest.fixture(scope="module", autouse=True)
def registered():
    criteria.register(LAYERWISE)
    yield
    del criteria.CRITERIA[LAYERWISE.name]


def torch_layerwise_l1(state: dict, mask: dict | None, amount: float) -> dict:
    """torch prune's own per-layer step: custom_from_mask, then l1_unstructured on each Conv2d alone."""
    net = tiny_model()
    net.load_state_dict(state)
    out = {}
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            if mask is not None:
                torch_prune.custom_from_mask(m, "weight", mask[name + ".weight"])
            torch_prune.l1_unstructured(m, "weight", amount=amount)
            out[name + ".weight"] = m.weight_mask.bool()
    return out


@pytest.fixture(scope="module")
def run(_fake_files, tmp_path_factory):
    """Two one-epoch levels of IMP with --prune-method layerwise (tickets 1-3)."""
    root = tmp_path_factory.mktemp("layerwise")
    init = write_init(str(root / "init.pth"))
    CONTEXTS.clear()
    assert main_imp_std.main(imp_argv(_fake_files("folder"), init, str(root / "run"), "--epochs", "2",
                                      "--prune_epoch", "1", "--lr", "0.05", "--seed", str(SEED),
                                      "--prune-method", "layerwise")) == 0
    return str(root / "run"), init, list(CONTEXTS)


def test_each_level_is_torch_per_layer_l1_of_the_weights_it_prunes(run):
    save_dir, init, _ = run
    assert same_masks(ticket(save_dir, 1), torch_layerwise_l1(torch.load(init, weights_only=True), None, RATE))
    for level in (1, 2):
        trained = pruning_utils.unmask_state_dict(
            checkpoint.load_file(paths.imp_checkpoint(save_dir, level))["state_dict"])[0]
        assert same_masks(ticket(save_dir, level + 1), torch_layerwise_l1(trained, ticket(save_dir, level), RATE))
    for name, m in ticket(save_dir, 3).items():  # every layer alone at the level's sparsity, not global magnitude
        alive = m.numel()
        for _ in range(3):
            alive -= round(RATE * alive)
        assert int(m.sum()) == alive, name


def test_its_tickets_are_named_for_it(run):
    save_dir = run[0]
    for level in (1, 2, 3):
        meta = pruning_utils.load_ticket(paths.imp_ticket(save_dir, level))[1]
        assert (meta["family"], meta["config"]["prune_method"]) == ("imp-layerwise", "layerwise")
        assert "source" not in meta
        assert json.load(open(paths.imp_sparsity(save_dir, level)))["family"] == "imp-layerwise"
        assert ticket_family(meta) == "imp-layerwise"


def test_the_run_hands_the_selection_a_seeded_generator_and_its_training_batches(run):
    # levels 1-3 pruned, plus the candidate mask after each trained epoch (early_bird=True: watched)
    seeds = [seed for seed, _ in run[2]]
    assert sorted(set(seeds)) == [SEED * 1_000_003 + level for level in (1, 2, 3)]
    assert {shape for _, shape in run[2]} == {(4, 3, 32, 32)}  # -b 4 at 32 px, one process


def test_a_criterion_that_declares_early_bird_is_watched(run):
    rows = [json.loads(line) for line in open(f"{run[0]}/{paths.METRICS}")]
    assert [(r["level"], r["mask_distance"]) for r in rows] == [(1, None), (2, None)]  # a level's first epoch
    # the candidate mask after every trained epoch (levels 1 and 2) besides the three levels' own prunes
    assert [seed - SEED * 1_000_003 for seed, _ in run[2]] == [1, 1, 2, 2, 3]
    cfg = imp_config.IMPConfig(data="d", save_dir="s", prune_method="layerwise", early_bird=0.1)
    assert cfg.ticket_family == "imp-eb-layerwise"


def test_help_lists_it_and_the_flag_takes_it():
    text = imp_cli.get_args_parser(False).format_help()
    assert "{magnitude,random,layerwise}" in text
    assert "layerwise: each conv layer pruned by --rate on its own" in " ".join(text.split())
    args = imp_cli.get_args_parser(True).parse_args(["d", "--save_dir", "s", "--prune-method", "layerwise"])
    assert imp_cli.config_from_args(args).ticket_family == "aimp-layerwise"


def test_the_family_suffix_and_early_bird_come_from_the_registry():
    assert [criteria.family_suffix(n) for n in ("magnitude", "random", "layerwise", "snip")] == \
        ["", "-random", "-layerwise", "-snip"]  # an unknown one (a checkpoint's config) is named for itself
    assert imp_config.family_of({"prune_method": "snip", "omp_sparsity": 0.5}) == "omp-snip"
    assert criteria.watched() == ["magnitude", "layerwise"]
    criteria.register(criteria.Criterion("shuffled", layerwise, "a test rule"))
    try:
        assert criteria.get("shuffled").suffix == "-shuffled"
        with pytest.raises(ConfigError, match="which --prune-method shuffled does not follow: drop it, or prune "
                                              "with one that does .magnitude, layerwise."):
            imp_config.IMPConfig(data="d", save_dir="s", prune_method="shuffled", early_bird=0.1)
    finally:
        del criteria.CRITERIA["shuffled"]


def test_the_registry_refuses_a_second_criterion_of_one_name_and_names_the_known_ones():
    with pytest.raises(ValueError, match="named 'magnitude' is registered already"):
        criteria.register(criteria.Criterion("magnitude", layerwise, "again"))
    for bad in ("", "two words", "-x"):
        with pytest.raises(ValueError, match="a word"):
            criteria.register(criteria.Criterion(bad, layerwise, "bad"))
    with pytest.raises(ValueError, match="no pruning criterion named 'snip': the known ones are magnitude, "
                                         "random, layerwise"):
        criteria.get("snip")
    with pytest.raises(ConfigError, match="--prune-method must be one of magnitude, random, layerwise"):
        imp_config.IMPConfig(data="d", save_dir="s", prune_method="snip")


def test_the_built_in_criteria_are_pruning_utils_rules_with_the_levels_generator():
    net = tiny_model()
    full = pruning_utils.full_mask(net)
    ctx = criteria.Context(torch.Generator().manual_seed(7))
    assert same_masks(criteria.get("magnitude").select(net, full, 0.3, ctx),
                      pruning_utils.magnitude_prune(net, full, 0.3))
    assert same_masks(criteria.get("random").select(net, full, 0.3, ctx),
                      pruning_utils.random_prune(net, full, 0.3, torch.Generator().manual_seed(7)))


def test_the_report_reads_the_family_under_either_name():
    metas = ({"family": "imp"}, {"source": "aimp"}, {"family": "imp", "source": "old"}, {})
    assert [ticket_family(m) for m in metas] == ["imp", "aimp", "imp", "ticket"]


def test_a_ticket_that_names_its_family_source_is_read_as_family(tmp_path):
    net = tiny_model()
    mask = pruning_utils.magnitude_prune(net, pruning_utils.full_mask(net), 0.5)
    for name, packed in (("old.pth.tar", False), ("old.safetensors", True)):
        pruning_utils.save_ticket(str(tmp_path / name), mask, {"level": 2, "source": "aimp"}, packed=packed)
        meta = pruning_utils.load_ticket(str(tmp_path / name))[1]
        assert (meta["family"], meta["level"], "source" in meta) == ("aimp", 2, False)
