"""The statistical double-win call of one column: a one-sided non-inferiority test of a ticket against the dense
model (margin in accuracy points, confidence), from the seed-to-seed variance and the test set's size; runs that
store per-image correctness on the same test images are compared image by image (paired). docs/VERDICT.md."""
from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

WIN, LOSS, OPEN = "double-win", "not double-win", "inconclusive"
MAX_SEEDS = 1000  # beyond this the advice is "seeds alone will not settle it"


@dataclass(frozen=True)
class Sample:
    """One run's number in one column."""
    value: float              # accuracy in percent
    imp_seed: object = None   # the ticket's IMP seed (None: dense, or not recorded)
    seed: object = None       # the transfer seed
    images: int | None = None  # test images behind `value`
    bits: str | None = None    # per-image correctness: base64 of numpy.packbits (big-endian bit order), or None


@dataclass(frozen=True)
class Test:
    call: str                 # WIN, LOSS or OPEN
    diff: float               # ticket - dense, accuracy points
    lower: float              # one-sided lower bound of diff at the confidence
    upper: float              # one-sided upper bound
    se: float                 # standard error of diff (points)
    df: float                 # degrees of freedom of the t quantile
    paired: bool              # per-image correctness compared on the same images
    why: str                  # the bound that decided, or the interval that crosses the margin
    seeds: int | None = None  # inconclusive: about how many seeds per side would settle it (None: seeds alone won't)
    advice: str = ""          # inconclusive: what would settle it, in words
    by_seed: bool = False     # ticket and dense runs paired by transfer seed (each unit's differences, then their spread)


def unpack(bits: str, n: int) -> np.ndarray | None:
    """Per-image correctness (bool, test-split order) from its base64 packbits text; None if it does not hold n."""
    try:
        raw = np.frombuffer(base64.b64decode(bits, validate=True), dtype=np.uint8)
    except (binascii.Error, ValueError, TypeError):
        return None
    return np.unpackbits(raw, count=n).astype(bool) if len(raw) == (n + 7) // 8 else None


