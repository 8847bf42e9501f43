"""The GPU check's items (benchmarks/gpu_check.py runs them in order, within their slices): the benchmark sections
in this process, and short runs of the entry points, the CUDA tests included, in subprocesses."""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the images' subprocess imports this module: it stays free of torch
    from benchmarks.gpu_record import Check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = 10
# runs main_train_downstream on fabricated CIFAR files, whose MD5 sums are not the official ones
TRANSFER = """import sys
sys.path.insert(0, {root!r})
import main_train_downstream
from datafiles import fabricate
from infra import errors
fabricate.allow_fake_checksums()
errors.run_cli(main_train_downstream.main)
"""
# writes an ImageFolder in a process of its own (no CUDA context to fork from), stopped with the item's slice
FABRICATE = """import sys
sys.path.insert(0, {root!r})
from benchmarks.gpu_items import fabricate_folder
fabricate_folder({path!r}, {n_train}, {n_val}, {size})
"""


def _failed(rc: int | None, took: float, log: str) -> str:
    """Why a run failed, with its log's last line (e.g. "error: --amp bf16 needs bf16 units ...")."""
    what = "stopped at the end of its slice" if rc is None else f"exit {rc}"
    lines = open(log, errors="replace").read().strip().splitlines()
    return f"{what} after {took:.0f}s: {lines[-1][:300] if lines else '(no output)'} (see {log})"


# ---------------------------------------------------------------------------- items 1-3: the benchmark, in-process
@dataclass
class Context:
    args: argparse.Namespace
    work: str
    bench_rows: list = field(default_factory=list)
    made: dict = field(default_factory=dict)   # fabricated data sets, by name

    def bench_config(self):
        from benchmarks import bench

        flags = ["--arch", self.args.arch, "--amp", self.args.amp, "--size", str(self.args.size),
                 "--batch", str(self.args.bench_batch)]
        return bench.config_from_args(bench.get_args_parser().parse_args(flags))


def _bench_section(check: Check, ctx: Context, section: str) -> list[dict]:
    from benchmarks import bench

    cfg = ctx.bench_config()
    with open(check.log("bench"), "a") as log:
        rows = bench.run_section(section, cfg, lambda msg: print(msg, file=log, flush=True))
    ctx.bench_rows += rows
    meta = bench.describe(cfg)
    with open(os.path.join(check.out, "bench.jsonl"), "a") as f:
        f.writelines(json.dumps({**meta, **r}) + "\n" for r in rows)
    check.write("benchmarks_row.md", bench.summary_row(ctx.bench_rows, meta) + "\n")
    return rows


def speed(check: Check, ctx: Context, limit: float) -> None:
    from benchmarks import cases

    rows = {r["variant"]: r for r in _bench_section(check, ctx, "train")}
    numbers = {v: {k: r.get(k) for k in ("images_per_s", "median_s", "paired_ratio", "ceiling_fraction")}
               for v, r in rows.items()}
    ours, off = rows["ours"], rows.get(cases.NO_TF32)
    detail = (f"ours {ours['images_per_s']:.0f} img/s = {ours['ratio_vs_baseline']:.2f}x the original's fp32 way "
              f"(paired {ours['paired_ratio']:.2f}x; target 2.5x)")
    if off:
        numbers["ours_over_tf32_off"] = ours["images_per_s"] / off["images_per_s"]
        detail += f", {numbers['ours_over_tf32_off']:.2f}x it with TF32 off"
    if ours.get("ceiling_fraction"):
        amp = "fp32" if ctx.args.amp == "none" else ctx.args.amp
        detail += f"; {100 * ours['ceiling_fraction']:.0f}% of the {amp} matmul ceiling"
    check.verdict(all(math.isfinite(r["median_s"]) for r in rows.values()), "speed", detail, numbers)


def memory(check: Check, ctx: Context, limit: float) -> None:
    rows = {r["variant"]: r for r in _bench_section(check, ctx, "memory")}
    key = "peak_reserved_mib" if "card_mib" in rows["ours"] else "peak_rss_mib"
    numbers = {v: {"sweep": r["sweep"], "max_batch_est": r.get("max_batch_est")} for v, r in rows.items()}
    numbers["card_mib"] = rows["ours"].get("card_mib")
    parts = [f"{v} " + "/".join(f"{p[key]:.0f}" for p in r["sweep"]) for v, r in rows.items()]
    detail = f"{key} at b{'/'.join(str(p['batch']) for p in rows['ours']['sweep'])}: {'; '.join(parts)}"
    if numbers["card_mib"]:
        detail += (f"; largest batch est. ours {rows['ours']['max_batch_est']}, baseline "
                   f"{rows['baseline']['max_batch_est']} on {numbers['card_mib']:.0f} MiB")
    numbers["ours_within_baseline"] = rows["ours"]["sweep"][-1][key] <= rows["baseline"]["sweep"][-1][key]
    check.verdict(True, "memory", detail + f" (ours <= baseline's: {numbers['ours_within_baseline']})", numbers)


