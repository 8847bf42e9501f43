"""GPU acceptance check: what a short first loan of a GPU can answer, most valuable first, each item within a slice
of one time budget; every number and verdict is written under --out as soon as it exists.

    python3 -m benchmarks.gpu_check --out DIR      # the machine's own Python, from the repository root
    bash script/gpu_check.sh --out DIR             # the same through script/env.sh (DOUBLEWIN_PY or .venv)
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

from benchmarks import gpu_items
from benchmarks.gpu_items import Context
from benchmarks.gpu_record import Check
from infra import errors
from infra import hardware
ORDER = """order (each item has a share of --budget; time an item leaves unused passes to the next; an item whose
slice has less left than its minimum is skipped and said so; subprocess items are stopped at the end of their slice,
in-process ones (1-3) are only started when their minimum fits):
  1. speed       training step (ResNet-50, 224 px, b256, PGD-3, 80% ticket): ours in bf16 + channels_last against
                 the original's way in fp32 (cuDNN TF32 allowed, today's default) and with TF32 off (PyTorch 1.5)
  2. memory      peak memory of that step per batch size (b64, b128, b256), ours and the baseline's: one in-process
                 sweep, each size warmed up first; the largest batch whose peak reserved memory fits the card
  3. ticket      the ticket's overhead over the dense step, and the mask operations alone
  4. ddp         a tiny IMP run through --multiprocessing-distributed, world size 1: DDP over NCCL with one rank
  5. aimp        a short ResNet-50 A-IMP at 224 px in bf16 on fabricated ImageFolder images (tickets, sparsity)
  6. transfer    a short adversarial transfer through the device pipeline (fabricated CIFAR-10 files), bf16
  7. fp16        a short transfer under --amp fp16 (GradScaler)
  8. cuda-tests  tests/test_cuda.py, one verdict per test

DIR receives, rewritten after every item: gpu_check.json (card, versions, budget; per item its verdict, detail,
seconds and numbers), benchmarks_row.md (the BENCHMARKS.md row of items 1-3), bench.jsonl (their JSON lines) and
logs/ (bench.log, and one log per subprocess item). Data and runs go to --work, not DIR.
Without a usable CUDA device: one line, exit 0, nothing written."""


def get_args_parser() -> argparse.ArgumentParser:
    p = errors.OneLineParser(description="GPU acceptance check (one line and exit 0 where CUDA is absent)",
                             epilog=ORDER, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join("runs", "gpu_check"), help="where numbers and verdicts go")
    p.add_argument("--budget", type=float, default=540, help="seconds for the whole check (default 540: 9 minutes)")
    p.add_argument("--work", default=None, help="folder for data and runs (default: a temporary one)")
    p.add_argument("--arch", default="resnet50", help="model of every item")
    p.add_argument("--size", type=int, default=224, help="image side of every item but ddp")
    p.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"],
                   help="precision of ours in items 1-3, 5, 6 (cards before compute capability 8.0: fp16)")
    p.add_argument("--bench-batch", type=int, default=256,
                   help="training batch of items 1 and 3; item 2 sweeps a quarter, a half and all of it")
    p.add_argument("--imp-images", type=int, default=100, help="fabricated A-IMP training images per class")
    p.add_argument("--imp-batch", type=int, default=64)
    p.add_argument("--imp-epochs", type=int, default=4, help="A-IMP epochs (2 per level)")
    p.add_argument("--transfer-images", type=int, default=2000, help="fabricated CIFAR-10 training images")
    return p


# ---------------------------------------------------------------------------- the budget
@dataclass(frozen=True)
class Item:
    name: str
    share: float                                  # of the budget
    least: float                                  # seconds below which it is not started
    run: Callable[[Check, Context, float], None]  # records its own verdict(s); gets its time limit


def slot(items: list[Item], i: int, budget: float, elapsed: float) -> float:
    """Seconds item i may take: up to the end of its cumulative share of the budget (unused time passes on)."""
    return budget * sum(it.share for it in items[:i + 1]) / sum(it.share for it in items) - elapsed


def run_items(check: Check, ctx: Context, plan: list[Item]) -> None:
    for i, item in enumerate(plan):
        limit = slot(plan, i, check.budget, check.elapsed())
        if limit < item.least:
            check.verdict(None, item.name, f"skipped: {max(limit, 0):.0f}s of its slice left, it needs "
                                           f"~{item.least:.0f}s")
            continue
        try:
            item.run(check, ctx, limit)
        except Exception as e:  # a failed item is its verdict; the items after it still run
            check.verdict(False, item.name, f"{type(e).__name__}: {errors.one_line(e)}"[:400])
    check.record["finished"] = True
    check.save()


# the order, each item's share of the budget and the least seconds it is started with
ITEMS = [Item("speed", 0.17, 40, gpu_items.speed), Item("memory", 0.09, 20, gpu_items.memory),
         Item("ticket", 0.07, 15, gpu_items.ticket), Item("ddp", 0.07, 20, gpu_items.ddp),
         Item("aimp", 0.22, 60, gpu_items.aimp), Item("transfer", 0.14, 40, gpu_items.transfer),
         Item("fp16", 0.09, 30, gpu_items.fp16), Item("cuda-tests", 0.15, 30, gpu_items.cuda_tests)]


# ---------------------------------------------------------------------------- main
def machine() -> dict:
    import torch
    import torchvision

    dev = torch.device("cuda", torch.cuda.current_device())
    props = torch.cuda.get_device_properties(dev)
    return {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "card": props.name,
            "capability": list(torch.cuda.get_device_capability(dev)), "card_mib": props.total_memory / 2 ** 20,
            "gpus": torch.cuda.device_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "torchvision": torchvision.__version__, "python": platform.python_version(), "argv": sys.argv[1:]}


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()  # the budget includes the start-up (CUDA's initialisation)
    args = get_args_parser().parse_args(argv)
    if not hardware.cuda_usable():
        print("gpu_check: no CUDA device is usable on this machine (or DOUBLEWIN_DEVICE=cpu): nothing to check")
        return 0
    out = os.path.abspath(args.out)
    work = args.work or tempfile.mkdtemp(prefix="doublewin-gpu-check-")
    os.makedirs(work, exist_ok=True)
    check = Check(out, args.budget, machine(), started=started)
    print(f"gpu_check: {check.record['card']}, torch {check.record['torch']}; budget {args.budget:.0f}s; "
          f"numbers and verdicts in {out}, runs in {work}", flush=True)
    run_items(check, Context(args, work), ITEMS)
    print(f"gpu_check: {'all items passed' if not check.failed else f'{check.failed} item(s) failed'} "
          f"({check.elapsed():.0f}s)", flush=True)
    return 1 if check.failed else 0


if __name__ == "__main__":
    errors.run_cli(main)
