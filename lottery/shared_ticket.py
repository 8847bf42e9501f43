"""The packed ticket format (what `tickets.py export` writes for sharing): a safetensors file of bit-packed masks,
its metadata in the header; pickle-free, readable with numpy and safetensors alone (docs/TICKETS.md).
Also the bit-packing itself, shared with the early-bird window that checkpoints carry."""
from __future__ import annotations

import json
import math

import numpy as np
import torch

from infra.checkpoint import atomic_write_bytes
from infra.errors import CheckpointError

PACKED_FORMAT = "doublewin-packed-ticket"
PACKED_VERSION = 2  # version 1 was a torch file with "packed": true (still read); unpacked tickets have their own
BIT_ORDER = ("each mask flattened in row-major (C) order over the weight's shape (out, in, kh, kw), then packed 8 "
             "entries a byte, the first entry in the most significant bit (numpy.packbits, bitorder='big'); 1 = "
             "kept; the last byte is padded with 0 bits")
HEADER = ("format", "version", "bit_order", "shapes")  # the format's own entries; every other one is ticket meta
_MAGIC_MAX = 100 * 2 ** 20  # a safetensors header longer than this is not one


def pack_masks(masks: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Bool masks as {name: {"shape", "bits"}}, in BIT_ORDER (weights_only-safe, for checkpoints)."""
    return {k: {"shape": list(v.shape), "bits": torch.from_numpy(np.packbits(v.cpu().numpy().ravel()))}
            for k, v in masks.items()}


def unpack_masks(packed: dict, path: str) -> dict[str, torch.Tensor]:
    """The inverse of `pack_masks`; a CheckpointError naming `path` for a damaged one."""
    out = {}
    for k, e in packed.items():
        try:
            out[k] = _unpack(k, e["bits"].numpy(), e["shape"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(f"{path}: a packed ticket whose masks cannot be unpacked ({err}): export it "
                                  "again") from None
    return out


def _unpack(name: str, bits: np.ndarray, shape) -> torch.Tensor:
    n = math.prod(shape)
    if bits.dtype != np.uint8 or bits.ndim != 1 or bits.size != -(-n // 8):  # unpackbits would pad a short one
        raise ValueError(f"{name}: {bits.size} bytes of {bits.dtype} for {n} mask bits")
    return torch.from_numpy(np.unpackbits(bits, count=n).astype(bool)).reshape(list(shape))


def is_packed_file(path: str) -> bool:
    """Whether `path` starts like a safetensors file (8-byte little-endian header size, then a JSON object)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= _MAGIC_MAX


def write(path: str, masks: dict[str, torch.Tensor], meta: dict) -> None:
    """Write {"<module>.weight_mask": bool mask} bit-packed, with `meta` (plain JSON values) in the header,
    atomically. Every header value is JSON text."""
    from safetensors.numpy import save

    clash = set(HEADER) & set(meta)
    if clash:
        raise ValueError(f"ticket meta may not set {sorted(clash)}")
    packed = pack_masks(masks)
    header = {"format": PACKED_FORMAT, "version": PACKED_VERSION, "bit_order": BIT_ORDER,
              "shapes": {k: e["shape"] for k, e in packed.items()}, **meta}
    text = {k: json.dumps(v, sort_keys=True) for k, v in header.items()}
    atomic_write_bytes(path, save({k: e["bits"].numpy() for k, e in packed.items()}, metadata=text))


def read(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """({"<module>.weight_mask": bool mask}, meta with format and version) of a file `write` made; a one-line
    CheckpointError naming `path` when it is damaged or of another version."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            header = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            if header.get("format") != PACKED_FORMAT:
                raise CheckpointError(f"{path} is a safetensors file but not a packed ticket (format "
                                      f"{header.get('format')!r}): pass a file `tickets.py export` wrote")
            if header.get("version") != PACKED_VERSION:
                raise CheckpointError(f"{path} is a packed ticket of version {header.get('version')!r}; this code "
                                      f"reads version {PACKED_VERSION}: export it again with this code")
            shapes = header["shapes"]
            masks = {k: _unpack(k, f.get_tensor(k), shapes[k]) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{path}: a damaged packed ticket ({reason}): copy or export it again") from None
    meta = {k: v for k, v in header.items() if k not in ("bit_order", "shapes")}
    return masks, meta
