"""infra/flags.py: each setting declared once. A field added to a stage's config is a flag of its entry point,
with its default and help, and reaches the parsed config; no field is missing from a parser; converters and
aliases declared with a field apply."""
from __future__ import annotations

import argparse
import dataclasses
import os

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
    (["--resume"], "require_checkpoint", True),  # the original transfer's --resume: continue SAVE_DIR's checkpoint
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


def spellings(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for a in parser._actions:
        out.setdefault(a.dest, set()).update(a.option_strings or [a.metavar or a.dest])
    return out


def test_both_stages_accept_the_same_spellings_for_a_shared_setting():
    """Underscore spellings are the original's, hyphen spellings ours; a setting both stages have takes every
    spelling in both (IMP's data folder is also its positional DIR, as the original's)."""
    imp, transfer = spellings(imp_cli.get_args_parser(adversarial=True)), spellings(transfer_cli.get_args_parser())
    shared = ({f.name for f in dataclasses.fields(IMPConfig)} & {f.name for f in dataclasses.fields(TransferConfig)}
              & imp.keys() & transfer.keys())
    assert {"data", "arch", "batch_size", "lr", "weight_decay", "momentum", "epochs", "subset"} <= shared
    assert {k: imp[k] - {"DIR"} for k in shared} == {k: transfer[k] for k in shared}
    assert imp["data"] == {"DIR", "--data"} and imp["batch_size"] == {"-b", "--batch-size", "--batch_size"}
    assert imp["weight_decay"] == {"--wd", "--weight-decay", "--weight_decay"}
    assert imp["lr"] == {"--lr", "--learning-rate"} and imp["arch"] == {"-a", "--arch"}


@pytest.mark.parametrize("spelling", [["-b", "96"], ["--batch-size", "96"], ["--batch_size", "96"]])
def test_every_batch_spelling_sets_the_batch_in_both_stages(spelling):
    imp = imp_cli.config_from_args(imp_cli.get_args_parser(adversarial=False).parse_args(
        ["d", "--save_dir", "s", *spelling]))
    cfg, _ = transfer_cli.config_from_args(transfer_cli.get_args_parser().parse_args(BASE + spelling))
    assert imp.batch_size == cfg.batch_size == 96


@pytest.mark.parametrize("wd, lr", [("--wd", "--lr"), ("--weight-decay", "--learning-rate"),
                                    ("--weight_decay", "--lr")])
def test_every_weight_decay_and_lr_spelling_in_both_stages(wd, lr):
    extra = [wd, "0.003", lr, "0.25"]
    imp = imp_cli.config_from_args(imp_cli.get_args_parser(adversarial=False).parse_args(
        ["d", "--save_dir", "s", *extra]))
    cfg, _ = transfer_cli.config_from_args(transfer_cli.get_args_parser().parse_args(BASE + extra))
    assert (imp.weight_decay, imp.lr) == (cfg.weight_decay, cfg.lr) == (0.003, 0.25)


@pytest.mark.parametrize("argv, data", [
    (["d", "--save_dir", "s"], "d"),
    (["--save_dir", "s", "--data", "d"], "d"),
    (["--data", "d", "--save_dir", "s", "-b", "8"], "d"),
    (["--save_dir", "s", "d", "--epochs", "60", "--data", "e"], "e"),  # a driver's trailing --data overrides DIR
])
def test_imp_takes_its_data_folder_as_dir_or_as_transfers_data_flag(argv, data):
    cfg = imp_cli.config_from_args(imp_cli.get_args_parser(adversarial=True).parse_args(argv))
    assert cfg.data == data


def test_imp_without_a_data_folder_is_one_line_naming_both_spellings():
    args = imp_cli.get_args_parser(adversarial=True).parse_args(["--save_dir", "s"])
    with pytest.raises(ConfigError, match=r"^DIR or --data DIR is required$"):
        imp_cli.config_from_args(args)


def test_the_same_mistake_gives_the_same_error_in_both_stages(capsys):
    errors = []
    for parse in (lambda: imp_cli.get_args_parser(adversarial=False).parse_args(["d", "--save_dir", "s", "-a",
                                                                                   "resnet99"]),
                  lambda: transfer_cli.get_args_parser().parse_args(BASE + ["--arch", "resnet99"])):
        with pytest.raises(SystemExit) as stop:
            parse()
        assert stop.value.code == 2
        errors.append(capsys.readouterr().err)
    assert errors[0] == errors[1] and "argument -a/--arch: invalid choice: 'resnet99'" in errors[0]
    messages = []
    for build in (lambda: IMPConfig(data="d", save_dir="s", batch_size=0, lr=-1),
                  lambda: TransferConfig(save_dir="s", batch_size=0), lambda: IMPConfig(data="d", save_dir="s", lr=-1),
                  lambda: TransferConfig(save_dir="s", lr=-1)):
        with pytest.raises(ConfigError) as e:
            build()
        messages.append(str(e.value))
    assert messages[0] == messages[1] == "-b/--batch_size 0 must be at least 1"
    assert messages[2] == messages[3] == "--lr, --wd and --momentum must be >= 0"


def test_the_side_by_side_table_spells_each_shared_setting_as_the_parsers_do():
    """docs/FROM_ORIGINAL.md lists every spelling a shared setting has, as --help writes them (a/b/c)."""
    table = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                              "FROM_ORIGINAL.md")).read().split("## The stages' flags side by side")[1]
    parser = transfer_cli.get_args_parser()
    shared = {f.name for f in dataclasses.fields(IMPConfig)} & {f.name for f in dataclasses.fields(TransferConfig)}
    for action in parser._actions:
        if action.dest in shared and action.option_strings:
            assert f"`{'/'.join(action.option_strings)}" in table, action.option_strings
