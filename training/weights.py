"""Pre-trained weights from anywhere (`--init`): recognise a checkpoint's format, convert it to torchvision
key names, and load it strictly, with a one-line report of what was found, kept and dropped.

    w = read_weights("resnet50_l2_eps3.ckpt")          # robustness, MoCo, DDP, torchvision, IMP checkpoints...
    print(load_into(model, w, head="replace"))         # every backbone key must fit, or CheckpointError
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from infra.checkpoint import load_file
from infra.distributed import unwrap
from infra.errors import CheckpointError, MaskError
from pruning_utils import TICKET_FORMAT, Mask, sparsity, unmask_state_dict

FORMATS = {  # format id -> what the report calls it
    "torchvision": "torchvision state dict",
    "ddp": "DDP state dict ('module.' prefix)",
    "robustness": "robustness-library checkpoint (Madry lab / Salman et al.)",
    "moco_v2": "MoCo v1/v2 checkpoint (encoder_q)",
    "moco_v3": "MoCo v3 checkpoint (base_encoder)",
    "original_imp": "original IMP checkpoint (weight_orig * weight_mask)",
    "doublewin_imp": "doublewin IMP checkpoint (weight_orig * weight_mask)",
    "masked": "torch-prune state dict (weight_orig * weight_mask)",
    "checkpoint": "checkpoint dict",
    "module": "pickled nn.Module",
}
NORMALIZE_KEYS = ("normalize.mean", "normalize.std")  # the original main_adv.py's advertorch normalisation buffers
_CONTAINER_KEYS = ("state_dict", "model")  # where checkpoints keep their weights (robustness uses "model")
_COUNTER = ".num_batches_tracked"


@dataclass
class LoadedWeights:
    state_dict: dict[str, torch.Tensor]        # torchvision key names, plain (masked) weights
    format: str                                 # a key of FORMATS
    dropped: list[str] = field(default_factory=list)   # keys of the file that are not in `state_dict`
    mean: tuple[float, ...] | None = None       # normalisation stats the file carries, if any
    std: tuple[float, ...] | None = None
    mask: Mask | None = None                    # present for files with weight_orig/weight_mask
    path: str = ""                              # the file read, for messages

    def describe(self) -> str:
        """'<file>: <format>, kept K tensors, dropped D (groups)[, mask ...][, mean/std ...]'."""
        text = f"{self.path}: {FORMATS.get(self.format, self.format)}, kept {len(self.state_dict)} tensors, " \
               f"dropped {len(self.dropped)}"
        if self.dropped:
            text += f" ({_group(self.dropped)})"
        if self.mask is not None:
            text += f", mask at sparsity {100 * sparsity(self.mask):.1f}% applied"
        if self.mean is not None:
            text += f", stats in file mean={_fmt(self.mean)} std={_fmt(self.std)}"
        return text


# ---------------------------------------------------------------------------- reading
def read_weights(path: str, *, trusted: bool = False) -> LoadedWeights:
    """Load `path` (weights_only unless `trusted`), detect its format and convert it to torchvision naming."""
    obj = load_file(path, trusted=trusted)
    container, state = _find_state_dict(obj, path)
    ddp = bool(state) and all(k.startswith("module.") for k in state)
    keys = {k: k[len("module."):] if ddp else k for k in state}  # file key -> stripped key
    stripped = set(keys.values())

    if any(k.startswith("model.") for k in stripped) and \
            any(k.startswith(("attacker.", "normalizer.")) for k in stripped):
        fmt, kept = "robustness", _take(keys, "model.", ())
        mean, std = _stats(state, keys, "normalizer.new_mean", "normalizer.new_std")
        if mean is None:
            mean, std = _stats(state, keys, "attacker.normalize.new_mean", "attacker.normalize.new_std")
    elif any(k.startswith("encoder_q.") for k in stripped):
        fmt, kept = "moco_v2", _take(keys, "encoder_q.", ("fc.",))  # fc: the projection head
        mean = std = None
    elif any(k.startswith("base_encoder.") for k in stripped):
        fmt, kept = "moco_v3", _take(keys, "base_encoder.", ("fc.", "head."))
        mean = std = None
    else:
        kept = _take(keys, "", ("normalize.",))
        mean, std = _stats(state, keys, *NORMALIZE_KEYS)
        fmt = "module" if isinstance(obj, nn.Module) else _plain_format(container, ddp, kept)

    sd, mask = {new: state[old] for old, new in kept.items()}, None
    if any(k.endswith(".weight_orig") for k in sd):
        try:
            sd, mask = unmask_state_dict(sd)
        except MaskError as e:
            raise CheckpointError(f"{path}: {e}") from None
    if "conv1.weight" not in sd:
        first = ", ".join(list(state)[:6])
        raise CheckpointError(
            f"{path}: unrecognised weights (no ResNet 'conv1.weight' after conversion; first keys: {first}); "
            "expected torchvision, robustness-library, MoCo, DDP or IMP checkpoints of a ResNet")
    broken = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise CheckpointError(f"{path}: {len(broken)} tensors hold NaN or inf values (first: {broken[0]}): the "
                              "file is broken; re-create or re-download it")
    dropped = [k for k in state if k not in kept]
    return LoadedWeights(sd, fmt, dropped, mean, std, mask, path)


def split_normalization(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], tuple | None, tuple | None]:
    """(`state` without the original's `normalize.mean/std` buffers, their mean, their std); None, None without."""
    rest = {k: v for k, v in state.items() if k not in NORMALIZE_KEYS}
    if not all(k in state for k in NORMALIZE_KEYS):
        return rest, None, None
    mean, std = (tuple(float(v) for v in state[k].flatten().tolist()) for k in NORMALIZE_KEYS)
    return rest, mean, std


def _find_state_dict(obj: Any, path: str) -> tuple[dict | None, dict[str, torch.Tensor]]:
    """(the enclosing checkpoint dict or None, the state dict of tensors inside it)."""
    if isinstance(obj, nn.Module):  # only reachable with trusted=True
        return None, obj.state_dict()
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict or a checkpoint dict")
    if obj.get("format") == TICKET_FORMAT:
        raise CheckpointError(f"{path} is a mask-only ticket without weights: pass it as the ticket, and the "
                              "pre-trained weights as the init")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return None, obj
    for key in _CONTAINER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, nn.Module):
            inner = inner.state_dict()
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return obj, inner
    first = ", ".join(f"{k} ({type(v).__name__})" for k, v in list(obj.items())[:6])
    raise CheckpointError(f"{path}: unrecognised checkpoint structure (first keys: {first}); expected a state "
                          f"dict of tensors, or a dict holding one under {' or '.join(map(repr, _CONTAINER_KEYS))}")


