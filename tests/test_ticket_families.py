"""Cheap ticket families. Early-bird levels: a window that never fills runs every epoch and yields the plain IMP tickets bit for bit; a
threshold met at once stops each level after the window, with the sparsity 1 - (1 - rate)^k; a run killed in the
middle of an early-bird level resumes to the same tickets and rows (the window travels in the checkpoint). Data
diet: IMP on a seeded class-balanced fraction of the data, its indices recorded."""
from __future__ import annotations

import json
import os
import re

import pytest
import torch
import torchvision

import main_imp_std
import pruning_utils
from infra import checkpoint
from infra import paths
from infra.errors import ConfigError
from lottery import cli as imp_cli
from lottery import early_bird
from lottery import levels as imp_levels
from recipes import imp_argv, same_masks, ticket, untimed, write_init

EB_KEYS = ("mask_distance", "early_bird_stop")


@pytest.fixture(scope="module")
def tiny(_fake_files, tmp_path_factory):
    return _fake_files("folder"), write_init(str(tmp_path_factory.mktemp("eb") / "init.pth"))


def _imp(tiny, save_dir, *extra: str) -> list[dict]:
    data, init = tiny
    assert main_imp_std.main(imp_argv(data, init, str(save_dir), "--lr", "0.05", *extra)) == 0
    return checkpoint.read_jsonl(os.path.join(save_dir, paths.METRICS))


def test_distance_counts_disagreements_among_the_alive_weights():
    alive = {"w": torch.tensor([True, True, True, True, False])}
    a = {"w": torch.tensor([True, True, False, False, False])}
    b = {"w": torch.tensor([True, False, True, False, True])}  # the last entry is not alive: it does not count
    assert early_bird.distance(a, b, alive) == 0.5 and early_bird.distance(a, a, alive) == 0.0
    watch = early_bird.Watch(threshold=0.6, window=3)
    assert watch.observe(a, alive) == (None, False)
    assert watch.observe(b, alive) == (0.5, False)  # the window is not full yet
    assert watch.observe(a, alive) == (0.5, True)   # a, b, a: both within 0.6 of the newest
    assert watch.observe(b, alive) == (0.5, True)   # the window slides on: a, b, a -> b, a, b
    assert len(watch.masks) == 3


def test_the_distance_reaches_1_at_every_rate():
    """Two masks that prune as differently as they can are 1 apart, whether the level prunes 1/4, 1/2 or 3/4."""
    alive = {"w": torch.tensor([True] * 8 + [False] * 2)}
    for pruned_a, pruned_b, expected in (({0, 1}, {2, 3}, 1.0), ({0, 1}, {0, 2}, 0.5),          # rate 0.25
                                         ({0, 1, 2, 3}, {4, 5, 6, 7}, 1.0),                     # rate 0.5
                                         ({0, 1, 2, 3, 4, 5}, {2, 3, 4, 5, 6, 7}, 1.0),         # rate 0.75
                                         ({0, 1, 2, 3, 4, 5}, {1, 2, 3, 4, 5, 6}, 0.5)):
        a, b = ({"w": torch.tensor([i not in p and i < 8 for i in range(10)])} for p in (pruned_a, pruned_b))
        assert early_bird.distance(a, b, alive) == expected == early_bird.distance(b, a, alive)


def test_a_window_that_never_fills_gives_the_plain_imp_tickets(tiny, tmp_path):
    plain = _imp(tiny, tmp_path / "plain", "--epochs", "4", "--prune_epoch", "2")
    eb = _imp(tiny, tmp_path / "eb", "--epochs", "4", "--prune_epoch", "2", "--early-bird", "0.5",
              "--early-bird-window", "3")
    assert [r["epoch"] for r in eb] == [0, 1, 2, 3] and not any(r["early_bird_stop"] for r in eb)
    assert eb[0]["mask_distance"] is None and eb[1]["mask_distance"] is not None
    # every IMP run records the distance: the same numbers with or without --early-bird
    assert untimed([{k: v for k, v in r.items() if k != "early_bird_stop"} for r in eb]) == untimed(plain)
    assert [r["mask_distance"] is None for r in plain] == [True, False, True, False] and "early_bird_stop" not in plain[0]
    for level in (1, 2, 3):
        assert same_masks(ticket(tmp_path / "eb", level), ticket(tmp_path / "plain", level))
    meta = pruning_utils.load_ticket(paths.imp_ticket(str(tmp_path / "eb"), 3))[1]
    assert meta["family"] == "imp-eb" and meta["config"]["early_bird"] == 0.5
    assert not os.path.exists(tmp_path / "plain" / paths.INDICES)  # all the data: no indices to record


