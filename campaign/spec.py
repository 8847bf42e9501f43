"""The campaign spec (TOML): parsed, checked (one line per mistake, naming the key or file) and expanded into
runs, each exactly the bash driver command a user would type."""
from __future__ import annotations

import os
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser from PyPI (requirements.txt)
    import tomli as tomllib
from dataclasses import dataclass, field

from datafiles import facts
from infra.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("std", "adv")
IMP_KINDS = ("std", "adv")
TOP_KEYS = {"root", "data", "overrides", "std_overrides", "adv_overrides", "imp_overrides", "init"}
INIT_KEYS = {"name", "weights", "datasets", "modes", "fractions", "seeds", "dense", "tickets", "overrides",
             "std_overrides", "adv_overrides", "imp_overrides"}
TICKET_KEYS = {"name", "dir", "levels", "imp"}
IMP_KEYS = {"kind", "data", "gpus", "overrides", "cpus_per_gpu", "mem_gb_per_gpu", "time", "partition", "seeds",
            "paired"}


@dataclass(frozen=True)
class Resources:
    """What the scheduler gives an IMP stage (per GPU where it scales with them); None: the campaign's option
    (`sweep.py run --time`, `--partition`)."""
    cpus_per_gpu: int = 6         # a rank and its data loader workers
    mem_gb_per_gpu: int = 40      # a rank, its ImageNet loader workers and pinned batches
    time_min: int | None = None
    partition: str | None = None

    def cpus(self, gpus: int) -> int:
        return self.cpus_per_gpu * gpus

    def mem_gb(self, gpus: int) -> int:
        return self.mem_gb_per_gpu * gpus


@dataclass(frozen=True)
class Run:
    """One run: its id (SAVE_DIR relative to ROOT, or imp:<init>/<tickets>), folder and command."""
    id: str
    kind: str                     # "transfer" or "imp"
    save_dir: str
    command: tuple[str, ...]
    needs: str | None = None      # the ticket file a transfer run waits for (made by an IMP stage)
    makes: tuple[str, ...] = ()   # the ticket files an IMP run makes
    gpus: int = 1
    dataset: str = ""
    mode: str = ""
    inputs: tuple[str, ...] = ()  # files and folders the run reads (weights, data, ticket): a node must see them
    resources: Resources | None = None  # an IMP stage's own sizing; None: a transfer run, the campaign's options


@dataclass(frozen=True)
class Campaign:
    path: str
    root: str
    runs: tuple[Run, ...] = field(default_factory=tuple)

    def transfer_runs(self) -> list[Run]:
        return [r for r in self.runs if r.kind == "transfer"]


class SpecError(UserError):
    """A mistake in the campaign spec."""