def _take(keys: dict[str, str], prefix: str, drop: tuple[str, ...]) -> dict[str, str]:
    """{file key: torchvision key} for stripped keys under `prefix`, minus sub-prefixes in `drop`."""
    out = {}
    for old, new in keys.items():
        if new.startswith(prefix):
            rest = new[len(prefix):]
            if not rest.startswith(drop):
                out[old] = rest
    return out


def _stats(state: dict, keys: dict[str, str], mean_key: str, std_key: str):
    by_new = {new: old for old, new in keys.items()}
    if mean_key in by_new and std_key in by_new:
        return (tuple(float(v) for v in state[by_new[mean_key]].flatten().tolist()),
                tuple(float(v) for v in state[by_new[std_key]].flatten().tolist()))
    return None, None


def _plain_format(container: dict | None, ddp: bool, kept: dict[str, str]) -> str:
    pruned = any(k.endswith(".weight_orig") for k in kept.values())
    if container is None:
        return "masked" if pruned else ("ddp" if ddp else "torchvision")
    if pruned:
        if "state_prune" in container:
            return "original_imp"
        return "doublewin_imp" if "level" in container else "masked"
    return "checkpoint"


# ---------------------------------------------------------------------------- loading into a model
def load_into(model: nn.Module, weights: LoadedWeights, *, head: str = "strict") -> str:
    """Strictly load `weights` into `model` (its own key set is the reference) and return the one-line report.

    head="replace": `fc.*` is skipped on both sides (the caller has put a fresh head on the model);
    head="strict": the file's head must fit the model's. BatchNorm `num_batches_tracked` counters absent from
    old files (torchvision's 2017 weights) keep the model's values; every other mismatch is an error.
    """
    if head not in ("strict", "replace"):
        raise ValueError(f"head must be 'strict' or 'replace', got {head!r}")
    net = unwrap(model)
    target = net.state_dict()
    source = dict(weights.state_dict)
    where = f"{weights.path} ({FORMATS.get(weights.format, weights.format)})"
    arch = f"the model ({arch_name(target)})"
    backbone = {k for k in target if not k.startswith("fc.")}
    if head == "replace":
        source = {k: v for k, v in source.items() if not k.startswith("fc.")}
    _check_keys(backbone, {k for k in source if not k.startswith("fc.")}, where, arch, source)  # arch first
    target_keys = backbone if head == "replace" else set(target)
    if head == "strict":
        _check_head(source, target, where)
        _check_keys(target_keys, set(source), where, arch, source)
    wrong = [f"{k} {list(source[k].shape)} vs {list(target[k].shape)}"
             for k in sorted(source) if source[k].shape != target[k].shape]
    if wrong:
        k_init, k_model = source["conv1.weight"].shape[-1], target["conv1.weight"].shape[-1]
        stem = f" (a {k_init}x{k_init} stem vs the model's {k_model}x{k_model})" if k_init != k_model else ""
        raise CheckpointError(f"{where} was made for a different architecture{stem} than {arch}: "
                              f"{len(wrong)} shapes differ, init vs model: {'; '.join(wrong[:4])}")
    full = {k: source.get(k, target[k]) for k in target}  # fc (replace) and absent counters: the model's own
    net.load_state_dict(full, strict=True)
    filled = sum(1 for k in target_keys if k not in source)
    report = weights.describe()
    if head == "replace":
        report += ", head replaced"
    elif "fc.weight" in target:
        report += f", head loaded ({target['fc.weight'].shape[0]} classes)"
    if filled:
        report += f", {filled} BatchNorm counters absent (kept at the model's)"
    return report


