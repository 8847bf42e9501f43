"""What a run spent: the compute ledger.

Every pass over a batch is tallied where it happens (`training.engine`): images, forward and backward passes
(an attack's steps included: PGD-k training costs k + 1 forward and k + 1 backward passes per image, k of the
backward passes for the input gradient only) and FLOPs. FLOPs are counted, not estimated: for each distinct
batch shape and kind of pass, `torch.utils.flop_counter` runs the pass once on a copy of the model on the `meta`
device (no memory, no arithmetic, no change to the real model; `models.flops`, which the campaign's estimate uses
too), and the count is multiplied by how often the pass ran. They are the FLOPs of the dense kernels the run
executes (2 per multiply-add): a ticket's zeroed weights are multiplied all the same.

A stage adds the wall seconds, the device (name and count) and the precision per epoch (`epoch_cost`, the
`cost` of each metrics.jsonl row); `total` sums rows into a run's cost (results.json, an IMP level's record, a
ticket's metadata). Device-seconds are wall seconds x devices: what a GPU-hour bill counts.
"""
from __future__ import annotations

import platform

import torch

from models import flops

KINDS = flops.KINDS  # forward + full backward; forward + input gradient; forward only
COUNTS = ("images", "forward_passes", "backward_passes", "flop")
SUMMED = ("train_images", "eval_images", "forward_passes", "backward_passes", "flop", "wall_s", "device_s")


class FlopTable:
    """FLOPs of one pass of each kind, per batch shape, for one model: counted once per shape on a meta copy
    (`models.flops`: SyncBatchNorm counted as plain BatchNorm; attack and eval passes in eval mode)."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = net
        self._meta: torch.nn.Module | None = None
        self._counts: dict[tuple[str, tuple[int, ...]], int] = {}

    def flop(self, kind: str, shape: tuple[int, ...]) -> int:
        key = (kind, tuple(shape))
        if key not in self._counts:
            if self._meta is None:
                self._meta = flops.meta_copy(self.net)
            self._counts[key] = flops.count(self._meta, kind, tuple(shape))
        return self._counts[key]


class Tally:
    """One pass's counts (this rank's): `batch` per batch; `summed` adds them up over the ranks."""

    def __init__(self, flops: FlopTable | None) -> None:
        self.flops = flops
        self.counts = [0.0] * len(COUNTS)

    def batch(self, kind: str, shape: tuple[int, ...], attack_passes: int) -> None:
        """A batch of `shape` through one `kind` pass ("train" or "eval"), after `attack_passes` attack steps."""
        n, k = shape[0], attack_passes
        flop = 0
        if self.flops is not None:
            flop = self.flops.flop(kind, shape) + (k * self.flops.flop("attack", shape) if k else 0)
        backward = k + (kind == "train")
        for i, v in enumerate((n, n * (k + 1), n * backward, flop)):
            self.counts[i] += v

    def summed(self, device: torch.device, reduce) -> dict:
        """{images, forward_passes, backward_passes, flop} over every rank (`reduce`: an all-reduce sum)."""
        total = reduce(torch.tensor(self.counts, dtype=torch.float64, device=device)).tolist()
        return {k: int(v) for k, v in zip(COUNTS, total)}


class Counted:
    """The model as an attack sees it, counting the attack's forward passes (each followed by one backward for
    the input gradient); attributes are the model's."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net, self.calls = net, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)

    def __getattr__(self, name: str):
        return getattr(self.net, name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type}: {platform.processor() or platform.machine()}"


def epoch_cost(train: dict | None, evals: list[dict], wall_s: float, *, device: torch.device, devices: int,
               amp: str | None) -> dict:
    """An epoch's ledger from `train_one_epoch`'s and `evaluate`'s stats (their "cost") and its wall seconds."""
    passes = [s["cost"] for s in ([train] if train else []) + evals]
    out = {"train_images": train["cost"]["images"] if train else 0,
           "eval_images": sum(s["cost"]["images"] for s in evals),
           **{k: sum(p[k] for p in passes) for k in COUNTS[1:]},
           "wall_s": wall_s, "device": device_name(device), "devices": devices, "precision": amp or "fp32"}
    out["device_s"] = wall_s * devices
    return out


def total(costs: list[dict]) -> dict:
    """The sum of several ledgers (epochs, levels, evaluations): counts and seconds add up; the device and the
    precision are listed when they differ (a run resumed on another card)."""
    out: dict = {k: 0 for k in SUMMED}
    out["wall_s"] = out["device_s"] = 0.0
    seen: dict[str, list] = {"device": [], "precision": [], "devices": []}
    for c in costs:
        for k in SUMMED:
            out[k] += c.get(k) or 0
        for k, values in seen.items():
            if c.get(k) is not None and c[k] not in values:
                values.append(c[k])
    for k, values in seen.items():
        out[k] = values[0] if len(values) == 1 else (values or None)
    out["device_hours"] = out["device_s"] / 3600
    return out