def parse_time_min(text: str | int, where: str) -> int:
    """SLURM's time formats (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS; an int: minutes) -> whole minutes;
    a bad value is a UserError naming `where` (the flag or the spec key)."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str):
        raise UserError(f"{where} {text!r}: expected minutes, HH:MM:SS or D-HH:MM:SS")
    try:
        days, sep, rest = text.rpartition("-")
        p = [int(x) for x in rest.split(":")]
        if sep and not days.isdigit():
            raise ValueError(text)
        if days:
            h, m, sec = (p + [0, 0])[:3]
            seconds = int(days) * 86400 + h * 3600 + m * 60 + sec
        else:
            seconds = {1: lambda: p[0] * 60, 2: lambda: p[0] * 60 + p[1],
                       3: lambda: p[0] * 3600 + p[1] * 60 + p[2]}[len(p)]()
    except (ValueError, KeyError):
        raise UserError(f"{where} {text!r}: expected minutes, HH:MM:SS or D-HH:MM:SS") from None
    if seconds < 60 or min(p) < 0:
        raise UserError(f"{where} {text!r}: at least one minute")
    return -(-seconds // 60)


def _abs(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def fraction_tag(f: float) -> str:
    return f"{f:g}"


# each transfer recipe's bash driver and the dataset it fixes (None: it takes DATASET as its first positional)
DRIVERS = {"std": ("std.sh", None), "adv_cifar": ("adv_cifar.sh", None), "adv_svhn": ("adv_svhn.sh", "svhn")}


def driver(mode: str, dataset: str) -> tuple[str, list[str], list[str]]:
    """(bash driver of a transfer mode on `dataset`, the positionals before INIT, the flags after TICKET): std,
    or the dataset's adversarial recipe from the dataset table; a driver that fixes another dataset is told
    `--dataset`."""
    script, fixed = DRIVERS["std" if mode == "std" else facts.adv_recipe(dataset)]
    path = os.path.join(REPO, "script", "train_downstream", script)
    if fixed is None:
        return path, [dataset], []
    return path, [], ([] if dataset == fixed else ["--dataset", dataset])


class _Reader:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, msg: str) -> SpecError:
        return SpecError(f"{self.path}: {msg}")

    def keys(self, table: dict, known: set[str], where: str) -> None:
        for k in table:
            if k not in known:
                raise self.fail(f"unknown key {where}{k!r} (known here: {', '.join(sorted(known))})")

    def get(self, table: dict, key: str, kind, where: str, default=None, required=False):
        """table[key] checked to be of `kind` (a type or tuple; a list of them when `default` is a list)."""
        if key not in table:
            if required:
                raise self.fail(f"missing key {where}{key!r}")
            return default
        v = table[key]
        many = isinstance(default, list) or key in ("datasets",)
        items = v if many and isinstance(v, list) else [v] if not many else None
        if not items or not all(isinstance(x, kind) and (kind is bool or not isinstance(x, bool)) for x in items):
            what = getattr(kind, "__name__", "number")
            raise self.fail(f"{where}{key} = {v!r}: expected {'a non-empty list of ' + what if many else what}")
        return v

    def flags(self, table: dict, key: str, where: str) -> list[str]:
        v = table.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, (str, int, float)) for x in v):
            raise self.fail(f"{where}{key} = {v!r}: expected a list of flags, e.g. [\"--epochs\", \"3\"]")
        return [str(x) for x in v]


def _levels(r: _Reader, t: dict, where: str) -> list[int]:
    v = t.get("levels")
    if isinstance(v, str) and "-" in v:  # "1-12"
        try:
            lo, hi = (int(x) for x in v.split("-"))
            return list(range(lo, hi + 1))
        except ValueError:
            pass
    if isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v):
        return sorted(set(v))
    raise r.fail(f"{where}levels = {v!r}: expected a list of levels >= 1, e.g. [1, 2, 3], or \"1-12\"")


def load(path: str) -> Campaign:
    """Read and check a spec file; every mistake is one SpecError line naming the key or file."""
    try:
        with open(path, "rb") as f:
            spec = tomllib.load(f)
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML ({e})") from None
    r = _Reader(path)
    r.keys(spec, TOP_KEYS, "")
    root = _abs(r.get(spec, "root", str, "", required=True))
    data = spec.get("data", "../data")
    if not isinstance(data, (str, dict)):
        raise r.fail(f"data = {data!r}: expected a folder, or a table of folders per dataset")
    inits = spec.get("init")
    if not isinstance(inits, list) or not inits:
        raise r.fail("missing [[init]] tables: name at least one pre-trained model to transfer")
    runs: list[Run] = []
    names: set[str] = set()
    for i, init in enumerate(inits):
        runs += _expand_init(r, spec, init, f"init[{i}].", data, root, names)
    ids = [run.id for run in runs]
    dup = next((x for x in ids if ids.count(x) > 1), None)
    if dup:
        raise r.fail(f"two runs share the SAVE_DIR {dup}: give each [[init]] and [[init.tickets]] its own name")
    return Campaign(path=_abs(path), root=root, runs=tuple(runs))


def _expand_init(r: _Reader, spec: dict, init, where: str, data, root: str, names: set[str]) -> list[Run]:
    """The runs of one [[init]]: its IMP stages, then a transfer run per dataset x fraction x ticket x mode x seed."""
    if not isinstance(init, dict):
        raise r.fail(f"{where[:-1]} must be a table")
    r.keys(init, INIT_KEYS, where)
    name = r.get(init, "name", str, where, required=True)
    if not name or "/" in name or name in names:
        raise r.fail(f"{where}name = {name!r}: give each [[init]] a distinct folder name")
    names.add(name)
    weights = _abs(r.get(init, "weights", str, where, required=True))
    if not os.path.isfile(weights):
        raise r.fail(f"{where}weights: file {weights} not found")
    datasets = _choices(r, r.get(init, "datasets", str, where, required=True), facts.downstream(), f"{where}datasets",
                        "dataset")
    modes = _choices(r, r.get(init, "modes", str, where, default=list(MODES)), MODES, f"{where}modes", "mode")
    fractions = r.get(init, "fractions", (int, float), where, default=[1])
    if not all(0 < f <= 1 for f in fractions):
        raise r.fail(f"{where}fractions = {fractions!r}: each must be in (0, 1]")
    seeds = r.get(init, "seeds", int, where, default=[1])
    imp_flags = [*r.flags(spec, "imp_overrides", ""), *r.flags(init, "imp_overrides", where)]
    runs, tickets = _tickets(r, init, where, name, weights, imp_flags)
    for tag, _, own_seed in tickets:
        if own_seed is not None and own_seed not in seeds:
            raise r.fail(f"{where}seeds = {seeds!r}: the paired tickets {tag} need transfer seed {own_seed} (each IMP "
                         "seed of a paired stage is transferred with the transfer seed of the same number)")
    for d in datasets:
        root_d = data.get(d) if isinstance(data, dict) else data
        if not isinstance(root_d, str):
            raise r.fail(f"data: no folder for dataset {d!r} (data.{d} = \"...\")")
        for frac in fractions:
            for tag, ticket, own_seed in tickets:
                for mode in modes:
                    script, before, after = _driver(r, mode, d, where)
                    extra = [*r.flags(spec, "overrides", ""), *r.flags(spec, f"{mode}_overrides", ""),
                             *r.flags(init, "overrides", where), *r.flags(init, f"{mode}_overrides", where)]
                    for seed in (seeds if own_seed is None else [own_seed]):
                        rid = f"{name}/{d}-{fraction_tag(frac)}/{tag}/{mode}/s{seed}"
                        save = os.path.join(root, rid)
                        cmd = ["bash", script, *before, weights, save, ticket or "", *after, "--data", _abs(root_d),
                               "--data_number", fraction_tag(frac), "--seed", str(seed), *extra]
                        runs.append(Run(rid, "transfer", save, tuple(cmd), needs=ticket, dataset=d, mode=mode,
                                        inputs=(weights, _abs(root_d), *([ticket] if ticket else []))))
    return runs


def _driver(r: _Reader, mode: str, dataset: str, where: str) -> tuple[str, list[str], list[str]]:
    try:
        return driver(mode, dataset)
    except UserError as e:
        raise r.fail(f"{where}modes: {mode} on {dataset}: {e}") from None


def _choices(r: _Reader, values: list[str], known: tuple[str, ...], where: str, what: str) -> list[str]:
    for v in values:
        if v not in known:
            raise r.fail(f"{where}: unknown {what} {v!r} (known: {', '.join(known)})")
    return values


def _tickets(r: _Reader, init: dict, where: str, name: str, weights: str,
             imp_flags: list[str]) -> tuple[list[Run], list[tuple[str, str | None, int | None]]]:
    """The IMP runs of an [[init]]'s [[init.tickets]] (`imp_flags`: the campaign's and the init's
    imp_overrides, before each stage's own) and the (tag, ticket file, its one transfer seed or None: all the
    init's seeds) triples to transfer (dense: no file)."""
    runs: list[Run] = []
    tickets: list[tuple[str, str | None, int | None]] = \
        [("dense", None, None)] if r.get(init, "dense", bool, where, default=True) else []
    for j, t in enumerate(init.get("tickets", [])):
        tw = f"{where}tickets[{j}]."
        if not isinstance(t, dict):
            raise r.fail(f"{tw[:-1]} must be a table")
        r.keys(t, TICKET_KEYS, tw)
        tname = r.get(t, "name", str, tw, required=True)
        folder = _abs(r.get(t, "dir", str, tw, required=True))
        levels = _levels(r, t, tw)
        paired = _paired(r, t, tw)
        for tag, sub, seed in _replicates(r, t, tw, tname, folder):
            files = [os.path.join(sub, f"{k}-ticket.pth.tar") for k in levels]
            if "imp" in t:
                rid = f"imp:{name}/{tname}" + (f"/seed{seed}" if seed is not None else "")
                runs.append(_imp_run(r, t["imp"], f"{tw}imp.", rid, (weights, sub, files), imp_flags, seed))
            else:
                missing = next((f for f in files if not os.path.isfile(f)), None)
                if missing:
                    raise r.fail(f"{tw}levels: ticket {missing} does not exist and no [init.tickets.imp] stage "
                                 "makes it: add one, or drop that level")
            tickets += [(f"{tag}-{os.path.basename(f).split('-')[0]}", f, seed if paired else None) for f in files]
    if not tickets:
        raise r.fail(f"{where}: no tickets and dense = false: nothing to run")
    return runs, tickets