def pack(correct: Sequence[bool]) -> str:
    """The inverse of `unpack`: first image in the most significant bit of the first byte, zero-padded."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode("ascii")


def _spread(samples: Sequence[Sample]) -> tuple[float, float | None, int]:
    """(mean, unit variance or None, units): units are IMP seeds where there are several (each the mean of its
    transfer seeds: transfer runs of one ticket are not independent replicates of ticket finding), else runs."""
    by_imp: dict[object, list[float]] = {}
    for s in samples:
        by_imp.setdefault(s.imp_seed, []).append(s.value)
    units = [float(np.mean(v)) for v in by_imp.values()] if len(by_imp) >= 2 else [s.value for s in samples]
    var = float(np.var(units, ddof=1)) if len(units) >= 2 else None
    return float(np.mean(units)), var, len(units)


def _units(samples: Sequence[Sample]) -> list[list[Sample]]:
    """The replicates of ticket finding: one list per IMP seed where there are several, else one per run."""
    by_imp: dict[object, list[Sample]] = {}
    for s in samples:
        by_imp.setdefault(s.imp_seed, []).append(s)
    return list(by_imp.values()) if len(by_imp) >= 2 else [[s] for s in samples]


def seed_pairs(ticket: Sequence[Sample], dense: Sequence[Sample]) -> list[tuple[list[Sample], list[Sample]]] | None:
    """(ticket unit, its dense partners) when the comparison is paired by transfer seed: at least two units, no
    transfer seed in two units, and one dense run with each of a unit's seeds. Then a unit and its partners saw
    the same data order, augmentation and head initialisation, and only the backbone differs; each unit's
    difference is independent of the others'. None otherwise (a crossed design: every IMP seed's tickets
    transferred with the same seeds shares the dense runs between units, so their differences are not
    independent)."""
    units = _units(ticket)
    seeds = [s.seed for u in units for s in u]
    by_seed: dict[object, list[Sample]] = {}
    for d in dense:
        by_seed.setdefault(d.seed, []).append(d)
    if len(units) < 2 or None in seeds or len(set(seeds)) != len(seeds) or \
            any(len(by_seed.get(k, ())) != 1 for k in seeds):
        return None
    return [(u, [by_seed[s.seed][0] for s in u]) for u in units]


def _seed_part(ticket: Sequence[Sample], dense: Sequence[Sample],
               pairs: list[tuple[list[Sample], list[Sample]]] | None) -> tuple[float, list[tuple[float, float]],
                                                                               float, str]:
    """(diff, [(variance of diff from seeds, df)], unit variance sum for advice (nan: unknown), note); `pairs`:
    `seed_pairs(ticket, dense)`."""
    if pairs is not None:
        d = [float(np.mean([s.value for s in u]) - np.mean([s.value for s in p])) for u, p in pairs]
        var = float(np.var(d, ddof=1))
        return float(np.mean(d)), [(var / len(d), len(d) - 1)], var, ""
    mt, vt, nt = _spread(ticket)
    md, vd, nd = _spread(dense)
    diff = mt - md
    if vt is not None and vd is not None:
        return diff, [(vt / nt, nt - 1), (vd / nd, nd - 1)], vt + vd, ""
    if vt is None and vd is None:
        return diff, [], math.nan, ""
    known, n_known = (vt, nt) if vt is not None else (vd, nd)  # one side's variance stands for both
    return diff, [(known * (1 / nt + 1 / nd), n_known - 1)], 2 * known, \
        "one side has one seed: the other side's seed variance stands for both"


def _same_images(samples: Sequence[Sample]) -> int | None:
    sizes = {s.images for s in samples}
    return sizes.pop() if len(sizes) == 1 and None not in sizes else None


def _test_part(ticket: Sequence[Sample], dense: Sequence[Sample], margin: float,
               pairs: list[tuple[list[Sample], list[Sample]]] | None = None) -> tuple[float, float, bool] | None:
    """(variance of diff from the finite test set in points^2, its df, paired) or None when a run lacks its
    test size. Paired: per image, the ticket runs' mean correctness minus the dense runs'; unpaired: binomial.
    Pseudo-counts (half an image each way, paired; one right and one wrong per side, unpaired) keep it > 0, and
    the paired variance is never below what a true difference of exactly -margin implies: with per-image
    differences in steps of g = 1/lcm(runs per side), E[D^2] >= g * |E[D]| (few discordant images would
    otherwise give a narrow bound by chance)."""
    if pairs is not None:  # the dense runs that partner the ticket's units, each unit weighted alike
        dense = [p for _, ps in pairs for p in ps]
    n = _same_images([*ticket, *dense])
    if n is not None:
        rows = {id(s): unpack(s.bits, n) if s.bits else None for s in (*ticket, *dense)}
        if all(r is not None for r in rows.values()):
            if pairs is None:
                t = np.mean([rows[id(s)] for s in ticket], axis=0)
                d = np.mean([rows[id(s)] for s in dense], axis=0)
            else:
                t = np.mean([np.mean([rows[id(s)] for s in u], axis=0) for u, _ in pairs], axis=0)
                d = np.mean([np.mean([rows[id(s)] for s in ps], axis=0) for _, ps in pairs], axis=0)
            diffs = np.concatenate([t - d, [1.0, -1.0, 0.0]])
            weights = np.concatenate([np.ones(n), [0.5, 0.5, 1.0]])
            mean = np.average(diffs, weights=weights)
            var = float(np.average((diffs - mean) ** 2, weights=weights)) * (n + 2) / (n + 1)
            m = margin / 100
            var = max(var, m / math.lcm(len(ticket), len(dense)) - m * m)
            return 1e4 * var / (n + 2), n - 1, True
    nt, nd = _same_images(ticket), _same_images(dense)
    if nt is None or nd is None:
        return None

    def binom(samples, size):
        p = (np.mean([s.value for s in samples]) / 100 * size + 1) / (size + 2)
        return p * (1 - p) / (size + 2)
    return 1e4 * (binom(ticket, nt) + binom(dense, nd)), min(nt, nd) - 1, False


def _df(parts: list[tuple[float, float]]) -> float:
    """The smaller side's seed degrees of freedom (the conservative choice for a Welch-type comparison of few
    seeds, due to Hsu): never the test set's thousands of images, which would shrink the quantile exactly when
    the seeds' variance comes out small by chance, the case most at risk of a false call."""
    return min(df for _, df in parts)


