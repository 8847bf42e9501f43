"""--sync-bn: BatchNorm statistics over the global batch. On GPUs, torch's SyncBatchNorm; on CPU processes
(gloo), whose tensors torch's SyncBatchNorm refuses, the same statistics and gradients from two all-reduces."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """A sum over the ranks whose gradient is the sum over the ranks of the output's gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        out = t.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out = grad.clone()
        dist.all_reduce(out, group=ctx.group)
        return out, None


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """SyncBatchNorm for CPU tensors (one process per rank over gloo; not a torch SyncBatchNorm, which DDP refuses
    on CPU): in training, the mean and the biased variance of the global batch through differentiable all-reduces
    (so the gradients are those of one BatchNorm over the whole batch), and the running statistics updated as
    BatchNorm does (unbiased variance). In eval mode, or on one rank, it is plain BatchNorm."""

    process_group = None  # the whole world (SyncBatchNorm's attribute, kept by `convert`)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        group = self.process_group or dist.group.WORLD
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        local = torch.tensor([input.numel() / input.shape[1]], dtype=input.dtype)
        sums = _AllReduceSum.apply(torch.cat([input.sum(dims), local]), group)
        n = float(sums[-1].detach())
        mean = sums[:-1] / n
        centred = input - mean.reshape(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims), group) / n
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach(), n)
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        return out

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(var * n / max(n - 1, 1.0), alpha=factor)


def convert(model: nn.Module, device: torch.device) -> nn.Module:
    """`model`'s BatchNorm layers as SyncBatchNorm, in place (same parameters, buffers and state_dict keys); on
    a CPU device the CPU-capable kind."""
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if device.type == "cpu":
        for m in converted.modules():
            if type(m) is nn.SyncBatchNorm:
                m.__class__ = CpuSyncBatchNorm
    return converted
