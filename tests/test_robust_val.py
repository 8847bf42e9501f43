"""Robust validation during A-IMP (--robust-val K): PGD-K accuracy on an evenly spread validation slice each epoch,
in the metrics rows and the level's sparsity file and ticket, through the one evaluation loop; a model that is not
robust shows it (RA far below SA); the tickets are those of the same run without it."""
from __future__ import annotations

import json
import os
import re

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import main_imp_adv
import main_imp_std
import pruning_utils
from infra import checkpoint
from infra import paths
from infra.distributed import DistEnv
from infra.errors import ConfigError
from lottery import robust_val
from recipes import imp_argv, same_masks, ticket, untimed, write_init
from training import engine


class Brittle(nn.Module):
    """Right on every clean image of `_brittle_data` (class = whether the mean pixel is above 0.5, by 0.002), and
    wrong once an 8/255 attack moves the pixels: accurate, not robust."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x.mean(dim=(1, 2, 3)) - 0.5) * 1000
        return torch.stack([-s, s], dim=1)


def _brittle_data(n: int = 12) -> TensorDataset:
    y = torch.arange(n) % 2
    x = torch.full((n, 3, 4, 4), 0.5) + (y.float() * 2 - 1).view(-1, 1, 1, 1) * 0.002
    return TensorDataset(x, y)


def test_the_slice_is_spread_over_the_split():
    assert robust_val.slice_indices(10, 5) == [0, 2, 4, 6, 8]
    assert robust_val.slice_indices(3, 5) == [0, 1, 2]
    assert robust_val.slice_indices(1000, 3) == [0, 333, 666]


def test_a_model_that_is_not_robust_shows_ra_far_below_sa():
    rv = robust_val.build(3, 8, 8 / 255, "mean", _brittle_data(12), batch=4, env=DistEnv(), workers=0)
    assert rv.images == 8 and rv.attack.steps == 3 and rv.attack.alpha == pytest.approx(2.5 * (8 / 255) / 3)
    numbers, passes = rv.measure(Brittle(), engine.Step(show_progress=False))
    assert numbers == {"val_ra": 0.0, "val_slice_sa": 100.0, "val_ra_images": 8}
    assert passes[1]["cost"]["backward_passes"] == 3 * 8 and passes[0]["cost"]["backward_passes"] == 0


def test_a_collapse_is_flagged_and_a_level_summarised():
    assert robust_val.collapsed(40.0, 15.0) and not robust_val.collapsed(40.0, 25.0)
    assert not robust_val.collapsed(None, 0.0) and not robust_val.collapsed(8.0, 0.0)  # from under 10%: noise
    rows = [{"val_ra": 30.0, "val_slice_sa": 60.0, "val_ra_images": 50}, {"val_ra": 10.0, "val_slice_sa": 70.0,
                                                                          "val_ra_images": 50}]
    assert robust_val.summary(rows, "PGD-3") == {"val_ra": 10.0, "val_slice_sa": 70.0, "min_val_ra": 10.0,
                                                 "images": 50, "attack": "PGD-3"}
    assert robust_val.summary([{"val_ra": None}], "PGD-3") is None


def test_a_imp_records_it_each_epoch_and_per_level_with_the_same_tickets(_fake_files, tmp_path):
    data, init = _fake_files("folder"), write_init(str(tmp_path / "init.pth"))
    flags = ("--epochs", "2", "--prune_epoch", "1", "--train_step", "1", "--attack", "fgsm")
    assert main_imp_adv.main(imp_argv(data, init, str(tmp_path / "plain"), *flags)) == 0
    assert main_imp_adv.main(imp_argv(data, init, str(tmp_path / "rv"), *flags, "--robust-val", "2",
                                      "--robust-val-images", "5")) == 0
    plain, rows = (checkpoint.read_jsonl(str(tmp_path / d / paths.METRICS)) for d in ("plain", "rv"))
    assert [r["val_ra"] for r in plain] == [None, None]
    assert all(isinstance(r["val_ra"], float) and isinstance(r["val_slice_sa"], float) and r["val_ra_images"] == 5
               for r in rows)
    assert all(r["cost"]["eval_images"] == p["cost"]["eval_images"] + 10 for r, p in zip(rows, plain))
    record = json.load(open(paths.imp_sparsity(str(tmp_path / "rv"), 3)))["robust_val"]
    assert (record["val_ra"], record["images"]) == (rows[1]["val_ra"], 5) and record["attack"].startswith("PGD-2 ")
    assert pruning_utils.load_ticket(paths.imp_ticket(str(tmp_path / "rv"), 3))[1]["robust_val"] == record
    assert "robust_val" not in json.load(open(paths.imp_sparsity(str(tmp_path / "rv"), 1)))  # pruned untrained
    same = [{k: v for k, v in r.items() if k not in ("val_ra", "val_slice_sa", "val_ra_images", "cost")}
            for r in rows]
    assert untimed(same) == untimed([{k: v for k, v in r.items() if k not in ("val_ra", "cost")} for r in plain])
    for level in (1, 2, 3):
        assert same_masks(ticket(tmp_path / "rv", level), ticket(tmp_path / "plain", level))


@pytest.mark.parametrize("extra, message", [
    (("--robust-val", "0"), "--robust-val must be at least 1, got 0"),
    (("--robust-val", "2", "--robust-val-images", "0"), "--robust-val-images must be at least 1, got 0"),
])
def test_bad_robust_val_flags_are_refused(_fake_files, tmp_path, extra, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        main_imp_adv.main(imp_argv(_fake_files("folder"), "init.pth", str(tmp_path / "x"), *extra))


def test_standard_imp_has_no_robust_val_flag(capsys):
    with pytest.raises(SystemExit):
        main_imp_std.get_args_parser().parse_args(["d", "--save_dir", "s", "--robust-val", "3"])
    assert "--robust-val" in capsys.readouterr().err
    assert not os.path.exists("s")