def _quantile(confidence: float, df: float) -> float:
    from scipy.stats import t
    return float(t.ppf(confidence, df)) if math.isfinite(df) else float(t.ppf(confidence, 1e9))


def compare(ticket: Sequence[Sample], dense: Sequence[Sample], margin: float, confidence: float) -> Test:
    """Non-inferiority of the ticket's mean accuracy: lower bound of (ticket - dense) > -margin is double-win,
    the upper bound < -margin is not double-win, otherwise inconclusive. Both lists must be non-empty."""
    pairs = seed_pairs(ticket, dense)
    diff, parts, unit_var, note = _seed_part(ticket, dense, pairs)
    test = _test_part(ticket, dense, margin, pairs)
    if test is None:
        if any(x.images is None for x in (*ticket, *dense)):
            why, advice = "has no test_images in results.json (the test set's size is unknown)", "rerun the final tests"
        else:
            why, advice = "mixes runs tested on different numbers of images", "split them with --group-by"
        return Test(OPEN, diff, -math.inf, math.inf, math.inf, 0.0, False, why, None, advice)
    df = _df(parts) if parts else test[1]
    paired = pairs is not None
    se = math.sqrt(sum(v for v, _ in parts) + test[0])
    q = _quantile(confidence, df)
    lower, upper = diff - q * se, diff + q * se
    if lower > -margin:
        return Test(WIN, diff, lower, upper, se, df, test[2], f"lower bound {lower:+.1f} > -{margin:g}",
                    by_seed=paired)
    if upper < -margin:
        return Test(LOSS, diff, lower, upper, se, df, test[2], f"upper bound {upper:+.1f} < -{margin:g}",
                    by_seed=paired)
    seeds, advice = _seeds_needed(abs(diff + margin), unit_var, test[0], confidence)
    why = f"CI {lower:+.1f}..{upper:+.1f} crosses -{margin:g}"
    return Test(OPEN, diff, lower, upper, se, df, test[2], why, seeds, advice + (f" ({note})" if note else ""),
                paired)


def settle(tests: Sequence[Test]) -> str:
    """What would settle a row's inconclusive columns: the most seeds any of them needs, or the first reason
    seeds alone cannot."""
    open_ = [t for t in tests if t.call == OPEN]
    stuck = next((t.advice for t in open_ if t.seeds is None), None)
    return stuck if stuck else max(open_, key=lambda t: t.seeds).advice if open_ else ""


def _seeds_needed(gap: float, unit_var: float, test_var: float, confidence: float) -> tuple[int | None, str]:
    """About how many seeds per side bring the bound past the margin, if the estimate and the observed variances
    stay as they are (the test-set part does not shrink with seeds: the same images are reused)."""
    if gap < 1e-9:
        return None, "the estimate sits on the margin: no number of seeds settles it"
    small = "seeds alone will not settle it: the test set is too small for this margin"
    if math.isnan(unit_var):  # then the interval is the test set's alone: seeds add variance, and measure it
        return None, "one seed per side: test-set sampling only, seed-to-seed variance unknown; more test " \
            "images narrow it, >= 3 seeds per side measure the rest"
    from scipy.stats import t
    n = np.arange(2, MAX_SEEDS + 1)
    settles = t.ppf(confidence, n - 1) * np.sqrt(unit_var / n + test_var) < gap  # df as `_df` takes it
    if settles.any():
        return int(n[settles.argmax()]), f"~{int(n[settles.argmax()])} seeds per side would settle it"
    return None, small