def _paired(r: _Reader, t: dict, where: str) -> bool:
    """`imp.paired = true`: IMP seed k's tickets are transferred with transfer seed k only, so that each is
    compared with the dense run of the same seed (the report pairs them; docs/VERDICT.md)."""
    imp = t.get("imp")
    if not isinstance(imp, dict) or "paired" not in imp:
        return False
    paired = r.get(imp, "paired", bool, f"{where}imp.")
    if paired and "seeds" not in imp:
        raise r.fail(f"{where}imp.paired = true needs imp.seeds = [1, 2, ...] (one IMP stage per seed to pair)")
    return paired


def _replicates(r: _Reader, t: dict, where: str, tname: str, folder: str) -> list[tuple[str, str, int | None]]:
    """(ticket tag, ticket folder, IMP seed) per replicate of ticket finding: one, in `dir` (seed None: the
    stage's own --seed), or with `imp.seeds = [1, 2, ...]` one IMP stage per seed, its tickets in dir/seed<k>."""
    imp = t.get("imp")
    if not isinstance(imp, dict) or "seeds" not in imp:
        return [(tname, folder, None)]
    seeds = r.get(imp, "seeds", int, f"{where}imp.", default=[])
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise r.fail(f"{where}imp.seeds = {seeds!r}: distinct IMP seeds >= 0, e.g. [1, 2, 3]")
    if "--seed" in r.flags(imp, "overrides", f"{where}imp."):
        raise r.fail(f"{where}imp.overrides: --seed and seeds = {seeds!r} both set; keep one")
    return [(f"{tname}-seed{k}", os.path.join(folder, f"seed{k}"), k) for k in seeds]


