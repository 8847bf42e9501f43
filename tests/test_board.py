"""--tensorboard: each epoch's metrics and compute ledger as TensorBoard scalars beside metrics.jsonl, in both
stages; a resumed run's replayed epochs replace the killed process's; without the package, one line."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest

import main_imp_std
from infra import checkpoint
from infra import paths
from infra.errors import ConfigError
from recipes import argv, imp_argv, write_init
from training import board
from transfer import cli
from transfer import run as transfer_run

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _scalars(save_dir) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(os.path.join(str(save_dir), board.BOARD))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_transfer_scalars_are_the_metrics_rows_and_survive_a_resume(tmp_path, image_folder_root, pretrained,
                                                                     monkeypatch):
    out = tmp_path / "run"
    real = transfer_run.train_one_epoch

    def crash_in_second_epoch(*args, epoch, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(*args, epoch=epoch, **kwargs)
    monkeypatch.setattr(transfer_run, "train_one_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        cli.main(argv(out, image_folder_root, "folder", pretrained.init, epochs=3, extra=("--tensorboard",)))
    monkeypatch.undo()
    cli.main(argv(out, image_folder_root, "folder", pretrained.init, epochs=3, extra=("--tensorboard",)))
    rows = checkpoint.read_jsonl(str(out / paths.METRICS))
    tags = _scalars(out)
    assert [s for s, _ in tags["metrics/train_loss"]] == [0, 1, 2]  # each epoch once, the replayed one included
    assert [v for _, v in tags["metrics/val_sa"]] == pytest.approx([r["val_sa"] for r in rows], rel=1e-6)
    assert [v for _, v in tags["cost/flop"]] == pytest.approx([r["cost"]["flop"] for r in rows], rel=1e-6)
    running = [sum(r["cost"]["flop"] for r in rows[: i + 1]) for i in range(3)]
    assert [v for _, v in tags["cost_total/flop"]] == pytest.approx(running, rel=1e-6)


def test_imp_scalars(tmp_path, image_folder_root):
    init = write_init(str(tmp_path / "init.pth"))
    save = tmp_path / "imp"
    assert main_imp_std.main(imp_argv(image_folder_root, init, str(save), "--epochs", "2", "--prune_epoch", "1",
                                      "--tensorboard")) == 0
    tags = _scalars(save)
    rows = checkpoint.read_jsonl(str(save / paths.METRICS))
    assert [v for _, v in tags["metrics/sparsity"]] == pytest.approx([r["sparsity"] for r in rows], rel=1e-6)
    assert [s for s, _ in tags["cost/device_s"]] == [0, 1]
    assert json.load(open(save / paths.CONFIG))["tensorboard"] is True


def test_without_the_package_the_flag_is_one_line(tmp_path, image_folder_root, pretrained, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match="--tensorboard needs the optional tensorboard package"):
        cli.main(argv(tmp_path / "run", image_folder_root, "folder", pretrained.init, extra=("--tensorboard",)))
    assert not os.path.exists(tmp_path / "run")
