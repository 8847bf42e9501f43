"""The benchmark's baseline: one training step, one PGD evaluation batch and the downstream input pipeline
written the way the original code runs them, from public APIs only (torchvision, torch.nn.utils.prune).

What makes it the original's way: masks as torch prune re-parametrisation hooks (weight = weight_orig *
float mask, recomputed every forward); advertorch 0.2.3's PGD loop (loss.backward() on a delta Parameter,
mean cross-entropy as the original passes F.cross_entropy) run in train mode under `ctx_noparamgrad` while
training, and without it while evaluating (so each PGD-20 step also computes and accumulates weight
gradients, as `validate_adv` did); fp32 NCHW; `.item()` syncs for the meters; PIL transforms image by image
in 2 DataLoader workers.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import prune
from torch.utils.data import DataLoader, Dataset

import dataset


class NormalizeByChannelMeanStd(nn.Module):
    """advertorch's normalisation layer, put in front of the network as the original's downstream code does."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def build_model(arch: str, num_classes: int, mask: dict[str, torch.Tensor] | None,
                state_dict: dict | None = None, mean=dataset.IMAGENET_MEAN, std=dataset.IMAGENET_STD, *,
                small_input: bool = False) -> nn.Module:
    """torchvision's `arch` (optionally loaded with `state_dict`, torchvision keys), masks attached with
    `prune.custom_from_mask` (float masks, a forward pre-hook per conv), behind a normalisation layer.
    `resnet_tiny` (and `small_input`, the CIFAR stem) are ours, for the smoke and accuracy checks."""
    if arch == "resnet_tiny" or small_input:
        net = _ours_without_normalize(arch, num_classes, small_input)
    else:
        net = torchvision.models.get_model(arch, num_classes=num_classes)
    if state_dict is not None:
        net.load_state_dict(state_dict)
    if mask is not None:
        modules = dict(net.named_modules())
        for name, m in mask.items():
            prune.custom_from_mask(modules[name.rsplit(".", 1)[0]], "weight", mask=m.float())
    return nn.Sequential(NormalizeByChannelMeanStd(mean, std), net)


def _ours_without_normalize(arch: str, num_classes: int, small_input: bool) -> nn.Module:
    """Archs torchvision lacks (same layers and key names as torchvision's ResNets)."""
    import models
    net = models.build(arch, num_classes, small_input=small_input)
    net.normalize = nn.Identity()
    return net


@contextlib.contextmanager
def ctx_noparamgrad(module: nn.Module):
    """advertorch.context.ctx_noparamgrad: parameters stop requiring grad inside, then are restored."""
    state = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in state:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in state:
            p.requires_grad_(flag)


def advertorch_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int,
                   rand_init: bool = True, loss_fn: Callable = F.cross_entropy) -> torch.Tensor:
    """advertorch 0.2.3's LinfPGDAttack.perturb + perturb_iterative, written out plainly."""
    x = x.detach().clone()
    delta = nn.Parameter(torch.zeros_like(x))
    if rand_init:
        delta.data.uniform_(-1, 1)
        delta.data = eps * delta.data
        delta.data = torch.clamp(x + delta.data, 0.0, 1.0) - x
    for _ in range(steps):
        loss = loss_fn(model(x + delta), y)
        loss.backward()
        delta.data = delta.data + alpha * delta.grad.data.sign()
        delta.data = torch.clamp(delta.data, -eps, eps)
        delta.data = torch.clamp(x.data + delta.data, 0.0, 1.0) - x.data
        delta.grad.data.zero_()
    return torch.clamp(x + delta, 0.0, 1.0).data


def _accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1, 5)) -> list[torch.Tensor]:
    maxk = min(max(topk), output.shape[1])
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
    return [correct[:min(k, maxk)].reshape(-1).float().sum(0) * (100.0 / target.size(0)) for k in topk]


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               attack: dict) -> float:
    """One step of the original's `train`: attack in train mode without parameter grads, then SGD."""
    model.train()
    with ctx_noparamgrad(model):
        x_adv = advertorch_pgd(model, x, y, **attack)
    output = model(x_adv)
    loss = F.cross_entropy(output, y)
    acc1, _ = _accuracy(output, y)
    loss_value, _ = loss.item(), acc1.item()  # the meters' host syncs
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss_value


def eval_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: dict) -> float:
    """One batch of the original's `validate_adv`: eval mode, the attack with parameters requiring grad."""
    model.eval()
    x_adv = advertorch_pgd(model, x, y, **attack)
    with torch.no_grad():
        output = model(x_adv)
        loss = F.cross_entropy(output, y)
    acc1, _ = _accuracy(output, y)
    loss_value, _ = loss.item(), acc1.item()  # the meters' host syncs
    return loss_value


# ---------------------------------------------------------------------------- input pipeline
class PilImages(Dataset):
    """torchvision's CIFAR10.__getitem__: a uint8 HWC array -> PIL image -> transform, image by image."""

    def __init__(self, data: np.ndarray, targets: Sequence[int], transform: Callable) -> None:
        self.data, self.targets, self.transform = data, list(targets), transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def pil_train_transform(size: int) -> Callable:
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor()])


def pil_loader(data: np.ndarray, targets: Sequence[int], batch_size: int, size: int, *, num_workers: int = 2,
               **settings) -> DataLoader:
    """The original's CIFAR training loader: shuffle, `num_workers=2`, pinned memory (when there is a GPU)."""
    settings = {"num_workers": num_workers, "pin_memory": torch.cuda.is_available(), **settings}
    return DataLoader(PilImages(data, targets, pil_train_transform(size)), batch_size=batch_size, shuffle=True,
                      drop_last=True, **settings)
