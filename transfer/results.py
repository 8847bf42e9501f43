"""The end of a transfer run: test SA and PGD RA of the last epoch and (with AutoAttack RA on request) of the best-SA
and best-RA checkpoints, results.json, and the training-curve plot."""
from __future__ import annotations

import base64
import io
import json
import logging
import os
import platform
import time
from dataclasses import replace
from functools import partial
from typing import Callable, Sequence

import numpy as np
import torch
import torchvision
from torch import nn

import pruning_utils
from attacks import build_attack
from infra.checkpoint import atomic_write_bytes, load_own, read_jsonl
from infra.paths import METRICS, RA_BEST, RESULTS, SA_BEST
from infra.distributed import DistEnv, ShardSampler, all_reduce_sum
from infra.reproducibility import seed_epoch
from infra import watchdog
from infra.runlog import LOGGER
from training import ledger
from training import runner
from training.engine import Step, evaluate
from transfer.state import Training, restore

log = logging.getLogger(LOGGER)


def plain(value) -> bool:
    """JSON-safe metadata (ticket meta is copied to results.json only when plain)."""
    if isinstance(value, (list, tuple)):
        return all(plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v) for k, v in value.items())
    return value is None or isinstance(value, (str, int, float, bool))


def attack_dict(cfg) -> dict | None:
    """An AttackConfig with eps and step size both as fractions of the pixel range and in 1/255 units."""
    if cfg is None:
        return None
    alpha = cfg.step_size
    return {"kind": cfg.kind, "steps": cfg.steps, "random_start": cfg.random_start, "eps": cfg.eps,
            "eps_255": cfg.eps * 255, "alpha": alpha, "alpha_255": alpha * 255, "describe": cfg.describe()}


def autoattack_settings(cfg) -> dict | None:
    if not cfg.autoattack:
        return None
    return {"n": cfg.autoattack, "version": cfg.autoattack_version, "attacks": list(cfg.autoattack_attacks),
            "norm": "Linf", "eps": cfg.test_attack.eps, "eps_255": cfg.test_attack.eps * 255}


def final_precision(cfg) -> str:
    """The precision of the final test: fp32, or the training's --amp with --test-amp (bf16 logits tie
    top-1 and round the attack's images)."""
    return cfg.amp if cfg.test_amp and cfg.amp else "fp32"


def is_complete(cfg) -> bool:
    """results.json exists, says complete, and was tested with the AutoAttack settings and precision asked for
    now (a file without `test_precision` was tested under the run's --amp)."""
    try:
        with open(os.path.join(cfg.save_dir, RESULTS)) as f:
            res = json.load(f)
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(res, dict) and res.get("complete") is True and res.get("autoattack") == autoattack_settings(cfg) \
        and res.get("test_precision", cfg.amp or "fp32") == final_precision(cfg)


# ---------------------------------------------------------------------------- final test
def pruned_nonzero(model: nn.Module, mask: pruning_utils.Mask | None) -> int:
    """Pruned weights that are not exactly zero (always 0 unless the one mask mechanism is broken)."""
    params = dict(model.named_parameters())
    return sum(int(params[k].detach()[~m.to(params[k].device).bool()].count_nonzero()) for k, m in (mask or {}).items())


def packed(correct: Sequence[bool]) -> str:
    """Per-image correctness for results.json: base64 of numpy.packbits in the test split's order, big-endian
    bit order (image 0 is the most significant bit of byte 0), the last byte zero-padded."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode("ascii")


# ---------------------------------------------------------------------------- AutoAttack
Fetch = Callable[[Sequence[int]], tuple[torch.Tensor, torch.Tensor]]  # indices -> (x, y) as the test saw them


def dataset_items(dataset, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of `dataset[i]` for the indices, through the dataset's own (PIL) transform."""
    return torch.stack([dataset[i][0] for i in indices]), torch.tensor([int(dataset[i][1]) for i in indices])


