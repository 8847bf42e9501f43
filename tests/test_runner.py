"""training/runner.py, the run skeleton both stages share: the rank-0 rule, SAVE_DIR set-up, loaders, per-epoch seeds,
the kernel mode of a run and the metrics trimming on resume."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from infra import paths
from infra import reproducibility
from training import runner, savedir
from infra.distributed import DistEnv, Launch
from infra.flags import flag
from infra.errors import ConfigError
from lottery import cli as imp_cli
from transfer import cli as transfer_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("entry, argv", [
    (transfer_cli.main, ["--init", "", "--dataset", "folder", "--data", "d"]),
    (lambda argv: imp_cli.main(argv, adversarial=False), ["d"]),
])
def test_both_stages_leave_save_dir_to_node_0(monkeypatch, tmp_path, entry, argv):
    """Under the original's multi-node flags, node 1 does none of rank 0's set-up (config.json, --restart)."""
    monkeypatch.delenv("RANK", raising=False)
    launched = []
    monkeypatch.setattr(runner, "start", lambda worker, cfg, opts: launched.append(opts) or "stub")
    save = tmp_path / "run"
    assert entry([*argv, "--save_dir", str(save), "--world-size", "2", "--rank", "1",
                  "--dist-url", "tcp://127.0.0.1:1"]) == 0
    assert launched and not save.exists()
    assert entry([*argv, "--save_dir", str(save), "--world-size", "2", "--rank", "0",
                  "--dist-url", "tcp://127.0.0.1:1"]) == 0
    assert (save / paths.CONFIG).exists()


def test_loader_settings_build_a_loader():
    data = TensorDataset(torch.zeros(4, 1))
    for workers, reused in ((0, False), (1, True)):
        settings = runner.loader_settings(torch.device("cpu"), workers, reused=reused)
        assert settings["pin_memory"] is False and settings["num_workers"] == workers
        assert len(list(DataLoader(data, batch_size=2, **settings))) == 2
    assert runner.loader_settings(torch.device("cuda"), 2)["pin_memory"] is True


def test_train_order_is_a_pure_function_of_seed_epoch_and_rank():
    ds = TensorDataset(torch.arange(40))

    def order(seed: int, epoch: int) -> list[int]:
        loader = runner.train_loader(ds, 8, seed=seed, epoch=epoch, env=DistEnv(), workers=0)
        return torch.cat([b[0] for b in loader]).tolist()
    assert order(1, 3) == order(1, 3) and sorted(order(1, 3)) == list(range(40))
    assert order(1, 3) != order(1, 4) and order(1, 3) != order(2, 3)
    shards = [runner.eval_loader(ds, 7, env=DistEnv(rank=r, world_size=3), workers=0) for r in range(3)]
    seen = sorted(i for s in shards for b in s for i in b[0].tolist())
    assert seen == list(range(40))  # every image once over the ranks


@pytest.mark.slow
def test_epoch_seeds_are_pure_and_independent_of_the_loader_order():
    # pinned values: a run resumed in another process, or by another version of this code, must draw the same
    # attack starts, so the seed may depend on (seed, epoch, rank) only: no hash randomisation, no clock, no state
    assert reproducibility.epoch_seed(1, 2, 0) == 3222608475179998
    assert reproducibility.epoch_seed(1, 2, 1) == 32378524864976316
    other = subprocess.run([sys.executable, "-c", "from infra import reproducibility as r; print(r.epoch_seed(1, 2, 0))"],
                           capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert other.stdout.strip() == "3222608475179998", other.stderr
    seeds = {reproducibility.epoch_seed(s, e, r) for s in (1, 2) for e in range(5) for r in range(3)}
    assert len(seeds) == 30
    assert reproducibility.epoch_seed(1, 2, 0) != reproducibility.epoch_generator(1, 2, 0).initial_seed()


def test_per_rank_batch_names_the_flag():
    assert runner.per_rank_batch(10, DistEnv(rank=0, world_size=3), flag="-b") == 3
    with pytest.raises(ConfigError, match="--batch_size 2 is the global batch"):
        runner.per_rank_batch(2, DistEnv(rank=0, world_size=4), flag="--batch_size")


def test_truncate_metrics_keeps_the_completed_epochs_and_drops_a_torn_line(tmp_path):
    path = tmp_path / paths.METRICS
    path.write_text("".join(json.dumps({"epoch": e}) + "\n" for e in range(4)) + '{"epoch": 9, "va')
    runner.truncate_metrics(str(tmp_path), 2)
    assert [json.loads(line)["epoch"] for line in path.read_text().splitlines()] == [0, 1]
    runner.truncate_metrics(str(tmp_path), 0)
    assert path.read_text() == ""


def test_a_deterministic_run_leaves_the_process_as_it_found_it(tmp_path):
    seen = []
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)

    class Cfg:
        save_dir, deterministic, tf32, amp = str(tmp_path), True, False, None

    def body(env, cfg):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
                     torch.backends.cudnn.allow_tf32))
    runner.in_worker(body, DistEnv(), Cfg)
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before == (False, False)
    Cfg.deterministic, Cfg.tf32 = False, True
    runner.in_worker(body, DistEnv(), Cfg)  # without the flag: cuDNN's autotuner, for the run only
    assert seen == [(True, False, False), (False, True, True)]
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before


@dataclasses.dataclass(frozen=True)
class _Settings(runner.RunSettings):
    lr: float = flag("--lr", 0.1, "learning rate", group="training", type=float)


def _prepare(save: str, restart: bool = False, clear=lambda d: [], started: bool = True, **fields) -> None:
    runner.prepare_save_dir(_Settings(save_dir=save, restart=restart, **fields), Launch(), clear=clear,
                            started=started)


def test_prepare_save_dir_restart_clears_before_config_changes(tmp_path):
    save = str(tmp_path)
    _prepare(save)
    with pytest.raises(ConfigError, match=r"lr \(0.1 -> 0.2\)"):
        _prepare(save, lr=0.2)
    calls = []
    _prepare(save, restart=True, lr=0.2, clear=lambda d: calls.append(
        json.load(open(os.path.join(d, paths.CONFIG)))["lr"]) or [])
    assert calls == [0.1]  # the old files went while config.json still named the old run
    assert json.load(open(os.path.join(save, paths.CONFIG)))["lr"] == 0.2


def test_settings_that_change_no_result_may_differ_and_the_others_are_each_named(tmp_path):
    save = str(tmp_path)
    _prepare(save)
    _prepare(save, workers=0, show_progress=False, trust_pickle=True)  # declared result=False in RunSettings
    with pytest.raises(ConfigError) as e:
        _prepare(save, lr=0.2, seed=2, tf32=False)
    assert all(s in str(e.value) for s in ("lr (0.1 -> 0.2)", "seed (1 -> 2)", "tf32 (True -> False)", "--restart"))
    _prepare(save, lr=0.2, started=False)  # a folder without progress takes the new settings
    assert json.load(open(os.path.join(save, paths.CONFIG)))["lr"] == 0.2


@pytest.mark.parametrize("old", [{"lr": 0.1}, {"lr": 0.1, "format": savedir.FORMAT - 1}])
def test_a_folder_of_another_run_format_is_refused_naming_restart(tmp_path, old):
    save = str(tmp_path)
    _prepare(save)
    recorded = json.load(open(os.path.join(save, paths.CONFIG)))
    assert recorded["format"] == savedir.FORMAT and recorded["launch"] == dataclasses.asdict(Launch())
    json.dump({**recorded, **old} if "format" in old else {k: v for k, v in recorded.items() if k != "format"},
              open(os.path.join(save, paths.CONFIG), "w"))
    with pytest.raises(ConfigError, match="older run-folder format.*--restart"):
        _prepare(save)
    _prepare(save, restart=True)
    assert json.load(open(os.path.join(save, paths.CONFIG)))["format"] == savedir.FORMAT


def test_both_stages_seed_each_epoch_with_the_one_policy(monkeypatch, tmp_path, image_folder_root, pretrained):
    """Ticket finding and transfer alike train epoch e with the global RNG seeded by reproducibility.epoch_seed(seed, e,
    rank), not by the loader's order seed."""
    from lottery import levels as imp_levels
    from recipes import argv, imp_argv, write_init
    from transfer import run as transfer_run
    seen: dict[str, list[int]] = {"transfer": [], "imp": []}

    def spy(stage, real):
        return lambda *a, **k: seen[stage].append(torch.initial_seed()) or real(*a, **k)
    monkeypatch.setattr(transfer_run, "train_one_epoch", spy("transfer", transfer_run.train_one_epoch))
    monkeypatch.setattr(imp_levels.engine, "train_one_epoch", spy("imp", imp_levels.engine.train_one_epoch))
    assert transfer_cli.main(argv(tmp_path / "t", image_folder_root, "folder", pretrained.init, epochs=2,
                                  extra=("--seed", "5"))) == 0
    init = write_init(str(tmp_path / "init.pth"))
    assert imp_cli.main(imp_argv(image_folder_root, init, str(tmp_path / "i"), "--epochs", "2", "--prune_epoch", "1",
                                 "--seed", "5"), adversarial=False) == 0
    want = [reproducibility.epoch_seed(5, e, 0) for e in range(2)]
    assert seen == {"transfer": want, "imp": want}