def test_a_threshold_met_at_once_stops_each_level_after_the_window(tiny, tmp_path):
    rows = _imp(tiny, tmp_path / "eb", "--epochs", "15", "--prune_epoch", "5", "--early-bird", "0.99",
                "--early-bird-window", "2")
    assert [(r["level"], r["epoch"], r["early_bird_stop"]) for r in rows] == \
        [(1, 0, False), (1, 1, True), (2, 5, False), (2, 6, True), (3, 10, False), (3, 11, True)]
    for level in (1, 2, 3, 4):
        mask = ticket(tmp_path / "eb", level)
        total = sum(m.numel() for m in mask.values())
        assert pruning_utils.sparsity(mask) == pytest.approx(1 - 0.8 ** level, abs=2 / total * level)
        record = json.load(open(paths.imp_sparsity(str(tmp_path / "eb"), level)))
        assert record["level_cost"]["epochs"] == (2 if level > 1 else 0)
    config = json.load(open(tmp_path / "eb" / paths.CONFIG))
    assert (config["early_bird"], config["early_bird_window"]) == (0.99, 2)


@pytest.mark.slow
def test_a_kill_in_an_early_bird_level_resumes_to_the_same_tickets(tiny, tmp_path, monkeypatch):
    flags = ("--epochs", "10", "--prune_epoch", "5", "--early-bird", "0.99", "--early-bird-window", "3")
    whole = _imp(tiny, tmp_path / "whole", *flags)
    assert [r["epoch"] for r in whole] == [0, 1, 2, 5, 6, 7]
    real = imp_levels.engine.train_one_epoch

    def crash_in_level_2(*args, epoch, **kwargs):
        if epoch == 7:  # the third epoch of level 2: two of its masks are in the window
            raise KeyboardInterrupt
        return real(*args, epoch=epoch, **kwargs)
    monkeypatch.setattr(imp_levels.engine, "train_one_epoch", crash_in_level_2)
    with pytest.raises(KeyboardInterrupt):
        _imp(tiny, tmp_path / "killed", *flags)
    monkeypatch.undo()
    again = _imp(tiny, tmp_path / "killed", *flags)
    assert untimed(again) == untimed(whole)
    for level in (1, 2, 3):
        assert same_masks(ticket(tmp_path / "killed", level), ticket(tmp_path / "whole", level))


@pytest.mark.parametrize("flags, message", [
    (("--early-bird", "0"), "--early-bird must be a distance in (0, 1)"),
    (("--early-bird", "0.1", "--early-bird-window", "1"), "--early-bird-window must be at least 2"),
    (("--early-bird", "0.1", "--prune-method", "random"), "which --prune-method random does not follow"),
])
def test_bad_early_bird_flags_are_refused(tiny, tmp_path, flags, message):
    data, init = tiny
    with pytest.raises(ConfigError, match=re.escape(message)):
        main_imp_std.main(imp_argv(data, init, str(tmp_path / "x"), *flags))


@pytest.mark.slow
def test_a_data_diet_finds_tickets_on_a_recorded_balanced_fraction(tiny, tmp_path):
    rows = _imp(tiny, tmp_path / "diet", "--epochs", "1", "--prune_epoch", "1", "--data_number", "0.5",
                "--seed", "3")
    chosen = json.load(open(tmp_path / "diet" / paths.INDICES))
    targets = [t for _, t in sorted(torchvision.datasets.ImageFolder(os.path.join(tiny[0], "train")).samples)]
    assert len(chosen) == 6 and sorted(targets[i] for i in chosen) == [0, 0, 1, 1, 2, 2]  # 2 of 4 per class
    assert rows[0]["cost"]["train_images"] == 6
    meta = pruning_utils.load_ticket(paths.imp_ticket(str(tmp_path / "diet"), 2))[1]
    assert meta["family"] == "imp-diet0.5" and meta["config"]["data_number"] == 0.5
    again = _imp(tiny, tmp_path / "diet-again", "--epochs", "1", "--prune_epoch", "1", "--data_number", "0.5",
                 "--seed", "3")
    assert json.load(open(tmp_path / "diet-again" / paths.INDICES)) == chosen and untimed(again) == untimed(rows)


@pytest.mark.parametrize("flags, family", [
    ((), "aimp"), (("--attack", "fgsm"), "aimp-fgsm"), (("--early-bird", "0.02"), "aimp-eb"),
    (("--data_number", "0.1"), "aimp-diet0.1"), (("--prune-method", "random"), "aimp-random"),
    (("--omp-level", "3"), "omp"), (("--family", "aimp-short", "--prune_epoch", "10"), "aimp-short"),
])
def test_each_recipe_names_its_family(flags, family):
    args = imp_cli.get_args_parser(adversarial=True).parse_args(["d", "--save_dir", "s", *flags])
    assert imp_cli.config_from_args(args).ticket_family == family


def test_a_bad_family_name_is_refused():
    args = imp_cli.get_args_parser(adversarial=False).parse_args(["d", "--save_dir", "s", "--family", "dense"])
    with pytest.raises(ConfigError, match="--family 'dense'"):
        imp_cli.config_from_args(args)
