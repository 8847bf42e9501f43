"""The command line of main_imp_adv.py / main_imp_std.py, generated from `IMPConfig` (the original's flags plus
ours), config.json checked, and the run launched in the process layout the flags ask for."""
from __future__ import annotations

import argparse

from infra import runlog
from infra.distributed import Launch
from training import runner
from lottery import config as imp_config
from lottery import levels as imp_levels
from lottery import recipes as imp_recipes
from lottery import state as imp_state


def get_args_parser(adversarial: bool) -> argparse.ArgumentParser:
    """Generated from IMPConfig (the attack's flags with `adversarial` only) and distributed.Launch, with the
    paper's recipe of this stage (lottery/recipes.py)."""
    what = "A-IMP (adversarial training)" if adversarial else "IMP (standard training)"
    return runner.parser(
        f"{what} on an ImageNet-layout folder: level 1 prunes the pre-trained conv weights by magnitude; each level "
        "trains --prune_epoch epochs, prunes --rate of the survivors, rewinds them to the pre-trained weights. "
        "Defaults are the paper's. Re-run the same command to resume.",
        imp_config.IMPConfig, Launch, skip=() if adversarial else imp_config.ATTACK_FIELDS,
        recipes={r.name: r for r in [imp_recipes.IMP_ADV if adversarial else imp_recipes.IMP_STD]})


def config_from_args(args: argparse.Namespace) -> imp_config.IMPConfig:
    return runner.settings_from_args(imp_config.IMPConfig, args)


def main(argv: list[str] | None, *, adversarial: bool) -> int:
    args = get_args_parser(adversarial).parse_args(argv)
    cfg = config_from_args(args)
    opts = runner.launch_from_args(args)
    first = runner.first_process(opts)
    if first:
        runner.claim_save_dir(cfg.save_dir)
    if first and not cfg.evaluate:
        runner.prepare_save_dir(cfg, opts, clear=imp_state.clear_outputs, started=True)
    layout = runner.start(imp_levels.worker, cfg, opts)
    if first:
        runlog.setup_log(cfg.save_dir, True).info(f"process layout: {layout}")
    return 0
