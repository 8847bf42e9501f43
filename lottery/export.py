"""What a shared ticket carries (`tickets.py export`): the mask's provenance (family, init-weights digest, cost of
finding it), also when it is exported from an IMP checkpoint, and no local path: every path becomes its file name."""
from __future__ import annotations

import dataclasses
import os

from infra import checkpoint as files
from infra import paths
from infra.flags import spec
from lottery import shared_ticket
from lottery.config import IMPConfig, family_of
from lottery.level_files import level_costs
from pruning_utils import Mask, load_ticket, mask_digest, sparsity, weights_digest
from training.weights import split_normalization

RESERVED = ("format", "version", "state_dict", "packed", "bit_order", "shapes")  # the writer sets these
# the settings that name files or folders (their flags take a PATH or a DIR), and the meta entries that do
PATH_KEYS = frozenset({f.name for f in dataclasses.fields(IMPConfig)
                       if spec(f) is not None and spec(f).flags[0].metavar in ("PATH", "DIR")}
                      | {"init", "exported_from", "ticket"})
PROVENANCE = ("family", "init_digest", "cost", "level", "arch", "init", "config")


def shareable_meta(path: str, mask: Mask, meta: dict, *, trusted: bool = False) -> dict:
    """The meta of the ticket exported from `path` (a ticket or a checkpoint whose mask is `mask`, meta `meta`):
    its own provenance, else what the IMP checkpoint tells (see `checkpoint_provenance`), with the mask's digest
    and sparsity and the file it came from, every path reduced to its file name."""
    out = {k: v for k, v in meta.items() if k not in RESERVED}
    if not {"family", "init_digest"} <= set(out):
        out = {**checkpoint_provenance(path, mask, trusted=trusted), **out}
    out.setdefault("family", os.path.basename(path))  # a bare checkpoint of unknown family is its own family
    out.update(exported_from=path, sparsity=sparsity(mask), mask_digest=mask_digest(mask))
    return scrub(out)


def checkpoint_provenance(path: str, mask: Mask, *, trusted: bool = False) -> dict:
    """What an IMP checkpoint (ours or the original's) tells about its mask: the meta of this run's ticket of the
    same level when it holds the same mask; else the family (from its config), the digest of its init weights
    and the cost of the levels before it (from the run's metrics.jsonl beside it, when every such level is there;
    left out when not recorded)."""
    if shared_ticket.is_packed_file(path):  # a packed ticket holds its meta: load_ticket gave all there is
        return {}
    obj = files.load_file(path, trusted=trusted)
    if not isinstance(obj, dict):
        return {}
    level = obj.get("level", obj.get("state_prune"))
    folder = os.path.dirname(os.path.abspath(path))
    if isinstance(level, int):
        sibling = paths.imp_ticket(folder, level)
        if os.path.isfile(sibling) and not os.path.samefile(sibling, path):
            other, meta = load_ticket(sibling)
            if mask_digest(other) == mask_digest(mask):
                return {k: meta[k] for k in PROVENANCE if k in meta}
    out: dict = {}
    if isinstance(obj.get("init"), dict):
        init = split_normalization(files.strip_prefix(obj["init"]))[0]
        if all(k in init for k in mask):
            out["init_digest"] = weights_digest(init, mask)
    config = obj.get("config")
    if isinstance(config, dict):
        out.update(family=family_of(config), config=config, init=config.get("init"))
        cost = _recorded_cost(folder, level) if isinstance(level, int) else None
        if cost is not None:
            out["cost"] = cost
    if isinstance(level, int):
        out.update(level=level)
    if isinstance(obj.get("arch"), str):
        out.update(arch=obj["arch"])
    return out


def _recorded_cost(folder: str, level: int) -> dict | None:
    """The cumulative cost of ticket `level` from the run's metrics rows, None unless every level before it has
    rows there."""
    rows = files.read_jsonl(os.path.join(folder, paths.METRICS))
    seen = {r.get("level") for r in rows if isinstance(r, dict) and isinstance(r.get("cost"), dict)}
    return level_costs(folder, level)[0] if set(range(1, level)) <= seen else None


def scrub(value, key: str | None = None):
    """`value` with every path (an entry of PATH_KEYS, or any absolute or ~ path) reduced to its file name."""
    if isinstance(value, dict):
        return {k: scrub(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v, key) for v in value]
    if isinstance(value, str) and value and (key in PATH_KEYS or os.path.isabs(value) or value.startswith("~")):
        return os.path.basename(os.path.normpath(value))
    return value