def _check_keys(target_keys: set[str], source_keys: set[str], where: str, arch: str, source: dict) -> None:
    missing = sorted(k for k in target_keys - source_keys if not k.endswith(_COUNTER))
    unexpected = sorted(source_keys - target_keys)
    if missing or unexpected:
        parts = [f"{len(keys)} {label} ({', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''})"
                 for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise CheckpointError(f"{where} does not fit {arch}: the init looks like {arch_name(source)}; "
                              f"{'; '.join(parts)}")


def _check_head(source: dict, target: dict, where: str) -> None:
    if "fc.weight" not in target:
        return
    if "fc.weight" not in source:
        raise CheckpointError(f"{where} carries no classifier head (fc.*, e.g. a self-supervised backbone): "
                              "it can only initialise a model whose head transfer replaces")
    n, m = source["fc.weight"].shape[0], target["fc.weight"].shape[0]
    if n != m or source["fc.weight"].shape != target["fc.weight"].shape:
        raise CheckpointError(f"{where}: the init has {n} classes and the data {m}; its head fits only where "
                              "transfer replaces the head")


# ---------------------------------------------------------------------------- naming
_KNOWN = {("BasicBlock", (2, 2, 2, 2), 64): "resnet18", ("BasicBlock", (3, 4, 6, 3), 64): "resnet34",
          ("Bottleneck", (3, 4, 6, 3), 64): "resnet50", ("Bottleneck", (3, 4, 23, 3), 64): "resnet101",
          ("Bottleneck", (3, 8, 36, 3), 64): "resnet152", ("BasicBlock", (1, 1, 1, 1), 16): "resnet_tiny"}


def arch_name(state_dict: dict) -> str:
    """A ResNet's name guessed from its state dict keys (block type, stage depths, width, stem)."""
    conv1 = state_dict.get("conv1.weight")
    if conv1 is None:
        return "not a ResNet"
    depths = tuple(len({m.group(1) for k in state_dict if (m := re.match(rf"layer{i}\.(\d+)\.", k))})
                   for i in range(1, 5))
    block = "Bottleneck" if any(k.startswith("layer1.0.conv3.") for k in state_dict) else "BasicBlock"
    width = conv1.shape[0]
    name = _KNOWN.get((block, depths, width), f"ResNet({block}, {list(depths)}, width {width})")
    return f"{name}, {conv1.shape[-1]}x{conv1.shape[-2]} stem"


def _group(keys: list[str]) -> str:
    """'module.attacker.* 322, module.queue 1': dropped keys counted by their leading component(s)."""
    counts: dict[str, int] = {}
    for key in keys:
        lead = "module." if key.startswith("module.") else ""
        parts = key[len(lead):].split(".")
        depth = 2 if parts[0] in ("encoder_q", "base_encoder") and len(parts) > 2 else 1
        head = lead + ".".join(parts[:depth])
        label = head if head == key else head + ".*"
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _fmt(values: tuple[float, ...] | None) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")" if values else "None"
