"""The downstream bash scripts: each argument line parses with main_train_downstream's parser, carries the
original's hyperparameters, lets extra flags override them, and treats an empty TICKET as the dense model."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import attacks
from transfer import cli
from infra.errors import ConfigError, UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "script", "train_downstream")


@pytest.fixture
def recorder(tmp_path):
    """An executable standing in for python: it records its argv as JSON."""
    path = tmp_path / "python"
    out = tmp_path / "argv.json"
    path.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(out)!r}, 'w'))\n")
    path.chmod(0o755)
    return path, out


def run_script(recorder, name: str, *args: str):
    """The config of the command line the script runs."""
    exe, out = recorder
    subprocess.run(["bash", os.path.join(SCRIPTS, name), *args], check=True, env={**os.environ, "DOUBLEWIN_PY": str(exe)})
    argv = json.load(open(out))
    assert argv[:2] == ["-u", os.path.join(ROOT, "main_train_downstream.py")]
    return cli.config_from_args(cli.get_args_parser().parse_args(argv[2:]))[0]


def test_adv_cifar_line(recorder):
    cfg = run_script(recorder, "adv_cifar.sh", "cifar100", "init.pth", "runs/x", "runs/imp/9-ticket.pth.tar")
    assert (cfg.mode, cfg.dataset, cfg.data, cfg.data_number, cfg.arch, cfg.init, cfg.seed) == \
        ("adv", "cifar100", "../data", 1.0, "resnet50", "init.pth", 1)
    assert (cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.epochs, cfg.warmup) == \
        (128, 0.1, 0.9, 5e-4, 100, 0)
    assert (cfg.milestones, cfg.scheduler, cfg.eval_from, cfg.save_dir, cfg.ticket) == \
        ((50, 75), "multistep", 45, "runs/x", "runs/imp/9-ticket.pth.tar")
    assert (cfg.train_attack.kind, cfg.train_attack.steps, cfg.train_attack.eps, cfg.train_attack.alpha) == \
        ("pgd", 10, 8 / 255, 2 / 255)
    assert (cfg.test_attack.steps, cfg.test_attack.eps, cfg.test_attack.alpha) == (20, 8 / 255, 2 / 255)
    assert cfg.attack_loss == "mean"  # F.cross_entropy, as the original passes it to advertorch


def test_adv_svhn_line_uses_cosine(recorder):
    cfg = run_script(recorder, "adv_svhn.sh", "init.pth", "runs/s", "t.pth.tar")
    assert (cfg.dataset, cfg.lr, cfg.epochs, cfg.batch_size, cfg.init, cfg.save_dir, cfg.ticket) == \
        ("svhn", 0.01, 80, 128, "init.pth", "runs/s", "t.pth.tar")
    assert (cfg.scheduler, cfg.eval_from, cfg.mode, cfg.train_attack.steps) == ("cosine", 0, "adv", 10)


def test_std_line_measures_ra_too(recorder):
    cfg = run_script(recorder, "std.sh", "svhn", "init.pth", "runs/s", "t.pth.tar")
    assert (cfg.mode, cfg.dataset, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.epochs) == \
        ("std", "svhn", 64, 0.001, 5e-4, 150)
    assert (cfg.milestones, cfg.eval_from, cfg.train_attack) == ((50, 100), 0, None)
    assert (cfg.test_attack.steps, cfg.test_attack.eps, cfg.test_attack.alpha) == (20, 8 / 255, 2 / 255)
    assert (cfg.data_number, cfg.attack_loss, cfg.tf32) == (1.0, "mean", True)  # data: the original's whole split
    assert run_script(recorder, "std.sh", "svhn", "init.pth", "runs/s", "", "--no-tf32").tf32 is False


def test_std_line_takes_a_data_fraction_which_extends_the_original(recorder):
    """The original's standard transfer has no --data_number; ours keeps it for the data-limited double-win."""
    cfg = run_script(recorder, "std.sh", "cifar10", "init.pth", "runs/s", "", "--data_number", "0.01")
    assert (cfg.mode, cfg.data_number) == ("std", 0.01)
    assert "extends the original" in open(os.path.join(SCRIPTS, "std.sh")).read()


@pytest.mark.parametrize("ticket", ["", "none"])
def test_empty_ticket_is_dense_and_extra_flags_override(recorder, ticket):
    cfg = run_script(recorder, "adv_cifar.sh", "cifar10", "init.pth", "runs/d", ticket,
                        "--epochs", "3", "--eval_from", "0", "--data", "/datasets", "--lr", "0.02")
    assert cfg.ticket is None
    assert (cfg.epochs, cfg.eval_from, cfg.data, cfg.lr, cfg.dataset) == (3, 0, "/datasets", 0.02, "cifar10")


@pytest.mark.parametrize("name,args", [("adv_cifar.sh", ("cifar10", "w", "s")), ("adv_svhn.sh", ("w", "s")),
                                       ("std.sh", ("cifar10", "", "s", ""))])
def test_missing_positionals_print_usage(recorder, name, args):
    r = subprocess.run(["bash", os.path.join(SCRIPTS, name), *args], capture_output=True, text=True,
                       env={**os.environ, "DOUBLEWIN_PY": str(recorder[0])})
    assert r.returncode == 2 and r.stderr.startswith("usage: bash script/train_downstream/" + name)
    assert not os.path.exists(recorder[1])


def test_flags_are_checked_once_at_the_edge():
    base = ["--init", "w.pth", "--save_dir", "s"]
    parse = cli.get_args_parser().parse_args
    with pytest.raises(UserError, match="--train_eps 8 is above 1"):  # 1/255 units where a fraction is expected
        cli.config_from_args(parse(base + ["--train_eps", "8"]))
    assert cli.config_from_args(parse(base + ["--mode", "adv", "--train_eps", "4/255"]))[0].train_attack.eps == 4 / 255
    with pytest.raises(ConfigError, match="--eval_from -1"):
        cli.config_from_args(parse(base + ["--eval_from", "-1"]))
    with pytest.raises(ConfigError, match="--train_step 0"):
        cli.config_from_args(parse(base + ["--train_step", "0"]))
    with pytest.raises(ConfigError, match="--decreasing_lr"):
        cli.config_from_args(parse(base + ["--decreasing_lr", "50;75"]))
    with pytest.raises(ConfigError, match="--autoattack-attacks"):
        cli.config_from_args(parse(base + ["--autoattack-attacks", "apgd-ce"]))  # needs version custom
    fgsm = cli.config_from_args(parse(base + ["--attack", "fgsm"]))[0].train_attack
    assert (fgsm.kind, fgsm.steps, fgsm.eps, fgsm.alpha) == ("fgsm", 1, 8 / 255, None)


def test_an_adv_script_with_fgsm_takes_one_step_whatever_its_pgd_lines_say(recorder):
    """The scripts pass --train_step 10 --train_gamma 2/255 for PGD; with --attack fgsm they do not apply."""
    cfg = run_script(recorder, "adv_cifar.sh", "cifar10", "init.pth", "runs/f", "", "--attack", "fgsm")
    assert (cfg.train_attack.kind, cfg.train_attack.steps) == ("fgsm", 1)
    assert cfg.train_attack.step_size == attacks.FGSM_STEP * 8 / 255