def _imp_run(r: _Reader, imp, where: str, rid: str, paths: tuple[str, str, list[str]],
             imp_flags: list[str], seed: int | None = None) -> Run:
    """An IMP stage: (weights, ticket folder, ticket files) in `paths`; its flags are the drivers' defaults, then
    `imp_flags`, then the stage's own overrides (argparse keeps the last value), then `--seed` of a replicate."""
    weights, folder, files = paths
    if not isinstance(imp, dict):
        raise r.fail(f"{where[:-1]} must be a table")
    r.keys(imp, IMP_KEYS, where)
    kind = r.get(imp, "kind", str, where, required=True)
    if kind not in IMP_KINDS:
        raise r.fail(f"{where}kind = {kind!r}: std (IMP) or adv (A-IMP)")
    data = _abs(r.get(imp, "data", str, where, required=True))
    gpus = r.get(imp, "gpus", int, where, default=1)
    if gpus < 1:
        raise r.fail(f"{where}gpus = {gpus}: at least 1")
    script = os.path.join(REPO, "script", "imp_pretrain", f"imp_{kind}.sh")
    cmd = ("bash", script, weights, folder, data, *imp_flags, *r.flags(imp, "overrides", where),
           *(("--seed", str(seed)) if seed is not None else ()))
    return Run(rid, "imp", folder, cmd, makes=tuple(files), gpus=gpus, mode=kind, inputs=(weights, data),
               resources=_resources(r, imp, where))


def _resources(r: _Reader, imp: dict, where: str) -> Resources:
    """An IMP stage's sizing: per-GPU CPUs and memory (defaults: `Resources`'), its own time limit and
    partition (default: the campaign's)."""
    out = {}
    for key in ("cpus_per_gpu", "mem_gb_per_gpu"):
        v = r.get(imp, key, int, where, default=getattr(Resources, key))
        if v < 1:
            raise r.fail(f"{where}{key} = {v}: at least 1")
        out[key] = v
    if "time" in imp:
        try:
            out["time_min"] = parse_time_min(imp["time"], f"{where}time =")
        except UserError as e:
            raise r.fail(str(e)) from None
    partition = r.get(imp, "partition", str, where)
    if partition is not None and not partition.strip():
        raise r.fail(f"{where}partition = {partition!r}: a partition name, or leave the key out")
    return Resources(**out, partition=partition)
