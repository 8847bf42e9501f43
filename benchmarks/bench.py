"""Speed benchmark: our training step, PGD-20 evaluation and downstream input pipeline against the original's
way of running them (bench_baseline.py), interleaved in one run, with FLOPs, a matmul ceiling and peak memory.

    python bench.py              # CPU: ResNet-50, 32 px, batch 64, PGD-3 step with an 80% ticket (~3-5 min)
    python bench.py              # on a GPU: 224 px, batch 256 (A-IMP per GPU), PGD-20 eval at 128, bf16
    python bench.py --quick      # smoke configuration (resnet_tiny, a few steps)

Prints a table, appends one JSON line per measurement to --jsonl and a dated summary row to --md.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import sys

import torch
import torchvision

import benchmarks.cases as cases
import benchmarks.measure as measure
from infra import errors
from infra import hardware
from benchmarks.cases import SECTIONS, BenchConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MATMUL_DTYPES = {None: torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def get_args_parser() -> argparse.ArgumentParser:
    p = errors.OneLineParser(description="Speed of our fast paths against the original's way")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's, all cores)")
    p.add_argument("--quick", action="store_true", help="tiny smoke configuration (resnet_tiny, few steps)")
    p.add_argument("--arch", default=None)
    p.add_argument("--size", type=int, default=None, help="image side (default: 32 on CPU, 224 on GPU)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default: 64 on CPU, 256 on GPU)")
    p.add_argument("--eval-batch", type=int, default=None, help="PGD-20 batch (default: 64 on CPU, 128 on GPU)")
    p.add_argument("--train-steps", type=int, default=3, help="PGD steps of the training step (A-IMP: 3)")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default=None,
                   help="ours' autocast (default: bf16 on GPU, none on CPU; bf16 on a CPU without bf16 units is slow)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--compile", action="store_true", help="nn.Module.compile() our models (FLOPs then not counted)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes (fresh processes)")
    p.add_argument("--sections", default="train,fgsm,eval,pipeline")
    p.add_argument("--jsonl", default=os.path.join("runs", "bench", "bench.jsonl"))
    p.add_argument("--md", default=os.path.join(ROOT, "BENCHMARKS.md"), help="'' to skip the summary row")
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    device = args.device or ("cuda" if hardware.cuda_usable() else "cpu")
    if device.startswith("cuda") and not hardware.cuda_usable():
        raise errors.UserError("--device cuda: no GPU is visible; drop --device or pass --device cpu")
    gpu = device.startswith("cuda")
    amp = None if args.amp == "none" else args.amp if args.amp else ("bf16" if gpu else None)
    if amp == "fp16" and not gpu:
        raise errors.UserError("--amp fp16 needs a GPU: use --amp bf16 or none on CPU")
    cfg = BenchConfig(device=device, size=224 if gpu else 32, batch=256 if gpu else 64,
                      eval_batch=128 if gpu else 64, amp=amp, channels_last=args.channels_last,
                      compile=args.compile, memory=not args.no_memory, train_steps=args.train_steps)
    if args.quick:
        cfg = cfg.replace(arch="resnet_tiny", num_classes=10, size=32, batch=8, eval_batch=8, eval_steps=3,
                          rounds=2, eval_rounds=1, pipeline_size=32, pipeline_batch=16, pipeline_batches=2,
                          pipeline_rounds=1, pipeline_images=64)
    if args.threads is not None and args.threads < 1:
        raise errors.UserError(f"--threads {args.threads}: pass a number >= 1")
    explicit = {"arch": args.arch, "size": args.size, "batch": args.batch, "eval_batch": args.eval_batch,
                "rounds": args.rounds, "threads": args.threads}
    return cfg.replace(**{k: v for k, v in explicit.items() if v is not None})


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


# ---------------------------------------------------------------------------- sections
def run_steps(section: str, cfg: BenchConfig, log) -> list[dict]:
    device = torch.device(cfg.device)
    variants = SECTIONS[section]
    fns = {v: cases.build_step(section, v, cfg) for v in variants}
    dtype = MATMUL_DTYPES[cfg.amp]
    ceilings = {"matmul-fp32": measure.matmul(device, torch.float32, tf32=device.type == "cuda")}
    if dtype != torch.float32:
        ceilings[f"matmul-{cfg.amp}"] = measure.matmul(device, dtype)
    fns.update({k: fn for k, (fn, _) in ceilings.items()})
    if section == "train":
        fns["mask-ops"] = cases.build_mask_ops(cfg)
    rounds = cfg.eval_rounds if section == "eval" else cfg.rounds
    log(f"[{section}] timing {', '.join(fns)}: {cfg.warmup} warm-up + {rounds} interleaved rounds")
    times = measure.interleave(fns, device, rounds=rounds, warmup=cfg.warmup)
    peak = {k: flops / measure.median(times[k]) for k, (_, flops) in ceilings.items()}
    batch = cfg.eval_batch if section == "eval" else cfg.batch
    rows = []
    for v in variants:
        t = measure.median(times[v])
        fp32 = v == "baseline" or v == "ours-plain" or cfg.amp is None
        ceiling = peak["matmul-fp32" if fp32 else f"matmul-{cfg.amp}"]
        flops = None if cfg.compile and v != "baseline" else measure.count_flops(fns[v])
        rows.append({"section": section, "variant": v, "median_s": t, "times_s": times[v], "batch": batch,
                     "images_per_s": batch / t, "flops": flops, "flop_per_s": flops / t if flops else None,
                     "ceiling_flop_per_s": ceiling, "ceiling_fraction": flops / t / ceiling if flops else None})
    _ratios(rows)
    if section == "train":
        ours = next(r for r in rows if r["variant"] == "ours")
        dense = next(r for r in rows if r["variant"] == "ours-dense")
        ours["ticket_overhead"] = ours["median_s"] / dense["median_s"] - 1
        ours["ticket_overhead_paired"] = measure.paired(ours["times_s"], dense["times_s"])[0] - 1
        ours["mask_ops_s"] = measure.median(times["mask-ops"])
        ours["mask_ops_fraction"] = ours["mask_ops_s"] / ours["median_s"]
    del fns
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the probes' processes get the memory this one cached
    if cfg.memory and section in ("train", "eval"):
        for r in rows[:2]:
            log(f"[{section}] peak memory of {r['variant']} (fresh process)")
            r["peak_mib"] = measure.peak_memory(section, r["variant"], cfg)
        if device.type == "cuda" and section == "train":
            budget = torch.cuda.get_device_properties(device).total_memory / 2 ** 20 * 0.95
            for r in rows[:2]:
                r["max_batch_est"] = measure.max_batch(section, r["variant"], cfg, budget)
    return rows


def run_pipeline(cfg: BenchConfig, log) -> list[dict]:
    device = torch.device(cfg.device)
    data, targets = cases.cifar_like(cfg)
    variants = ["baseline", "ours-device"] + (["ours-host"] if device.type == "cpu" else [])
    fns = {v: cases.build_pipeline(v, cfg, data, targets) for v in variants}
    counts = {v: cfg.pipeline_batch * cfg.pipeline_batches for v in variants}
    log(f"[pipeline] 32 px uint8 -> {cfg.pipeline_size} px batches of {cfg.pipeline_batch}: {', '.join(variants)}")
    times = measure.interleave(fns, device, rounds=cfg.pipeline_rounds, warmup=1)
    rows = [{"section": "pipeline", "variant": v, "median_s": measure.median(times[v]), "times_s": times[v],
             "batch": cfg.pipeline_batch, "images_per_s": counts[v] / measure.median(times[v])} for v in variants]
    _ratios(rows)
    best = max(rows[1:], key=lambda r: r["images_per_s"])
    best["chosen"] = True  # ours on this device: the faster of the measured candidates
    return rows


def _ratios(rows: list[dict]) -> None:
    """Each row against the first (the baseline): the ratio of images/s from the medians, and the paired ratio
    (median, min, max over the interleaved rounds), the steadier of the two on a shared machine."""
    base = rows[0]
    for r in rows:
        r["ratio_vs_baseline"] = r["images_per_s"] / base["images_per_s"]
        # every variant of a section handles the same images per call: a time ratio is a speed ratio
        med, lo, hi = measure.paired(base["times_s"], r["times_s"])
        r["paired_ratio"], r["paired_range"] = med, [lo, hi]


# ---------------------------------------------------------------------------- output
def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_table(rows: list[dict], out=None) -> None:
    out = out or sys.stdout
    print(f"{'section':9} {'variant':12} {'img/s':>9} {'x base':>7} {'paired (range)':>17} {'median s':>9} "
          f"{'GFLOP':>8} {'% ceiling':>9} {'peak MiB':>9}", file=out)
    for r in rows:
        frac = None if r.get("ceiling_fraction") is None else 100 * r["ceiling_fraction"]
        mark = " *" if r.get("chosen") else ""
        lo, hi = r["paired_range"]
        paired = f"{r['paired_ratio']:.2f} ({lo:.2f}-{hi:.2f})"
        print(f"{r['section']:9} {r['variant'] + mark:12} {r['images_per_s']:9.1f} {r['ratio_vs_baseline']:7.2f} "
              f"{paired:>17} {r['median_s']:9.3f} {_fmt(r.get('flops') and r['flops'] / 1e9, '8.1f'):>8} "
              f"{_fmt(frac, '9.1f'):>9} {_fmt(r.get('peak_mib'), '9.0f'):>9}", file=out)
    for r in rows:
        if "ticket_overhead" in r:
            print(f"ticket over dense: {100 * r['ticket_overhead']:+.1f}% of the step (paired over rounds: "
                  f"{100 * r['ticket_overhead_paired']:+.1f}%); mask ops alone "
                  f"{1000 * r['mask_ops_s']:.1f} ms = {100 * r['mask_ops_fraction']:.1f}%", file=out)
        if "max_batch_est" in r:
            print(f"{r['variant']}: largest training batch est. {r['max_batch_est']} on this card", file=out)


def summary_row(rows: list[dict], meta: dict) -> str:
    def get(section, variant):
        return next((r for r in rows if r["section"] == section and r["variant"] == variant), None)

    def pair(section, ours="ours"):
        o, b = get(section, ours), get(section, "baseline")
        if o is None or b is None:
            return "-"
        return (f"{o['images_per_s']:.1f} / {b['images_per_s']:.1f} ({o['ratio_vs_baseline']:.2f}x; paired "
                f"{o['paired_ratio']:.2f}x)")
    o, b = get("train", "ours"), get("train", "baseline")
    pipe = next((r for r in rows if r.get("chosen")), None)
    pipeline = f"{pair('pipeline', pipe['variant'])} {pipe['variant']}" if pipe else "-"
    overhead = (f"{100 * o['ticket_overhead']:+.1f}%, paired {100 * o['ticket_overhead_paired']:+.1f}% (mask ops "
                f"{100 * o['mask_ops_fraction']:.1f}%)") if o else "-"
    memory = f"{_fmt(o and o.get('peak_mib'), '.0f')} / {_fmt(b and b.get('peak_mib'), '.0f')}"
    ceiling = "-"
    if o and o.get("ceiling_fraction") and b.get("ceiling_fraction"):
        ceiling = f"{100 * o['ceiling_fraction']:.0f}% / {100 * b['ceiling_fraction']:.0f}%"
    versions = f"torch {meta['torch']}, torchvision {meta['torchvision']}"
    cells = [meta["date"], meta["device"], versions, meta["config"], pair("train"), pair("fgsm"), pair("eval"),
             pipeline, overhead, memory, ceiling]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cfg = config_from_args(args)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS) - {"pipeline"})
    if unknown:
        raise errors.UserError(f"--sections {args.sections}: unknown {unknown}; choose from "
                               f"{', '.join(list(SECTIONS) + ['pipeline'])}")
    device = torch.device(cfg.device)
    meta = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "device": device_name(device),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
            "config": f"{cfg.arch} {cfg.size}px b{cfg.batch} PGD-{cfg.train_steps} / eval b{cfg.eval_batch} "
                      f"PGD-{cfg.eval_steps}, {100 * cfg.sparsity:.0f}% ticket, amp {cfg.amp or 'fp32'}, "
                      f"{'channels_last' if cfg.channels_last else 'NCHW'}{', compile' if cfg.compile else ''}"}
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)
    log(f"bench on {meta['device']}: {meta['config']}")
    rows = []
    for section in sections:
        rows += run_pipeline(cfg, log) if section == "pipeline" else run_steps(section, cfg, log)
    print_table(rows)
    if args.jsonl:
        os.makedirs(os.path.dirname(os.path.abspath(args.jsonl)), exist_ok=True)
        with open(args.jsonl, "a") as f:
            for r in rows:
                f.write(json.dumps({**meta, **r}) + "\n")
    if args.md:
        with open(args.md, "a") as f:
            f.write(summary_row(rows, meta) + "\n")
    return 0


if __name__ == "__main__":
    errors.run_cli(main)
