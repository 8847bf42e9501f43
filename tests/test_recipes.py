"""The recipes (lottery/recipes.py, transfer/recipes.py) behind `--recipe NAME` and the bash drivers that pass it:
each driver's command resolves to exactly the settings of the argument lines the drivers spelled out before the
recipes were data (kept here as the reference), explicit flags override a recipe, and a bad --recipe is one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from infra import flags
from infra.distributed import Launch
from lottery import cli as imp_cli
from lottery import recipes as imp_recipes
from transfer import cli as transfer_cli
from transfer import recipes as transfer_recipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = ["--dist-url", "auto", "--dist-backend", "nccl", "--multiprocessing-distributed", "--world-size", "1",
          "--rank", "0"]
IMP = ["-a", "resnet50", *LAUNCH, "--wd", "1e-4", "--seed", "1", "--lr", "0.0005", "--rate", "0.2"]
A_IMP = ["--train_eps", "8/255", "--train_step", "3", "--train_gamma", "16/765"]
TAIL = ["-b", "2048", "--prune_epoch", "30", "--epochs", "570"]
TRANSFER = ["--data", "../data", "--data_number", "1", "--arch", "resnet50", "--seed", "1"]
PGD_10 = ["--train_eps", "8/255", "--train_step", "10", "--train_gamma", "2/255"]
PGD_20 = ["--test_eps", "8/255", "--test_step", "20", "--test_gamma", "2/255"]
# driver -> (its positionals, the argument line it ran before the recipes were data: the reference)
BEFORE = {
    "imp_pretrain/imp_adv.sh": (["W", "SAVE", "DATA"],
                                [*IMP, *A_IMP, "--init", "W", "--save_dir", "SAVE", "DATA", *TAIL]),
    "imp_pretrain/imp_std.sh": (["W", "SAVE", "DATA"], [*IMP, "--init", "W", "--save_dir", "SAVE", "DATA", *TAIL]),
    "train_downstream/adv_cifar.sh": (["cifar100", "W", "SAVE", "T"], [
        "--mode", "adv", *TRANSFER[:2], "--dataset", "cifar100", *TRANSFER[2:4], "--init", "W", *TRANSFER[4:],
        "--batch_size", "128", "--lr", "0.1", "--weight_decay", "5e-4", "--epochs", "100", "--decreasing_lr", "50,75",
        "--scheduler", "multistep", "--warmup", "0", "--eval_from", "45", *PGD_10, *PGD_20, "--save_dir", "SAVE",
        "--tickets_file", "T"]),
    "train_downstream/adv_svhn.sh": (["W", "SAVE", "T"], [
        "--mode", "adv", *TRANSFER[:2], "--dataset", "svhn", *TRANSFER[2:4], "--init", "W", *TRANSFER[4:],
        "--batch_size", "128", "--lr", "0.01", "--weight_decay", "5e-4", "--epochs", "80", "--decreasing_lr", "50,75",
        "--scheduler", "cosine", "--warmup", "0", "--eval_from", "0", *PGD_10, *PGD_20, "--save_dir", "SAVE",
        "--tickets_file", "T"]),
    "train_downstream/std.sh": (["svhn", "W", "SAVE", ""], [
        "--mode", "std", *TRANSFER[:2], "--dataset", "svhn", *TRANSFER[2:4], "--init", "W", *TRANSFER[4:],
        "--batch_size", "64", "--lr", "0.001", "--weight_decay", "5e-4", "--epochs", "150", "--decreasing_lr",
        "50,100", "--scheduler", "multistep", "--warmup", "0", "--eval_from", "0", *PGD_20, "--save_dir", "SAVE",
        "--tickets_file", ""]),
}


def parser_of(entry: str):
    return {"main_imp_adv.py": lambda: imp_cli.get_args_parser(True),
            "main_imp_std.py": lambda: imp_cli.get_args_parser(False),
            "main_train_downstream.py": transfer_cli.get_args_parser}[entry]()


def settings(entry: str, argv: list[str]):
    """The stage's config and launch settings that `argv` resolves to (what config.json records)."""
    args = parser_of(entry).parse_args(argv)
    if entry == "main_train_downstream.py":
        return transfer_cli.config_from_args(args)
    return imp_cli.config_from_args(args), flags.from_args(Launch, args)


