"""The command line of main_train_downstream.py, generated from `TransferConfig` (the original's flags plus
ours), SAVE_DIR prepared, and the run launched in the process layout the flags ask for."""
from __future__ import annotations

import argparse
import os

from infra import paths
from infra.distributed import Launch
from training import runner
from transfer import run as transfer_run
from transfer import recipes as transfer_recipes
from transfer import state as transfer_state
from transfer.config import TransferConfig
from transfer.run import resolve_pipeline


def get_args_parser() -> argparse.ArgumentParser:
    """Generated from TransferConfig and distributed.Launch, with the original's recipes (transfer/recipes.py)."""
    return runner.parser("Downstream transfer of a ticket: standard or adversarial fine-tuning, then test SA/RA. "
                         "Re-run the same command to resume.", TransferConfig, Launch,
                         recipes=transfer_recipes.RECIPES)


def config_from_args(args: argparse.Namespace) -> tuple[TransferConfig, Launch]:
    """The parsed flags, checked and converted once."""
    cfg = runner.settings_from_args(TransferConfig, args)
    resolve_pipeline(cfg)  # --pipeline device with folder data stops here, before SAVE_DIR is touched
    return cfg, runner.launch_from_args(args)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cfg, opts = config_from_args(args)
    if runner.first_process(opts):
        runner.claim_save_dir(cfg.save_dir)
        started = any(os.path.exists(os.path.join(cfg.save_dir, n))
                      for n in (paths.CHECKPOINT, paths.RESULTS))
        runner.prepare_save_dir(cfg, opts, clear=transfer_state.clear_run, started=started)
    runner.start(transfer_run.run, cfg, opts)
    return 0
