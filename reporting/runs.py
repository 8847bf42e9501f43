"""Reading downstream runs: finds run folders under a root and turns each results.json into a Run or a Problem.

Only JSON is read (nothing is unpickled); a bad file never raises, it becomes a listed Problem.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

from infra import paths
from infra.errors import UserError
from reporting.overlap import OVERLAP, SPARSITY_SLACK, Overlap, read_overlap  # noqa: F401 (re-exported)

REGIMES = ("std", "adv")                                          # standard / adversarial transfer
METRICS = {"sa": "test_sa", "ra": "test_ra", "aa": "test_aa_ra"}  # our name -> key inside best_sa / best_ra
IMAGES = {"sa": "test_images", "ra": "test_images", "aa": "aa_images"}  # ... its number of test images
CORRECT = {"sa": "test_sa_correct", "ra": "test_ra_correct"}  # ... its per-image correctness (verdict.pack)
VERDICTS = ("stat", "point")  # --verdict: the non-inferiority test, or the older point comparison
LABELS = {"sa": "SA", "ra": "RA", "aa": "AA-RA"}
# --checkpoint: which checkpoint's test numbers a cell takes. The original printed all four numbers (SA and RA of
# the best-SA and of the best-RA checkpoint); "each" pairs SA of the best-SA one with RA of the best-RA one.
CHECKPOINTS = {  # name -> (short, long) description
    "sa": ("SA, RA of best-SA ckpt", "SA and RA of the best-val-SA checkpoint"),
    "ra": ("SA, RA of best-RA ckpt", "SA and RA of the best-val-RA checkpoint"),
    "each": ("SA of best-SA, RA of best-RA ckpt",
             "SA of the best-val-SA checkpoint, RA of the best-val-RA checkpoint"),
    "last": ("SA, RA after the last epoch", "SA and RA of the weights after the last epoch (no choice on the "
             "validation set, whose ties and noise move a small run's best epoch)")}
WATCH = ("init", "arch", "subset", "epochs", "test_attack.eps_255", "test_attack.steps",  # must agree within a group
         "attack_loss")


@dataclass(frozen=True)
class Options:
    checkpoint: str = "sa"   # a key of CHECKPOINTS: test numbers of the best-val-SA / best-val-RA checkpoint, or each
    ra: str = "pgd"          # RA that decides matching: PGD ("pgd", test_ra) or AutoAttack ("aa", test_aa_ra)
    tolerance: float = 0.5   # accuracy points a ticket may lose when the dense cell has a single seed
    group_by: tuple[str, ...] = ()  # extra results.json keys (dotted for nested) that split groups
    verdict: str = "stat"    # a VERDICTS name
    margin: float = 1.0      # accuracy points a ticket may lose and still match (the non-inferiority margin)
    confidence: float = 0.95  # of each one-sided bound

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise UserError(f"--verdict {self.verdict}: one of {', '.join(VERDICTS)}")
        for flag, v in (("--tolerance", self.tolerance), ("--margin", self.margin)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise UserError(f"{flag} {v}: must be a number >= 0 (accuracy points)")
        if not (isinstance(self.confidence, float) and 0.5 < self.confidence < 1):
            raise UserError(f"--confidence {self.confidence}: must be between 0.5 and 1 (e.g. 0.95)")


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str


@dataclass(frozen=True)
class Run:
    path: str
    group: tuple           # (init label, dataset, data_number, *group_by values)
    mode: str
    sparsity: float
    family: str
    seed: object
    values: dict           # metric -> accuracy in percent, or None
    settings: dict         # WATCH key -> JSON text of its value
    ticket_hours: float | None = None  # device-hours that found its ticket (the ticket's cumulative cost)
    run_hours: float | None = None     # device-hours of this transfer run (its results.json cost)
    ticket_flop: float | None = None   # ... and in FLOPs (None: not recorded)
    run_flop: float | None = None
    imp_seed: object = None            # the IMP seed that found its ticket (None: dense, or not recorded)
    images: dict | None = None         # metric -> test images behind its value (None: not recorded)
    correct: dict | None = None        # metric -> per-image correctness, base64 packbits text (verdict.unpack)


def match_columns(opts: Options) -> list[tuple[str, str]]:
    ra = "ra" if opts.ra == "pgd" else "aa"
    return [(m, k) for m in REGIMES for k in ("sa", ra)]


def pairing(opts: Options, *, short: bool = False) -> str:
    """Which checkpoint each number comes from, in words (stated in every table's header)."""
    text = CHECKPOINTS[opts.checkpoint][0 if short else 1]
    return text if short else f"{text} (--checkpoint {opts.checkpoint})"


def best_keys(opts: Options) -> dict[str, str]:
    """metric -> the results.json block it is read from: best_sa, best_ra or last."""
    if opts.checkpoint == "each":
        return {"sa": "best_sa", "ra": "best_ra", "aa": "best_ra"}
    if opts.checkpoint == "last":
        return {m: "last" for m in METRICS}
    return {m: f"best_{opts.checkpoint}" for m in METRICS}


def column_name(col: tuple[str, str]) -> str:
    return f"{col[0]}-{LABELS[col[1]]}"


# ---------------------------------------------------------------------------- reading runs
def _dotted(data: dict, key: str):
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _number(v, lo=-math.inf, hi=math.inf) -> float | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
    return float(v) if ok else None


def _text(v) -> str:
    return "?" if v is None else v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def init_label(data: dict) -> str:
    """The init file's name without extension (.pth.tar counts as one)."""
    name = os.path.basename(str(data.get("init") or "unknown-init").rstrip("/"))
    return name[: -len(".pth.tar")] if name.endswith(".pth.tar") else os.path.splitext(name)[0] or name


def read_sparsity(data: dict) -> tuple[float | None, str | None]:
    """(fraction pruned rounded to 4 decimals, None) or (None, why not); a run without a ticket is dense."""
    s = _number(data.get("sparsity"))
    if s is not None:
        return (round(s, 4), None) if 0 <= s < 1 else (None, f"sparsity {s:g} is outside 0..1 (fraction pruned)")
    if data.get("ticket") is None:
        return 0.0, None
    return None, "no sparsity for its ticket"


def read_run(folder: str, root: str, opts: Options) -> tuple[Run | None, list[Problem]]:
    """One run folder -> (Run or None, problems). Never raises on bad content: bad runs become problems."""
    rel = os.path.relpath(folder, root)
    path = os.path.join(folder, paths.RESULTS)
    if not os.path.exists(path):
        busy = os.path.exists(os.path.join(folder, paths.CHECKPOINT))
        why = "unfinished (has checkpoint.pth.tar) or crashed" if busy else "never trained or crashed early"
        return None, [Problem(rel, f"no results.json next to config.json: {why}")]
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, [Problem(rel, f"results.json unreadable ({str(e).splitlines()[0][:120]})")]
    if not isinstance(data, dict):
        return None, [Problem(rel, "results.json is not a JSON object")]
    if data.get("complete") is False:
        return None, [Problem(rel, "results.json says complete: false (the run stopped before its final test)")]
    mode = data.get("mode")
    sparsity, why = read_sparsity(data)
    blocks = best_keys(opts)
    data_number = _number(data.get("data_number"), 0, 1)
    bad = [k for k, ok in (("dataset", isinstance(data.get("dataset"), str)), ("mode", mode in REGIMES),
                           ("data_number", bool(data_number)),
                           *((b, isinstance(data.get(b), dict)) for b in sorted(set(blocks.values())))) if not ok]
    reasons = ([f"missing or bad keys: {', '.join(bad)}"] if bad else []) + ([why] if why else [])
    if reasons:
        return None, [Problem(rel, "; ".join(reasons))]
    values = {m: _number(data[blocks[m]].get(k), 0, 100) for m, k in METRICS.items()}
    needed = [f"{blocks[m]}.{METRICS[m]}" for m in ("sa", "ra" if opts.ra == "pgd" else "aa") if values[m] is None]
    if len(needed) == 2:
        return None, [Problem(rel, f"no {needed[0]} nor {needed[1]}")]
    problems = [Problem(rel, f"partial: {needed[0]} missing or not a percentage "
                             "(its other numbers are used)")] if needed else []
    extra = tuple(_text(_dotted(data, k)) for k in opts.group_by)
    meta = data.get("ticket_meta") if isinstance(data.get("ticket_meta"), dict) else {}
    family = "dense" if sparsity == 0 else ticket_family(meta)
    settings = {k: json.dumps(_dotted(data, k), sort_keys=True) for k in WATCH}
    seed = data.get("seed") if isinstance(data.get("seed"), (int, str)) else None  # None: cannot spot duplicates
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    imp_seed = config.get("seed") if sparsity and isinstance(config.get("seed"), (int, str)) else None
    images = {m: _count(data[blocks[m]].get(IMAGES[m])) for m in METRICS}
    correct = {m: data[blocks[m]].get(CORRECT[m]) if isinstance(data[blocks[m]].get(CORRECT[m]), str) else None
               for m in CORRECT}
    run = Run(rel, (init_label(data), data["dataset"], data_number, *extra), mode, sparsity, family, seed, values,
              settings, hours(meta.get("cost")), hours(data.get("cost")), flop(meta.get("cost")),
              flop(data.get("cost")), imp_seed, images, correct)
    return run, problems


def ticket_family(meta: dict) -> str:
    """The family of a ticket from its meta: `family`, or `source` as tickets written before that name
    call it; "ticket" when neither is there."""
    return str(meta.get("family") or meta.get("source") or "ticket")


def _count(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def hours(cost) -> float | None:
    """Device-hours of a cost ledger (training.ledger's), None where the file has none or only part of one."""
    return _number(cost.get("device_hours"), 0) if isinstance(cost, dict) and "not_recorded_levels" not in cost \
        else None


def flop(cost) -> float | None:
    """FLOPs of a cost ledger, None where the file has none or only part of one."""
    return _number(cost.get("flop"), 0) if isinstance(cost, dict) and "not_recorded_levels" not in cost else None


def scan(root: str, opts: Options) -> tuple[list[Run], list[Problem]]:
    """Every run folder under root (one holding results.json, or config.json without IMP files), sorted by path."""
    if not os.path.isdir(root):
        raise UserError(f"ROOT {root} is not a folder: pass the folder that holds the downstream runs")
    runs, problems, seen, folders = [], [], {}, 0
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        if paths.RESULTS not in files and (paths.CONFIG not in files
                                                or any(paths.imp_file_level(f) is not None for f in files)):
            continue
        folders += 1
        run, probs = read_run(folder, root, opts)
        problems += probs
        if run is None:
            continue
        twin = (run.group, run.mode, run.sparsity, run.family, run.imp_seed, run.seed, tuple(run.settings.items()))
        if run.seed is not None and twin in seen:
            imp = "" if run.imp_seed is None else f"IMP seed {run.imp_seed}, "
            problems.append(Problem(run.path, f"same settings, {imp}transfer seed {run.seed} as {seen[twin]}; "
                                              "counted once"))
            continue
        seen[twin] = run.path
        runs.append(run)
    if folders == 0:
        raise UserError(f"no runs under {root}: expected folders holding results.json; pass the root of the "
                        "downstream SAVE_DIRs")
    for i, key in enumerate(opts.group_by):
        if runs and all(r.group[3 + i] == "?" for r in runs):
            raise UserError(f"--group-by {key}: no results.json under {root} has this key; check its spelling")
    return runs, problems