@pytest.fixture
def recorder(tmp_path):
    """An interpreter standing in for python: a run (-u ...) records its argv; script/env.sh's checks pass."""
    path, out = tmp_path / "python", tmp_path / "argv.json"
    path.write_text(f"#!{sys.executable}\nimport json, sys\nif sys.argv[1:2] == ['-u']:\n"
                    f"    json.dump(sys.argv[1:], open({str(out)!r}, 'w'))\n")
    path.chmod(0o755)
    return path, out


def driven(recorder, driver: str, *args: str) -> tuple[str, list[str]]:
    exe, out = recorder
    env = {**os.environ, "DOUBLEWIN_PY": str(exe)}
    subprocess.run(["bash", os.path.join(ROOT, "script", driver), *args], check=True, env=env, timeout=60)
    argv = json.load(open(out))
    return os.path.basename(argv[1]), argv[2:]


@pytest.mark.parametrize("driver", sorted(BEFORE))
def test_each_driver_resolves_to_the_settings_of_its_former_argument_line(recorder, driver):
    positionals, before = BEFORE[driver]
    entry, argv = driven(recorder, driver, *positionals)
    name = os.path.basename(driver)[:-3]
    assert argv[:2] == ["--recipe", name]  # a thin wrapper: the recipe of its own name, then the positionals
    assert settings(entry, argv) == settings(entry, before)
    assert settings(entry, ["--recipe", name, *argv[2:]]) == settings(entry, before)  # the same by hand
    extra = ["--epochs", "60", "--seed", "7"]  # trailing flags override, as before
    assert settings(entry, driven(recorder, driver, *positionals, *extra)[1]) == settings(entry, before + extra)


def test_the_recipes_are_the_drivers_names_and_import_no_torch():
    assert set(imp_recipes.RECIPES) == {"imp_std", "imp_adv"}
    assert set(transfer_recipes.RECIPES) == {"std", "adv_cifar", "adv_svhn"}
    drivers = {os.path.basename(d)[:-3] for d in BEFORE}
    assert drivers == set(imp_recipes.RECIPES) | set(transfer_recipes.RECIPES)
    code = ("import sys, lottery.recipes, transfer.recipes; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'models', 'training')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_explicit_flags_override_a_recipe_wherever_they_stand():
    base = ["--init", "w", "--save_dir", "s"]
    cfg, _ = settings("main_train_downstream.py", ["--lr", "0.5", "--recipe", "std", *base])
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.mode) == (0.5, 64, 150, "std")
    cfg, _ = settings("main_train_downstream.py", ["--recipe=adv_svhn", *base, "--dataset", "cifar10"])
    assert (cfg.dataset, cfg.scheduler, cfg.epochs) == ("cifar10", "cosine", 80)
    assert settings("main_train_downstream.py", base) != settings("main_train_downstream.py", ["--recipe", "std",
                                                                                                *base])


@pytest.mark.parametrize("argv, message", [
    (["--recipe", "imp_std"], "error: --recipe 'imp_std': not a recipe of this command (its recipes: std, "
                              "adv_cifar, adv_svhn)"),
    (["--recipe", "std", "--recipe", "adv_cifar"], "error: --recipe given twice (std, adv_cifar): pass one"),
    (["--reci", "std"], "error: --recipe std: write --recipe in full"),
])
def test_a_bad_recipe_is_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        transfer_cli.get_args_parser().parse_args([*argv, "--init", "w", "--save_dir", "s"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(message) and err.count("\n") == 1, err


def test_a_stage_offers_its_own_recipe_only(capsys):
    with pytest.raises(SystemExit):
        imp_cli.get_args_parser(False).parse_args(["--recipe", "imp_adv", "D", "--save_dir", "s"])
    assert "its recipes: imp_std" in capsys.readouterr().err
    assert "imp_adv: A-IMP" in imp_cli.get_args_parser(True).format_help().replace("\n", " ")


def test_the_dataset_tables_adversarial_recipes_are_transfer_recipes():
    from datafiles import facts
    assert set(facts.ADV_RECIPES) <= set(transfer_recipes.RECIPES)
    assert {d.adv_recipe for d in facts.DATASETS.values() if d.adv_recipe} <= set(transfer_recipes.RECIPES)
