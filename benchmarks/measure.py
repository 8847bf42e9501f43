"""How bench.py measures: interleaved timing (medians), FLOPs from torch.utils.flop_counter, a matrix-multiply
ceiling timed alongside, and peak memory per batch size from one in-process sweep."""
from __future__ import annotations

import gc
import resource
import statistics
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

MATMUL_N = {"cpu": 2048, "cuda": 8192}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleave(fns: dict[str, Callable[[], object]], device: torch.device, *, rounds: int,
               warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each fn, run A B C, B C A, ... (`rounds` times) after `warmup` untimed calls each,
    so that load changes on the machine hit every variant alike and no variant always runs first."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(timed(fns[name], device))
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired(reference: list[float], other: list[float]) -> tuple[float, float, float]:
    """(median, min, max) over rounds of reference_time / other_time, each pair taken from the same interleaved
    round: a speed ratio that a load change on the machine between rounds does not move, unlike the ratio of
    the two medians (which may come from different rounds)."""
    if len(reference) != len(other) or not reference:
        raise ValueError(f"paired ratios need equally many rounds, got {len(reference)} and {len(other)}")
    ratios = [r / o for r, o in zip(reference, other)]
    return statistics.median(ratios), min(ratios), max(ratios)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call, as torch.utils.flop_counter counts them (matmuls and convolutions, forward and the
    backward parts actually computed)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def matmul(device: torch.device, dtype: torch.dtype, *, tf32: bool = False) -> tuple[Callable[[], None], int]:
    """An n x n matrix product in `dtype` on `device` (and its FLOPs): the ceiling the steps are held against.
    `tf32`: allow TF32 tensor cores for fp32 on CUDA, as cuDNN does for fp32 convolutions by default."""
    n = MATMUL_N.get(device.type, 4096)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)

    def fn() -> None:
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            torch.mm(a, b, out=out)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
    return fn, 2 * n ** 3


# ---------------------------------------------------------------------------- memory
def memory_sweep(build: Callable[[int], Callable[[], object]], batches: list[int], device: torch.device,
                 steps: int = 1) -> list[dict]:
    """Peak memory of a step per batch size, in this process: each size's step is built and run once first (cuDNN
    autotuning and its workspaces, lazy allocations), the unused cache released and the peak statistics reset,
    then `steps` steps measured; the size's tensors are freed before the next. On CUDA the peaks of
    `torch.cuda.max_memory_allocated` and of `max_memory_reserved` (what the card gives up, allocator slack
    included), on CPU the process's peak resident set (VmHWM, reset after the warm-up)."""
    rows = []
    for batch in batches:
        fn = build(batch)
        fn()
        sync(device)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        else:
            _reset_peak_rss()
        for _ in range(steps):
            fn()
        sync(device)
        if device.type == "cuda":
            rows.append({"batch": batch, "peak_allocated_mib": torch.cuda.max_memory_allocated(device) / 2 ** 20,
                         "peak_reserved_mib": torch.cuda.max_memory_reserved(device) / 2 ** 20})
        else:
            rows.append({"batch": batch, "peak_rss_mib": _peak_rss_mib()})
        del fn
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:  # Linux: "5" resets VmHWM to the current RSS
            f.write("5")
    except OSError:
        pass  # elsewhere the peak includes what ran before


def _peak_rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def max_batch(rows: list[dict], key: str, capacity_mib: float) -> int | None:
    """The largest batch whose peak `key` fits `capacity_mib`, from the least-squares line through the sweep's
    (batch, peak) points; None without two distinct batches or when the peak does not grow with the batch."""
    xs, ys = [r["batch"] for r in rows], [r[key] for r in rows]
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    if slope <= 0:
        return None
    return int((capacity_mib - (my - slope * mx)) / slope)
