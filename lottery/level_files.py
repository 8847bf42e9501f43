"""What each IMP level leaves in SAVE_DIR besides checkpoints: `<level>-ticket.pth.tar` and `<level>-sparsity.json`,
with the cost of the levels that made the ticket and, with --robust-val, the last level's robust validation."""
from __future__ import annotations

import os

from infra import checkpoint as files
from infra import paths
import pruning_utils
from training import ledger, runner
from lottery import robust_val
from lottery.config import IMPConfig, config_dict
from pruning_utils import Mask


def level_costs(save_dir: str, level: int, trained: bool = True) -> tuple[dict, dict]:
    """(the cost of every level before `level`, the cost of level `level - 1` alone, with its `epochs` trained):
    the ledger of ticket `level` from the metrics.jsonl rows of the epochs that made it. Where levels that
    `trained` had no rows here (a run resumed from another folder), the cost names them: it is not complete."""
    rows = [r for r in files.read_jsonl(os.path.join(save_dir, paths.METRICS))
            if isinstance(r, dict) and isinstance(r.get("cost"), dict) and isinstance(r.get("level"), int)]
    last = [r for r in rows if r["level"] == level - 1]
    missing = sorted(set(range(1, level)) - {r["level"] for r in rows}) if trained else []
    return ({**ledger.total([r["cost"] for r in rows if r["level"] < level]),
             **({"not_recorded_levels": missing} if missing else {})},
            {**ledger.total([r["cost"] for r in last]), "epochs": len(last)})


def write_level_files(cfg: IMPConfig, level: int, mask: Mask, digest: str, init_digest: str) -> None:
    """`<level>-ticket.pth.tar` (masks + level, sparsity, family, the init and the digest of its
    weights, config, the cumulative cost of the levels that made it) and `<level>-sparsity.json` (the same cost,
    and the last level's own)."""
    s, layers = pruning_utils.sparsity(mask), pruning_utils.layer_sparsity(mask)
    cost, last = level_costs(cfg.save_dir, level, trained=cfg.omp_sparsity is None)
    meta = {"level": level, "sparsity": s, "family": cfg.ticket_family, "init": cfg.init, "arch": cfg.arch,
            "mask_digest": digest, "init_digest": init_digest, "config": config_dict(cfg), "cost": cost}
    robust = _level_robust_val(cfg, level - 1)
    meta.update({"robust_val": robust} if robust else {})
    pruning_utils.save_ticket(paths.imp_ticket(cfg.save_dir, level), mask, meta)
    runner.folder(cfg.save_dir).write_json(paths.imp_sparsity(cfg.save_dir, level), {
        "level": level, "sparsity": s, "family": cfg.ticket_family, "mask_digest": digest, "layers": layers,
        "kept": sum(v["kept"] for v in layers.values()), "total": sum(v["total"] for v in layers.values()),
        "cost": cost, "level_cost": last, **({"robust_val": robust} if robust else {})})


def _level_robust_val(cfg: IMPConfig, level: int) -> dict | None:
    """--robust-val's numbers of level `level` (the one whose training made the next ticket), None without."""
    if cfg.robust_val is None:
        return None
    rows = [r for r in files.read_jsonl(os.path.join(cfg.save_dir, paths.METRICS))
            if isinstance(r, dict) and r.get("level") == level]
    attack = robust_val.attack_of(cfg.attack.eps, cfg.robust_val, cfg.attack_loss)
    return robust_val.summary(rows, robust_val.describe(attack, cfg.robust_val_images))