def ticket(check: Check, ctx: Context, limit: float) -> None:
    ours = next(r for r in _bench_section(check, ctx, "ticket") if r["variant"] == "ours")
    numbers = {k: ours[k] for k in ("ticket_overhead", "ticket_overhead_paired", "mask_ops_s", "mask_ops_fraction")}
    check.verdict(True, "ticket", f"{100 * ours['ticket_overhead']:+.1f}% over the dense step (paired "
                                  f"{100 * ours['ticket_overhead_paired']:+.1f}%; target <= 3%), mask ops "
                                  f"{100 * ours['mask_ops_fraction']:.1f}% of the step", numbers)


# ---------------------------------------------------------------------------- items 4-8: runs, in subprocesses
def _write_class(root: str, label: int, n_train: int, n_val: int, size: int) -> None:
    import numpy as np
    from PIL import Image

    from datafiles import fabricate

    rng = np.random.default_rng(label)
    for split, n in (("train", n_train), ("val", n_val)):
        folder = os.path.join(root, split, f"class{label}")
        os.makedirs(folder, exist_ok=True)
        for i, image in enumerate(fabricate.class_images(np.full(n, label), rng, size)):
            Image.fromarray(image).save(os.path.join(folder, f"{i:05d}.png"))


def fabricate_folder(root: str, n_train: int, n_val: int, size: int) -> str:
    """An ImageNet-layout folder of class-coloured noise images (datafiles.fabricate's), one process per class."""
    with ProcessPoolExecutor(min(CLASSES, os.cpu_count() or 1)) as pool:
        list(pool.map(_write_class, [root] * CLASSES, range(CLASSES), [n_train] * CLASSES, [n_val] * CLASSES,
                      [size] * CLASSES))
    return root


def _folder(check: Check, name: str, path: str, sizes: tuple[int, int, int], limit: float) -> tuple[bool, float]:
    """(whether the ImageFolder `path` of (train, val) images per class at a side was made, seconds taken); a
    failure is the item's verdict."""
    n_train, n_val, size = sizes
    code = FABRICATE.format(root=ROOT, path=path, n_train=n_train, n_val=n_val, size=size)
    rc, took = check.run([sys.executable, "-c", code], check.log(f"{name}-data"), limit)
    if rc != 0:
        check.verdict(False, name, "fabricating its images: " + _failed(rc, took, check.log(f"{name}-data")))
    return rc == 0, took


def _model_flags(args, amp: str | None = None) -> list[str]:
    """Model, image size (small images: a small-input stem, no resize) and amp, as both entry points take them."""
    amp = amp or args.amp
    flags = ["--arch", args.arch, "--image-size", str(args.size)]
    flags += ["--small-input", "--resize-size", str(args.size)] if args.size <= 64 else []
    return flags + ([] if amp == "none" else ["--amp", amp])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp(check: Check, ctx: Context, limit: float) -> None:
    """The original's spawn path with one GPU visible: one rank in an NCCL process group (torchrun with one process
    makes no group), through a tiny IMP level."""
    data = os.path.join(ctx.work, "ddp-folder")
    made, took = _folder(check, "ddp", data, (4, 2, 32), limit)
    if not made:
        return
    out, log = os.path.join(ctx.work, "ddp"), check.log("ddp")
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    rc, took = check.run([sys.executable, "main_imp_std.py", data, "--save_dir", out, "-a", "resnet_tiny",
                          "--small-input", "--image-size", "32", "--resize-size", "32", "--epochs", "1",
                          "--prune_epoch", "1", "-b", "20", "-j", "0", "--no-progress", "--multiprocessing-distributed",
                          "--world-size", "1", "--rank", "0", "--dist-url", f"tcp://127.0.0.1:{_free_port()}",
                          "--dist-backend", "nccl"], log, limit - took, env={"CUDA_VISIBLE_DEVICES": first})
    if rc != 0:
        return check.verdict(False, "ddp", _failed(rc, took, log))
    layout = next((line.split("process layout: ")[1].strip() for line in open(os.path.join(out, "log.txt"))
                   if "process layout: " in line), "(no layout line)")
    check.verdict("(nccl)" in layout, "ddp", f"{layout}, {took:.0f}s", {"layout": layout, "seconds": took})


