"""Every file name a run writes, atomic writes, and torch-file loading with clear errors."""
from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from typing import Any, Iterable

import torch

from errors import CheckpointError, ConfigError

# ---------------------------------------------------------------------------- file names
CONFIG = "config.json"
METRICS = "metrics.jsonl"
LOG = "log.txt"
EVALUATION = "evaluate.json"  # IMP -e/--evaluate: the loaded model's SA (and RA)
# downstream transfer
CHECKPOINT = "checkpoint.pth.tar"
SA_BEST = "model_SA_best.pth.tar"
RA_BEST = "model_RA_best.pth.tar"
RESULTS = "results.json"
INDICES = "train_indices.json"
CURVES = "curves.png"


def imp_checkpoint(save_dir: str, level: int) -> str:
    return os.path.join(save_dir, f"{level}-checkpoint.pth.tar")


def imp_best(save_dir: str, level: int) -> str:
    return os.path.join(save_dir, f"{level}-model_best.pth.tar")


def imp_ticket(save_dir: str, level: int) -> str:
    return os.path.join(save_dir, f"{level}-ticket.pth.tar")


def imp_sparsity(save_dir: str, level: int) -> str:
    return os.path.join(save_dir, f"{level}-sparsity.json")


# ---------------------------------------------------------------------------- atomic writes
def _atomic(path: str, write, mode: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_save(obj: Any, path: str, *, legacy_format: bool = False) -> None:
    """torch.save to a temp file in the same folder, fsync, rename: a crash never leaves half a file.

    `legacy_format` writes torch's pre-1.6 serialisation, which the original code's PyTorch 1.5 can read.
    """
    _atomic(path, lambda f: torch.save(obj, f, _use_new_zipfile_serialization=not legacy_format), "wb")


def atomic_write_bytes(path: str, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data), "wb")


def atomic_write_text(path: str, text: str) -> None:
    _atomic(path, lambda f: f.write(text), "w")


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def append_jsonl(path: str, row: dict) -> None:
    """Append one JSON line and fsync it (a torn last line is skipped by `read_jsonl`)."""
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True, default=_json_default) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str) -> list[dict]:
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # torn final line from a crash
    return rows


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


# ---------------------------------------------------------------------------- loading
def load_file(path: str, *, trusted: bool = False, map_location: Any = "cpu") -> Any:
    """torch.load with weights_only=True unless `trusted`; every failure is one CheckpointError line."""
    if not path or not os.path.isfile(path):
        raise CheckpointError(f"{path!r} not found: check the path (a file written by torch.save is expected)")
    try:
        return torch.load(path, map_location=map_location, weights_only=not trusted)
    except pickle.UnpicklingError as e:
        if not trusted and "weights_only" in str(e):
            raise CheckpointError(
                f"{path} holds Python objects beyond tensors and plain values, so it was not unpickled; "
                "if you trust this file, pass --trust-pickle to load it fully") from None
        raise CheckpointError(f"{path} is corrupt or not a torch file ({_first_line(e)}); re-create or re-download it") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({_first_line(e)}); re-create or re-download it") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def strip_prefix(state_dict: dict, prefix: str = "module.") -> dict:
    """Drop a DataParallel/DDP `module.` prefix when every key carries it."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


# ---------------------------------------------------------------------------- run config
def check_config(save_dir: str, config: dict, *, restart: bool, volatile: Iterable[str] = ()) -> None:
    """Refuse to mix configurations in one SAVE_DIR; `restart` (the --restart flag) overwrites config.json.

    Keys in `volatile` (e.g. print frequency, worker count) may differ between runs of the same experiment.
    """
    path = os.path.join(save_dir, CONFIG)
    config = json.loads(json.dumps(config, default=_json_default))
    if os.path.exists(path) and not restart:
        with open(path) as f:
            try:
                old = json.load(f)
            except json.JSONDecodeError:
                old = None
        if old is not None:
            skip = set(volatile)
            keys = sorted(k for k in set(old) | set(config) if k not in skip and old.get(k) != config.get(k))
            if keys:
                shown = ", ".join(f"{k} ({old.get(k)!r} -> {config.get(k)!r})" for k in keys[:6])
                raise ConfigError(
                    f"{save_dir} holds a run with other settings: {shown}; use another --save_dir, "
                    "or pass --restart to start over there")
    atomic_write_json(path, config)
