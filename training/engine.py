"""The one training / evaluation loop: clean or adversarial is only the `attack` of the run's `Step`.

    step = Step(env, amp="bf16", channels_last=True, attack=pgd, mask=ticket)
    stats = train_one_epoch(model, loader, optimizer, step, scaler=scaler, epoch=3)
    stats = evaluate(model, loader, replace(step, attack=pgd20))   # stats["top1"] is RA; without attack, SA

Metrics are accumulated on the device (no per-step host sync) and summed exactly across ranks.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

import pruning_utils
from infra.distributed import DistEnv, all_reduce_sum, broadcast_buffers, unwrap
from infra.errors import NonFiniteLossError
from infra.runlog import progress
from training.ledger import Counted, FlopTable, Tally

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# The attack's precision under each --amp: fp16 has no loss scaling for the attack, so the input gradient of a
# confidently classified image underflows to exactly 0 and PGD stalls there; fp32 keeps fp32's signs.
ATTACK_AMP = {None: None, "bf16": "bf16", "fp16": None}
NAN_HINT = ("the last good checkpoint is kept; lower --lr (with --restart or a new --save_dir: a changed "
            "config is refused) or check the data")
NAN_CHECK_EVERY = 20  # steps between host-side checks of the non-finite flag (a check is a device sync)


@dataclass(frozen=True)
class Step:
    """How every batch of a pass is run: on which ranks and device (`env`), in which precision and memory format,
    against which attack (None: clean), under which ticket mask (training only), with a progress bar or not."""
    env: DistEnv = field(default_factory=DistEnv)
    amp: str | None = None
    channels_last: bool = False
    attack: Callable | None = None
    mask: dict[str, torch.Tensor] | None = None
    show_progress: bool = True
    flops: FlopTable | None = None  # the model's FLOP counts for the ledger (None: passes counted, FLOPs not)

    @property
    def device(self) -> torch.device:
        return self.env.device


def autocast(device: torch.device, amp: str | None):
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def adversarial(attack: Callable, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                device: torch.device, amp: str | None) -> torch.Tensor:
    """attack(net, x, y) in the attack's precision for `amp` (ATTACK_AMP: fp16 training attacks in fp32)."""
    precision = ATTACK_AMP[amp]
    with autocast(device, precision) if precision else torch.autocast(device.type, enabled=False):
        return attack(net, x, y)


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    x = x.to(device, non_blocking=True)
    y = y.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def _accumulate(acc: torch.Tensor, loss_sum: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """acc += (loss sum, top-1 hits, top-5 hits, n) on the device; no tensor is made from a host value (that would
    be a blocking host-to-device copy, i.e. a sync, every step). Returns the batch's top-1 hits (bool)."""
    hit = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(y[:, None])
    acc[:3] += torch.stack([loss_sum.double(), hit[:, :1].sum().double(), hit.any(dim=1).sum().double()])
    acc[3] += y.numel()
    return hit[:, 0]


def _per_image(hits: list[torch.Tensor], n: int, env: DistEnv) -> list[bool]:
    """Every rank's top-1 hits, in the test split's order: rank r's shard holds images r, r+W, r+2W, ...
    (ShardSampler and the device pipeline's evaluation order)."""
    device = hits[0].device if hits else torch.device("cpu")
    full = torch.zeros(n, dtype=torch.int32, device=device)
    mine = torch.cat(hits).to(torch.int32) if hits else full[:0]
    world, rank = (env.world_size, env.rank) if env is not None else (1, 0)
    full[rank::world] = mine
    return [bool(v) for v in all_reduce_sum(full, env).cpu().tolist()]


def _mask_on_device(net: torch.nn.Module, mask: dict[str, torch.Tensor] | None):
    """The mask as bool tensors on its weights' devices and with their strides, once per epoch rather than a copy
    every step (the mask passes then run over contiguous memory in step with the weights)."""
    if mask is None:
        return None
    params = dict(net.named_parameters())
    out = {}
    for k, v in mask.items():
        p = params.get(k)
        if p is None or p.shape != v.shape:  # pruning_utils names the bad key
            out[k] = v.to(torch.bool)
        else:  # bool, on the weight's device, in the weight's memory format (channels_last: same strides)
            out[k] = torch.empty_like(p, dtype=torch.bool).copy_(v)
    return out


def _summary(acc: torch.Tensor, env: DistEnv | None) -> dict:
    loss_sum, c1, c5, n = all_reduce_sum(acc.clone(), env).tolist()
    n = max(n, 1.0)
    return {"loss": loss_sum / n, "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "n": int(n)}


def _running(acc: torch.Tensor) -> str:
    """This rank's loss and top-1 so far, for the progress bar (a host sync: called about once a second)."""
    loss_sum, c1, _, n = acc.tolist()
    return f"loss {loss_sum / n:.4f} top1 {100 * c1 / n:.2f}%" if n else ""


def train_one_epoch(model: torch.nn.Module, loader, optimizer: torch.optim.Optimizer, run: Step = Step(), *,
                    scaler=None, epoch: int = 0, desc: str = "train") -> dict:
    """One epoch of (adversarial) training. Returns {"loss", "top1", "top5", "n", "time", "images_per_s", "cost"}
    ("cost": images, forward and backward passes and FLOPs over every rank, see training.ledger).

    Adversarial examples are made with the model in train mode, as the original did. With `run.mask`, gradients
    of pruned weights are zeroed after backward and the mask is re-applied after each optimizer step (the one
    mask mechanism, see pruning_utils). Learning-rate schedules are the caller's, stepped between epochs.
    `epoch` only names the epoch in a NaN error.
    """
    model.train()
    net = unwrap(model)
    mask = _mask_on_device(net, run.mask)
    device, amp = run.device, run.amp
    acc = torch.zeros(4, device=device, dtype=torch.float64)
    bad = torch.zeros((), device=device, dtype=torch.bool)
    tally, seen, hits = Tally(run.flops), Counted(net), []
    start = time.time()
    shown = progress(loader, desc=desc, enabled=run.show_progress and run.env.is_main, stats=lambda: _running(acc))
    for step, (x, y) in enumerate(shown):
        x, y = _to_device(x, y, device, run.channels_last)
        seen.calls = 0
        if run.attack is not None:
            x = adversarial(run.attack, seen, x, y, device=device, amp=amp)
        tally.batch("train", tuple(x.shape), seen.calls)
        with autocast(device, amp):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if mask is not None:
                pruning_utils.mask_grads(net, mask)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if mask is not None:
                pruning_utils.mask_grads(net, mask)
            optimizer.step()
        if mask is not None:
            pruning_utils.apply_mask(net, mask)
        with torch.no_grad():
            bad |= ~torch.isfinite(loss.detach())
            _accumulate(acc, loss.detach().double() * y.numel(), logits.detach(), y)
        if (step + 1) % NAN_CHECK_EVERY == 0 and bool(bad):
            raise NonFiniteLossError(f"training loss became NaN/inf at epoch {epoch}, step <= {step}: {NAN_HINT}")
    if bool(bad):
        raise NonFiniteLossError(f"training loss became NaN/inf in epoch {epoch}: {NAN_HINT}")
    out = _summary(acc, run.env)
    out["time"] = time.time() - start
    out["images_per_s"] = out["n"] / max(out["time"], 1e-9)
    out["cost"] = tally.summed(device, lambda t: all_reduce_sum(t, run.env))
    return out


def evaluate(model: torch.nn.Module, loader, run: Step = Step(), *, desc: str = "eval",
             per_image: bool = False) -> dict:
    """Accuracy in eval mode: SA without `run.attack`, RA with it (examples made against the eval-mode model;
    `run.mask` is not used: the weights already hold it). Under DDP every rank first takes rank 0's buffers
    (BatchNorm statistics), as validating through DDP did: the numbers are those of the model rank 0 saves.
    With `per_image`, out["correct"] lists each image's top-1 hit in the split's order (the loader must shard
    as ShardSampler does)."""
    model.eval()
    net = unwrap(model)
    broadcast_buffers(net, run.env)
    device, amp = run.device, run.amp
    acc = torch.zeros(4, device=device, dtype=torch.float64)
    tally, seen, hits = Tally(run.flops), Counted(net), []
    shown = progress(loader, desc=desc, enabled=run.show_progress and run.env.is_main, stats=lambda: _running(acc))
    for x, y in shown:
        x, y = _to_device(x, y, device, run.channels_last)
        seen.calls = 0
        if run.attack is not None:
            x = adversarial(run.attack, seen, x, y, device=device, amp=amp)
        tally.batch("eval", tuple(x.shape), seen.calls)
        with torch.no_grad(), autocast(device, amp):
            logits = net(x)
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
        hit = _accumulate(acc, loss, logits, y)
        if per_image:
            hits.append(hit)
    out = _summary(acc, run.env)
    if per_image:
        out["correct"] = _per_image(hits, out["n"], run.env)
    out["cost"] = tally.summed(device, lambda t: all_reduce_sum(t, run.env))
    return out