def aimp(check: Check, ctx: Context, limit: float) -> None:
    args, data = ctx.args, os.path.join(ctx.work, "imagefolder")
    ok, made = _folder(check, "aimp", data, (args.imp_images, max(2, args.imp_images // 8), args.size), limit)
    if not ok:
        return
    out, log = os.path.join(ctx.work, "aimp"), check.log("aimp")
    rc, took = check.run([sys.executable, "main_imp_adv.py", data, "--save_dir", out, "-b", str(args.imp_batch),
                          "-j", str(min(8, os.cpu_count() or 1)), "--epochs", str(args.imp_epochs),
                          "--prune_epoch", "2", "--lr", "0.01", "--no-progress", *_model_flags(args)], log,
                         limit - made)
    item = f"aimp: {args.arch} {args.size} px {args.amp} (PGD-3)"
    if rc != 0:
        return check.verdict(False, item, _failed(rc, took, log))
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    levels = args.imp_epochs // 2
    tickets = [os.path.exists(os.path.join(out, f"{k}-ticket.pth.tar")) for k in range(1, levels + 2)]
    sparsity = [json.load(open(os.path.join(out, f"{k}-sparsity.json")))["sparsity"] for k in range(1, levels + 2)]
    exact = all(abs(s - (1 - 0.8 ** k)) < 1e-3 for k, s in enumerate(sparsity, 1))
    finite = all(math.isfinite(r["train_loss"]) for r in rows)
    steps = len(rows) * math.ceil(CLASSES * args.imp_images / args.imp_batch)
    speed_ = CLASSES * args.imp_images * len(rows) / sum(r["time"] for r in rows)
    numbers = {"steps": steps, "levels": levels, "sparsity": sparsity, "images_per_s_with_validation": speed_,
               "seconds": took, "fabricate_s": made, "train_loss": [r["train_loss"] for r in rows]}
    check.verdict(len(rows) == args.imp_epochs and all(tickets) and exact and finite, item,
                  f"{steps} steps, {levels} level(s), tickets at {', '.join(f'{100 * s:.1f}%' for s in sparsity)}, "
                  f"losses finite {finite}, {speed_:.0f} img/s with validation ({made:.0f}s to fabricate data)",
                  numbers)


def _transfer(check: Check, ctx: Context, limit: float, amp: str, name: str, epochs: int) -> None:
    from datafiles import fabricate

    args = ctx.args
    if "cifar" not in ctx.made:
        ctx.made["cifar"] = fabricate.make_cifar10(os.path.join(ctx.work, "cifar"), n_train=args.transfer_images,
                                                   n_test=max(20, args.transfer_images // 4))
    script = os.path.join(ctx.work, "transfer.py")
    with open(script, "w") as f:
        f.write(TRANSFER.format(root=ROOT))
    out, log = os.path.join(ctx.work, name), check.log(name)
    rc, took = check.run([sys.executable, script, "--data", ctx.made["cifar"], "--dataset", "cifar10", "--init", "",
                          "--save_dir", out, "--mode", "adv", "--epochs", str(epochs), "--batch_size", "128",
                          "--train_step", "3", "--test_step", "5", "--pipeline", "device", "--no-progress",
                          *_model_flags(args, amp)], log, limit)
    item = f"{name}: {args.arch} {args.size} px, device pipeline, PGD-3 training, {amp}"
    if rc != 0:
        return check.verdict(False, item, _failed(rc, took, log))
    res = json.load(open(os.path.join(out, "results.json")))
    sa, ra = res["best_sa"]["test_sa"], res["best_sa"]["test_ra"]
    ok = res["complete"] and res["pipeline"] == "device" and res.get("test_precision") == "fp32" and \
        math.isfinite(sa) and math.isfinite(ra)
    check.verdict(ok, item, f"{took:.0f}s, pipeline {res['pipeline']}, test in {res.get('test_precision')}, "
                            f"test SA {sa:.1f} RA {ra:.1f}", {"seconds": took, "test_sa": sa, "test_ra": ra})


def transfer(check: Check, ctx: Context, limit: float) -> None:
    _transfer(check, ctx, limit, ctx.args.amp, "transfer", epochs=2)


def fp16(check: Check, ctx: Context, limit: float) -> None:
    _transfer(check, ctx, limit, "fp16", "fp16", epochs=1)


def cuda_tests(check: Check, ctx: Context, limit: float, path: str = "tests/test_cuda.py") -> None:
    """One verdict per `cuda`-marked test in `path`, read from pytest's JUnit XML report."""
    xml, log = os.path.join(check.out, "logs", "cuda-tests.xml"), check.log("cuda-tests")
    rc, took = check.run([sys.executable, "-m", "pytest", path, "-m", "cuda", "-p", "no:cacheprovider",
                          f"--junitxml={xml}"], log, limit)
    if not os.path.exists(xml):
        return check.verdict(False, "cuda-tests", f"pytest {'stopped' if rc is None else f'exited {rc}'} after "
                                                  f"{took:.0f}s without a report (see {log})")
    for case in ET.parse(xml).getroot().iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        detail = (bad.get("message") or "")[:300] if bad is not None else \
            (skipped.get("message") or "") if skipped is not None else f"{float(case.get('time', 0)):.1f}s"
        check.verdict(None if skipped is not None else bad is None, f"cuda test {case.get('name')}", detail)
    if rc is None:
        check.verdict(False, "cuda-tests", f"stopped at the end of its slice after {took:.0f}s")


