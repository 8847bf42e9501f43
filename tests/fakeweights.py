"""Pre-trained weight files fabricated exactly as each library lays them out on disk (for test_weights/test_tickets).

Every maker takes one torchvision-named state dict and returns the object that library would `torch.save`.
"""
from __future__ import annotations

import torch
from torch import nn

import models
import pruning_utils

ROBUST_MEAN = (0.485, 0.456, 0.406)
ROBUST_STD = (0.229, 0.224, 0.225)


def source(num_classes: int = 10, seed: int = 0, **kw) -> nn.Module:
    """A resnet_tiny whose every tensor (BN stats and counters included) differs from a fresh model's."""
    torch.manual_seed(seed)
    model = models.resnet_tiny(num_classes, **kw)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if key.endswith("num_batches_tracked"):
                t.fill_(1234)
            else:
                t.copy_(torch.rand_like(t) + 0.1)  # positive: survives |w| checks, never equals a fresh init
    return model


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def optimizer_state(model: nn.Module) -> dict:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    opt.step()
    model.zero_grad(set_to_none=True)
    return opt.state_dict()


def prefixed(sd: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in sd.items()}


def robustness(sd: dict, container: str = "model") -> dict:
    """MadryLab robustness: DataParallel(AttackerModel(normalizer, model, attacker(model, normalize)))."""
    mean = torch.tensor(ROBUST_MEAN).view(3, 1, 1)
    std = torch.tensor(ROBUST_STD).view(3, 1, 1)
    inner = {"module.normalizer.new_mean": mean, "module.normalizer.new_std": std}
    inner.update(prefixed(sd, "module.model."))
    inner.update({"module.attacker.normalize.new_mean": mean.clone(), "module.attacker.normalize.new_std": std.clone()})
    inner.update(prefixed({k: v + 1 for k, v in sd.items()}, "module.attacker.model."))  # differs: must be dropped
    return {container: inner, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
            "schedule": {"step_size": 30, "gamma": 0.1, "last_epoch": 90}, "epoch": 90, "amp": None, "prec1": 57.9}


def moco_v2(sd: dict) -> dict:
    """facebookresearch/moco main_moco.py with --mlp: encoder_q/encoder_k with fc = Linear, ReLU, Linear; queue."""
    backbone = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    head = {"fc.0.weight": torch.randn(128, 128), "fc.0.bias": torch.randn(128),
            "fc.2.weight": torch.randn(128, 128), "fc.2.bias": torch.randn(128)}
    state = {**prefixed({**backbone, **head}, "module.encoder_q."),
             **prefixed({k: v * 2 for k, v in {**backbone, **head}.items()}, "module.encoder_k."),
             "module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"epoch": 200, "arch": "resnet50", "state_dict": state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.03, "params": [0]}]}}


def moco_v3(sd: dict) -> dict:
    """facebookresearch/moco-v3 main_moco.py: base/momentum encoders whose fc is an MLP (Linear, BN, ReLU, ...)."""
    backbone = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    head = {"fc.0.weight": torch.randn(64, 128), "fc.1.weight": torch.ones(64), "fc.1.bias": torch.zeros(64),
            "fc.1.running_mean": torch.zeros(64), "fc.1.running_var": torch.ones(64),
            "fc.1.num_batches_tracked": torch.tensor(5), "fc.3.weight": torch.randn(32, 64)}
    state = {**prefixed({**backbone, **head}, "module.base_encoder."),
             **prefixed({**backbone, **head}, "module.momentum_encoder."),
             "module.predictor.0.weight": torch.randn(64, 32), "module.predictor.3.weight": torch.randn(32, 64)}
    return {"epoch": 100, "arch": "resnet50", "state_dict": state, "optimizer": {"state": {}, "param_groups": []},
            "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                       "_growth_tracker": 0}}


def half_mask(model: nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {name: torch.rand(p.shape, generator=g) < 0.5 for name, p in model.named_parameters()
            if name in pruning_utils.prunable_names(model)}


def original_imp(model: nn.Module, mask: dict) -> dict:
    """VITA-Group/Double-Win-LTH main_adv.py: torch-prune names, advertorch normalize buffers, everything around."""
    sd = pruning_utils.masked_state_dict(model, mask)
    state = {"normalize.mean": torch.tensor(ROBUST_MEAN), "normalize.std": torch.tensor(ROBUST_STD), **sd}
    init = {"normalize.mean": torch.tensor(ROBUST_MEAN), "normalize.std": torch.tensor(ROBUST_STD), **state_of(model)}
    return {"epoch": 30, "arch": "resnet18", "state_dict": state, "best_acc1": torch.tensor(61.5),
            "optimizer": optimizer_state(models.resnet_tiny(10)), "state_prune": 2, "init": init}
