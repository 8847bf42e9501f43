"""infra/flags.py: each setting declared once. A field added to a stage's config is a flag of its entry point,
with its default and help, and reaches the parsed config; no field is missing from a parser; converters and
aliases declared with a field apply."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from infra import flags
from infra.distributed import Launch
from infra.errors import ConfigError
from lottery import cli as imp_cli
from lottery.config import IMPConfig
from training import runner
from transfer import cli as transfer_cli
from transfer.config import TransferConfig

BASE = ["--init", "w.pth", "--save_dir", "s"]


def dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions}


def test_a_field_added_to_a_config_is_a_flag_with_its_default_and_help_and_reaches_the_config():
    """The docs' worked example (docs/INTERNALS.md, "Adding a hyperparameter"): one field, nothing else."""
    extended = dataclasses.make_dataclass(
        "Extended", [("label_smoothing", float, flags.flag("--label_smoothing", 0.0, "cross-entropy label smoothing",
                                                           group="training", type=float))],
        bases=(TransferConfig,), frozen=True)
    parser = runner.parser("transfer", extended, Launch)
    action = next(a for a in parser._actions if a.dest == "label_smoothing")
    assert action.option_strings == ["--label_smoothing"] and "label smoothing (default: 0.0)" in action.help
    help_text = parser.format_help()
    assert "--label_smoothing" in help_text and help_text.count("label smoothing") == 1
    assert flags.from_args(extended, parser.parse_args(BASE)).label_smoothing == 0.0
    cfg = flags.from_args(extended, parser.parse_args(BASE + ["--label_smoothing", "0.1"]))
    assert cfg.label_smoothing == 0.1 and cfg.lr == TransferConfig.lr  # the rest as before
    assert "label_smoothing" in dataclasses.asdict(cfg)  # so config.json records it, and a resume compares it


@pytest.mark.parametrize("cls, parser, skip", [
    (TransferConfig, transfer_cli.get_args_parser(), ()),
    (IMPConfig, imp_cli.get_args_parser(adversarial=True), ()),
    (IMPConfig, imp_cli.get_args_parser(adversarial=False), ("attack", "attack_loss", "robust_val",
                                                               "robust_val_images")),  # A-IMP's only
    (Launch, transfer_cli.get_args_parser(), ()),
])
def test_every_field_has_a_flag(cls, parser, skip):
    """No setting silently missing from a parser: a field is set by its own flag, or built from its parts'."""
    have = dests(parser)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        spec = flags.spec(f)
        assert spec is not None, f"{cls.__name__}.{f.name} declares no flag"
        assert {p.dest or f.name for p in spec.flags} <= have, f.name


def test_every_flag_sets_a_field():
    """...and no flag beside the settings: each dest is a field, or a part a field is built from (--recipe only
    names flags of these)."""
    for cls, parser in [(TransferConfig, transfer_cli.get_args_parser()),
                        (IMPConfig, imp_cli.get_args_parser(adversarial=True))]:
        known = {"help", "recipe"} | {p.dest or f.name for c in (cls, Launch) for f in dataclasses.fields(c)
                            for p in flags.spec(f).flags}
        assert dests(parser) <= known


def test_defaults_live_in_the_dataclass_only():
    """A flag not given leaves the field's default; the parser holds no copy of it."""
    cfg, opts = transfer_cli.config_from_args(transfer_cli.get_args_parser().parse_args(BASE))
    assert cfg == TransferConfig(save_dir="s", init="w.pth") and opts == Launch()
    imp = imp_cli.config_from_args(imp_cli.get_args_parser(adversarial=False).parse_args(["d", "--save_dir", "s"]))
    assert imp == IMPConfig(data="d", save_dir="s")


@pytest.mark.parametrize("extra, field, value", [
    (["-p", "0"], "show_progress", False), (["--print_freq", "50"], "show_progress", True),
    (["--print-freq", "0"], "show_progress", False), (["--no-progress"], "show_progress", False),
    (["--decreasing_lr", "30,60,90"], "milestones", (30, 60, 90)), (["--tickets_file", "none"], "ticket", None),
    (["--tickets_file", "t.pth"], "ticket", "t.pth"), (["--init", ""], "init", None),
    (["--autoattack-version", "custom", "--autoattack-attacks", "apgd-ce, square"], "autoattack_attacks",
     ("apgd-ce", "square")),
])
def test_converters_and_aliases_declared_with_the_field(extra, field, value):
    cfg, _ = transfer_cli.config_from_args(transfer_cli.get_args_parser().parse_args(BASE + extra))
    assert getattr(cfg, field) == value


def test_a_config_built_in_code_is_checked_too():
    with pytest.raises(ConfigError, match="--eval_from -1"):
        TransferConfig(save_dir="s", eval_from=-1)
    with pytest.raises(ConfigError, match="--restart starts over and --require-checkpoint"):
        TransferConfig(save_dir="s", restart=True, require_checkpoint=True)
    with pytest.raises(ConfigError, match="--workers -1"):
        IMPConfig(data="d", save_dir="s", workers=-1)
    with pytest.raises(ConfigError, match="drop -e/--resume"):
        IMPConfig(data="d", save_dir="s", omp_level=2, evaluate=True)
    assert IMPConfig(data="d", save_dir="s", omp_level=2).omp_sparsity == 1 - 0.8 ** 2


def test_result_free_settings_are_declared_per_field():
    assert flags.result_free(Launch) == {f.name for f in dataclasses.fields(Launch)}
    free = flags.result_free(TransferConfig)
    assert {"show_progress", "workers", "data", "save_dir", "trust_pickle", "download", "autoattack", "test_amp",
            "require_checkpoint"} <= free
    assert not {"lr", "seed", "pipeline", "fused_sgd", "tf32", "attack_loss", "train_attack", "milestones"} & free
    assert {"epochs", "resume", "evaluate"} <= flags.result_free(IMPConfig)
