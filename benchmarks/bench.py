"""Speed benchmark: our training step, PGD-20 evaluation and downstream input pipeline against the original's
way of running them (benchmarks/baseline.py), interleaved in one run, with FLOPs, a matmul ceiling, the ticket's
overhead and peak memory per batch size.

    python -m benchmarks.bench           # CPU: ResNet-50, 32 px, batch 64, PGD-3 step with an 80% ticket (~3-5 min)
    python -m benchmarks.bench           # on a GPU: 224 px, batch 256 (A-IMP per GPU), PGD-20 eval at 128, bf16
    python -m benchmarks.bench --quick   # smoke configuration (resnet_tiny, a few steps)

Prints a table, appends one JSON line per measurement to --jsonl (after each section) and a dated summary row to --md.
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
ALL_SECTIONS = (*SECTIONS, "pipeline", "memory")


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
    p.add_argument("--sections", default=",".join(ALL_SECTIONS),
                   help="comma-separated, run in this order (memory: one in-process sweep over batch sizes)")
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
                      compile=args.compile, train_steps=args.train_steps)
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
def _ceilings(device: torch.device, cfg: BenchConfig, names: tuple[str, ...]) -> dict:
    """The matmul ceilings the variants are held against: fp32 (TF32 allowed on CUDA, as cuDNN allows it), fp32
    without TF32 for the baseline that runs so, and the --amp dtype."""
    out = {"matmul-fp32": measure.matmul(device, torch.float32, tf32=device.type == "cuda")}
    if cases.NO_TF32 in names:
        out["matmul-fp32-notf32"] = measure.matmul(device, torch.float32)
    if cfg.amp:
        out[f"matmul-{cfg.amp}"] = measure.matmul(device, MATMUL_DTYPES[cfg.amp])
    return out


def _ceiling_of(variant: str, cfg: BenchConfig) -> str:
    if variant == cases.NO_TF32:
        return "matmul-fp32-notf32"
    fp32 = variant in ("baseline", "ours-plain") or cfg.amp is None
    return "matmul-fp32" if fp32 else f"matmul-{cfg.amp}"


def run_steps(section: str, cfg: BenchConfig, log) -> list[dict]:
    device = torch.device(cfg.device)
    variants = cases.variants(section, device)
    fns = {v: cases.build_step(section, v, cfg) for v in variants}
    ceilings = _ceilings(device, cfg, variants)
    fns.update({k: fn for k, (fn, _) in ceilings.items()})
    if section == "ticket":
        fns["mask-ops"] = cases.build_mask_ops(cfg)
    rounds = cfg.eval_rounds if section == "eval" else cfg.rounds
    log(f"[{section}] timing {', '.join(fns)}: {cfg.warmup} warm-up + {rounds} interleaved rounds")
    times = measure.interleave(fns, device, rounds=rounds, warmup=cfg.warmup)
    peak = {k: flops / measure.median(times[k]) for k, (_, flops) in ceilings.items()}
    batch = cfg.eval_batch if section == "eval" else cfg.batch
    rows = []
    for v in variants:
        t = measure.median(times[v])
        ceiling = peak[_ceiling_of(v, cfg)]
        flops = None if cfg.compile and not v.startswith("baseline") else measure.count_flops(fns[v])
        rows.append({"section": section, "variant": v, "median_s": t, "times_s": times[v], "batch": batch,
                     "images_per_s": batch / t, "flops": flops, "flop_per_s": flops / t if flops else None,
                     "ceiling_flop_per_s": ceiling, "ceiling_fraction": flops / t / ceiling if flops else None})
    _ratios(rows)
    if section == "ticket":
        ours, dense = rows[1], rows[0]
        ours["ticket_overhead"] = ours["median_s"] / dense["median_s"] - 1
        ours["ticket_overhead_paired"] = measure.paired(ours["times_s"], dense["times_s"])[0] - 1
        ours["mask_ops_s"] = measure.median(times["mask-ops"])
        ours["mask_ops_fraction"] = ours["mask_ops_s"] / ours["median_s"]
    del fns
    _release(device)
    return rows


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_memory(cfg: BenchConfig, log) -> list[dict]:
    """Peak memory of the training step, ours and the baseline's, per batch size (one in-process sweep), and on
    CUDA the largest batch whose peak reserved memory fits the card."""
    device = torch.device(cfg.device)
    batches = list(cfg.memory_batches) or sorted({max(1, cfg.batch // 4), max(1, cfg.batch // 2), cfg.batch})
    rows = []
    for v in ("baseline", "ours"):
        log(f"[memory] {v}: training step at batches {batches}")
        sweep = measure.memory_sweep(lambda b: cases.build_step("train", v, cfg.replace(batch=b)), batches, device)
        row = {"section": "memory", "variant": v, "sweep": sweep}
        if device.type == "cuda":
            card = torch.cuda.get_device_properties(device).total_memory / 2 ** 20
            row.update(card_mib=card, max_batch_est=measure.max_batch(sweep, "peak_reserved_mib", card))
        rows.append(row)
    _release(device)
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
    timed = [r for r in rows if "median_s" in r]
    print(f"{'section':9} {'variant':15} {'img/s':>9} {'x ref':>7} {'paired (range)':>17} {'median s':>9} "
          f"{'GFLOP':>8} {'% ceiling':>9}", file=out)
    for r in timed:
        frac = None if r.get("ceiling_fraction") is None else 100 * r["ceiling_fraction"]
        mark = " *" if r.get("chosen") else ""
        lo, hi = r["paired_range"]
        paired = f"{r['paired_ratio']:.2f} ({lo:.2f}-{hi:.2f})"
        print(f"{r['section']:9} {r['variant'] + mark:15} {r['images_per_s']:9.1f} {r['ratio_vs_baseline']:7.2f} "
              f"{paired:>17} {r['median_s']:9.3f} {_fmt(r.get('flops') and r['flops'] / 1e9, '8.1f'):>8} "
              f"{_fmt(frac, '9.1f'):>9}", file=out)
    for r in rows:
        if "ticket_overhead" in r:
            print(f"ticket over dense: {100 * r['ticket_overhead']:+.1f}% of the step (paired over rounds: "
                  f"{100 * r['ticket_overhead_paired']:+.1f}%); mask ops alone "
                  f"{1000 * r['mask_ops_s']:.1f} ms = {100 * r['mask_ops_fraction']:.1f}%", file=out)
        if r["section"] == "memory":
            peaks = ", ".join(f"b{p['batch']} {_peak(p):.0f}" for p in r["sweep"])
            est = f"; largest batch est. {r['max_batch_est']} on this card" if r.get("max_batch_est") else ""
            print(f"peak MiB of {r['variant']}'s training step ({_peak_kind(r)}): {peaks}{est}", file=out)


def _peak(point: dict) -> float:
    return point.get("peak_reserved_mib", point.get("peak_rss_mib"))


def _peak_kind(row: dict) -> str:
    return "reserved" if "card_mib" in row else "process RSS"


def summary_row(rows: list[dict], meta: dict) -> str:
    def get(section, variant):
        return next((r for r in rows if r["section"] == section and r["variant"] == variant), None)

    def pair(section, ours="ours", ref="baseline"):
        o, b = get(section, ours), get(section, ref)
        if o is None or b is None:
            return "-"
        return (f"{o['images_per_s']:.1f} / {b['images_per_s']:.1f} ({o['ratio_vs_baseline']:.2f}x; paired "
                f"{o['paired_ratio']:.2f}x)")
    o, b, t = get("train", "ours"), get("train", "baseline"), get("ticket", "ours")
    train = pair("train")
    no_tf32 = get("train", cases.NO_TF32)
    if o and no_tf32:
        train += f"; TF32 off {no_tf32['images_per_s']:.1f} ({o['images_per_s'] / no_tf32['images_per_s']:.2f}x)"
    pipe = next((r for r in rows if r.get("chosen")), None)
    pipeline = f"{pair('pipeline', pipe['variant'])} {pipe['variant']}" if pipe else "-"
    overhead = (f"{100 * t['ticket_overhead']:+.1f}%, paired {100 * t['ticket_overhead_paired']:+.1f}% (mask ops "
                f"{100 * t['mask_ops_fraction']:.1f}%)") if t else "-"
    mo, mb = get("memory", "ours"), get("memory", "baseline")
    memory = "-"
    if mo and mb:
        memory = (f"{_peak(mo['sweep'][-1]):.0f} / {_peak(mb['sweep'][-1]):.0f} {_peak_kind(mo)} at "
                  f"b{mo['sweep'][-1]['batch']}")
        if mo.get("max_batch_est"):
            memory += f"; largest batch est. {mo['max_batch_est']} / {mb['max_batch_est']}"
    ceiling = "-"
    if o and b and o.get("ceiling_fraction") and b.get("ceiling_fraction"):
        ceiling = f"{100 * o['ceiling_fraction']:.0f}% / {100 * b['ceiling_fraction']:.0f}%"
    versions = f"torch {meta['torch']}, torchvision {meta['torchvision']}"
    cells = [meta["date"], meta["device"], versions, meta["config"], train, pair("fgsm"), pair("eval"),
             pipeline, overhead, memory, ceiling]
    return "| " + " | ".join(cells) + " |"


def describe(cfg: BenchConfig) -> dict:
    """The run's context, stored with every JSON line and shown in the summary row."""
    return {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "device": device_name(torch.device(cfg.device)), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version(),
            "config": f"{cfg.arch} {cfg.size}px b{cfg.batch} PGD-{cfg.train_steps} / eval b{cfg.eval_batch} "
                      f"PGD-{cfg.eval_steps}, {100 * cfg.sparsity:.0f}% ticket, amp {cfg.amp or 'fp32'}, "
                      f"{'channels_last' if cfg.channels_last else 'NCHW'}{', compile' if cfg.compile else ''}"}


def run_section(section: str, cfg: BenchConfig, log) -> list[dict]:
    if section == "pipeline":
        return run_pipeline(cfg, log)
    return run_memory(cfg, log) if section == "memory" else run_steps(section, cfg, log)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cfg = config_from_args(args)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(ALL_SECTIONS))
    if unknown:
        raise errors.UserError(f"--sections {args.sections}: unknown {unknown}; choose from {', '.join(ALL_SECTIONS)}")
    meta = describe(cfg)
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)
    log(f"bench on {meta['device']}: {meta['config']}")
    if args.jsonl:
        os.makedirs(os.path.dirname(os.path.abspath(args.jsonl)), exist_ok=True)
    rows = []
    for section in sections:
        new = run_section(section, cfg, log)
        rows += new
        if args.jsonl:  # each section's lines as soon as it ends: a run stopped later keeps them
            with open(args.jsonl, "a") as f:
                f.writelines(json.dumps({**meta, **r}) + "\n" for r in new)
    print_table(rows)
    if args.md:
        with open(args.md, "a") as f:
            f.write(summary_row(rows, meta) + "\n")
    return 0


if __name__ == "__main__":
    errors.run_cli(main)
