"""--tensorboard: each epoch's metrics row, its compute ledger and the ledger's running total as TensorBoard
scalars in SAVE_DIR/tensorboard, so `tensorboard --logdir ROOT` shows every run of a campaign (one run per
folder). The metrics.jsonl rows stay the record; these are a view of them. tensorboard is an optional dependency,
imported only when the flag is on."""
from __future__ import annotations

import os

BOARD = "tensorboard"  # SAVE_DIR/tensorboard
RUNNING = ("flop", "device_s", "train_images", "eval_images")  # the ledger's keys also drawn as running totals


def scalars(row: dict, totals: dict) -> dict[str, float]:
    """Tag -> value of one metrics row: its numbers, `cost/<key>` for the epoch's ledger and `cost_total/<key>`
    for the running totals (updated in place in `totals`)."""
    out = {f"metrics/{k}": float(v) for k, v in row.items()
           if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}
    cost = row.get("cost") if isinstance(row.get("cost"), dict) else {}
    for k, v in cost.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"cost/{k}"] = float(v)
    for k in RUNNING:
        totals[k] = totals.get(k, 0.0) + float(cost.get(k) or 0)
        out[f"cost_total/{k}"] = totals[k]
    return out


class Board:
    """The run's TensorBoard writer (rank 0 only); `purge_step`: the first epoch this process writes, so that
    epochs replayed after a resume replace what the killed process wrote for them."""

    def __init__(self, save_dir: str, earlier: list[dict], purge_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(os.path.join(save_dir, BOARD), purge_step=purge_step)
        self.totals: dict = {}
        for row in earlier:  # the running totals go on from the rows already written
            scalars(row, self.totals)

    def add(self, row: dict) -> None:
        for tag, value in scalars(row, self.totals).items():
            self.writer.add_scalar(tag, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
