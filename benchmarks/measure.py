"""How bench.py measures: interleaved timing (medians), FLOPs from torch.utils.flop_counter, a matrix-multiply
ceiling timed alongside, and the peak memory of one variant in a fresh process."""
from __future__ import annotations

import gc
import multiprocessing
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
def probe(section: str, variant: str, cfg, steps: int = 2) -> float:
    """Peak memory in MiB while one variant runs `steps` steps in this process (model, optimizer state, masks
    and activations): the process's peak resident set on CPU (VmHWM, reset after the set-up),
    `torch.cuda.max_memory_allocated` on CUDA."""
    from benchmarks import cases as bench_cases
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    fn = bench_cases.build_step(section, variant, cfg)
    device = torch.device(cfg.device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _reset_peak_rss()  # the set-up's transients (pruning the ticket) are not the step's
    for _ in range(steps):
        fn()
    sync(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return _peak_rss_mib()


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:  # Linux: "5" resets VmHWM to the current RSS
            f.write("5")
    except OSError:
        pass  # elsewhere the peak includes the set-up


def _peak_rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_memory(section: str, variant: str, cfg, steps: int = 2) -> float:
    """`probe` in a fresh (spawned) process, so that no other variant's memory is counted."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(probe, (section, variant, cfg, steps))


def max_batch(section: str, variant: str, cfg, budget_mib: float) -> int:
    """Largest batch whose peak fits `budget_mib`, from a line through the peaks at the batch and half of it."""
    field = "eval_batch" if section == "eval" else "batch"
    full = getattr(cfg, field)
    hi = peak_memory(section, variant, cfg)
    lo = peak_memory(section, variant, cfg.replace(**{field: max(1, full // 2)}))
    per_image = (hi - lo) / (full - max(1, full // 2))
    return int((budget_mib - (hi - per_image * full)) / per_image) if per_image > 0 else full