def autoattack_ra(model: nn.Module, dataset, cfg, env: DistEnv, *,
                  fetch: Fetch | None = None) -> tuple[float, int, list[str]]:
    """(robust accuracy in %, images, attacks run) under AutoAttack (pyautoattack, the authors' package) on
    the first `cfg.autoattack` test images, sharded over ranks; robust means surviving every attack run.
    `fetch(indices) -> (x, y)` gives the images exactly as the PGD test saw them (the device pipeline's
    batches); by default `dataset[i]` through its transform. They are gathered batch by batch on the host.

    Targeted attacks aim at min(9, classes - 1) other classes; with fewer than 4 classes apgd-t cannot run
    (its loss compares the top 4 logits) and is left out.
    """
    from pyautoattack import AutoAttack

    model.eval()
    aa = AutoAttack(model, norm="Linf", eps=cfg.test_attack.eps, version=cfg.autoattack_version,
                    attacks=list(cfg.autoattack_attacks) or None, device=env.device, seed=cfg.seed)
    classes = model.fc.out_features
    aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, classes - 1)
    aa.fab.n_target_classes = min(aa.fab.n_target_classes, classes - 1)
    if classes < 4:
        aa.attacks_to_run = [a for a in aa.attacks_to_run if a != "apgd-t"]
    idx = ShardSampler(min(cfg.autoattack, len(dataset)), env).indices
    counts = torch.tensor([0.0, float(len(idx))], dtype=torch.float64, device=env.device)
    if idx:
        batch = max(1, cfg.batch_size // env.world_size)
        fetch = fetch or partial(dataset_items, dataset)
        parts = [fetch(idx[k:k + batch]) for k in range(0, len(idx), batch)]
        x, y = torch.cat([p[0].cpu() for p in parts]), torch.cat([p[1].cpu() for p in parts])
        with watchdog.forward_progress(model):  # its attacks' steps are progress
            _, y_adv = aa.run_standard_evaluation(x, y, batch_size=batch)
        counts[0] = float((y_adv.cpu() == y).sum())
    robust, total = all_reduce_sum(counts, env).tolist()
    return 100.0 * robust / max(total, 1.0), int(total), list(aa.attacks_to_run)


def finish(env: DistEnv, cfg, run: Training, data, info: dict, state: dict) -> dict:
    """Test the last epoch's model (SA, PGD RA) and the best-SA and best-RA checkpoints (SA, PGD RA, AutoAttack RA)
    and write results.json (rank 0). `run.model` holds the last epoch's weights when called; `data` (transfer.data)
    gives the test batches, AutoAttack's images and the pipeline's name, which is recorded."""
    start = time.time()
    # fixed RNG for the attacks' random starts: a run resumed during its final test reports the same numbers
    seed_epoch(cfg.seed, cfg.epochs, env.rank)
    precision = final_precision(cfg)
    step = Step(env, amp=None if precision == "fp32" else precision, channels_last=cfg.channels_last,
                show_progress=cfg.show_progress, flops=ledger.FlopTable(run.model))
    attack = build_attack(cfg.test_attack, cfg.attack_loss)
    passes: list[dict] = []  # the tests' stats, for the ledger

    def test(where: str) -> dict:
        bad = pruned_nonzero(run.model, run.mask)
        if bad:
            raise RuntimeError(f"{where}: {bad} pruned weights are not zero")
        passes.append(evaluate(run.model, data.test, step, desc="test SA", per_image=True))
        passes.append(evaluate(run.model, data.test, replace(step, attack=attack), desc="test RA", per_image=True))
        return {"test_sa": passes[-2]["top1"], "test_ra": passes[-1]["top1"], "test_images": passes[-2]["n"],
                "test_sa_correct": packed(passes[-2].pop("correct")),
                "test_ra_correct": packed(passes[-1].pop("correct"))}

    # The last epoch first, before the best checkpoints replace its weights (the original's standard transfer
    # printed its test SA; its RA costs one PGD test pass, about 1% of a run's compute, and is kept too).
    last = {"epoch": cfg.epochs - 1, **test(f"{cfg.save_dir} (last epoch)")}
    log.info(f"last epoch ({last['epoch']}): test SA {last['test_sa']:.2f} "
             f"PGD-{cfg.test_attack.steps} RA {last['test_ra']:.2f}")
    best = _test_best(env, cfg, run, data, last, test)
    results = {**_settings(env, cfg, data, info), "test_precision": precision, **best, "last": last,
               "wall_time_s": state["wall_time_s"] + time.time() - start}
    tests = ledger.epoch_cost(None, passes, time.time() - start, device=env.device, devices=env.world_size,
                              amp=None if precision == "fp32" else precision)
    if env.is_main:  # every epoch's ledger (metrics.jsonl) and the tests' (AutoAttack's passes are not counted)
        rows = read_jsonl(os.path.join(cfg.save_dir, METRICS))
        results["cost"] = ledger.total([r["cost"] for r in rows if isinstance(r.get("cost"), dict)] + [tests])
        runner.folder(cfg.save_dir).write_json(os.path.join(cfg.save_dir, RESULTS), results)
        log.info(f"wrote {os.path.join(cfg.save_dir, RESULTS)}")
    return results


def _test_best(env: DistEnv, cfg, run: Training, data, last: dict, test: Callable[[str], dict]) -> dict:
    """{"best_sa": ..., "best_ra": ...}: each best checkpoint's val and test numbers (one test per epoch: the
    two may be one checkpoint, or the last epoch's weights, already tested)."""
    tested: dict[int, dict] = {}
    best: dict[str, dict] = {}
    for tag, name in (("best_sa", SA_BEST), ("best_ra", RA_BEST)):
        path = os.path.join(cfg.save_dir, name)
        ck = load_own(path)
        if ck["epoch"] not in tested:
            restore(run.model, ck["state_dict"], run.mask, path)
            numbers = {k: v for k, v in last.items() if k != "epoch"} if ck["epoch"] == last["epoch"] \
                else test(path)
            row = {"epoch": ck["epoch"], "val_sa": ck["val_sa"], "val_ra": ck["val_ra"], **numbers}
            if cfg.autoattack:
                aa_ra, aa_images, aa_attacks = autoattack_ra(run.model, data.splits.test, cfg, env, fetch=data.fetch)
                row.update(test_aa_ra=aa_ra, aa_images=aa_images, aa_attacks=aa_attacks)
            tested[ck["epoch"]] = row
        best[tag] = dict(tested[ck["epoch"]])
        aa = f" AutoAttack RA {best[tag]['test_aa_ra']:.2f} ({best[tag]['aa_images']} images)" \
            if cfg.autoattack else ""
        log.info(f"{tag} (epoch {ck['epoch']}): test SA {best[tag]['test_sa']:.2f} "
                 f"PGD-{cfg.test_attack.steps} RA {best[tag]['test_ra']:.2f}{aa}")
    return best


def _settings(env: DistEnv, cfg, data, info: dict) -> dict:
    """What results.json records about the run besides its test numbers."""
    splits, s = data.splits, info["ticket_sparsity"]
    return {
        "complete": True, "dataset": cfg.dataset, "data_number": cfg.data_number, "subset": cfg.subset,
        "n_train": len(splits.train), "n_val": len(splits.val), "n_test": len(splits.test),
        "num_classes": splits.num_classes, "mode": cfg.mode, "train_attack": attack_dict(cfg.train_attack),
        "test_attack": attack_dict(cfg.test_attack), "attack_loss": cfg.attack_loss, "autoattack": autoattack_settings(cfg),
        "ticket": info["ticket"], "sparsity": s, "sparsity_percent": 100 * s,
        "ticket_meta": info["ticket_meta"], "init": info["init"], "init_format": info["init_format"],
        "arch": cfg.arch, "small_input": cfg.small_input, "image_size": cfg.image_size, "pipeline": data.name,
        "seed": cfg.seed, "epochs": cfg.epochs, "eval_from": cfg.eval_from, "batch_size": cfg.batch_size, "lr": cfg.lr,
        "scheduler": cfg.scheduler, "world_size": env.world_size,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__},
    }


# ---------------------------------------------------------------------------- curves
def plot_curves(rows: list[dict], path: str, mode: str = "adv", title: str = "") -> None:
    """Train accuracy, val SA and val RA per epoch; only measured values are drawn (no placeholders)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    train = "train acc (adversarial examples)" if mode == "adv" else "train acc"
    for key, label in (("train_acc", train), ("val_sa", "val SA"), ("val_ra", "val RA")):
        points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    if rows:
        ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())  # a reader never sees half a PNG
