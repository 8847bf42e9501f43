"""FLOPs of one pass, counted by `torch.utils.flop_counter` on a `meta` copy of a model (no memory, no arithmetic):
the one counter behind the compute ledger and the campaign's estimate. 2 FLOPs per multiply-add; convolutions
and matrix products only (BatchNorm, ReLU, pooling and element-wise work are not counted)."""
from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("train", "attack", "eval")  # forward + full backward; forward + input gradient; forward only


class _PlainBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm of any rank without synchronisation: what a SyncBatchNorm layer computes on one process."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        pass


def meta_copy(net: nn.Module) -> nn.Module:
    """A copy of `net` on the meta device whose BatchNorm layers never synchronise (SyncBatchNorm, which refuses a
    meta input inside a process group, becomes a plain BatchNorm: the same FLOPs) and that runs eagerly."""
    meta = copy.deepcopy(net).to("meta")
    if getattr(meta, "_compiled_call_impl", None) is not None:  # nn.Module.compile(): count eager ops
        meta._compiled_call_impl = None
    for parent in [meta, *meta.modules()]:
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and type(child) not in (
                    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
                plain = _PlainBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                        child.track_running_stats, device="meta")
                plain.train(child.training)
                setattr(parent, name, plain)
    return meta


def count(meta: nn.Module, kind: str, shape: tuple[int, ...]) -> int:
    """FLOPs of one `kind` pass of a batch of `shape` through `meta` (a `meta_copy`). "train" runs in train mode
    (forward, loss, backward to every weight); "attack" and "eval" in eval mode, as attacks and evaluation run
    ("attack": forward, loss, backward to the input only)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of pass {kind!r}: one of {', '.join(KINDS)}")
    from torch.utils.flop_counter import FlopCounterMode
    meta.train(kind == "train")
    for p in meta.parameters():
        p.requires_grad_(kind == "train")
    x = torch.zeros(shape, device="meta", requires_grad=kind == "attack")
    with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(kind != "eval"):
        logits = meta(x * 1 if kind == "attack" else x)  # a non-leaf input: the counter's hooks need one
        loss = F.cross_entropy(logits, torch.zeros(shape[0], dtype=torch.long, device="meta"))
        if kind != "eval":
            loss.backward()
    return int(counter.get_total_flops())


@functools.cache
def per_image(arch: str, image_size: int, kind: str, *, num_classes: int = 1000, small_input: bool = False) -> float:
    """FLOPs per image of one `kind` pass through `models.build(arch, num_classes)` at `image_size` px, counted once
    per process (a batch of 2: FLOPs grow linearly with the batch, and train-mode BatchNorm needs 2 values)."""
    return count(_meta_model(arch, num_classes, small_input), kind, (2, 3, image_size, image_size)) / 2


@functools.cache
def _meta_model(arch: str, num_classes: int, small_input: bool) -> nn.Module:
    """The arch on the meta device with a `num_classes` head (built once per arch: the head is swapped there)."""
    import models
    if num_classes == 1000:
        return meta_copy(models.build(arch, 1000, small_input=small_input))
    return models.replace_head(copy.deepcopy(_meta_model(arch, 1000, small_input)), num_classes)
