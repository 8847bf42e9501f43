"""GPU acceptance check: the CUDA tests, a short ResNet-50 A-IMP run (224 px, bf16) on fabricated ImageFolder images,
a short transfer through the device pipeline, and bench.py at 224 px; one verdict line per item.

    bash script/gpu_check.sh            # ~10 minutes on one GPU; without CUDA: one line, exit 0
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ProcessPoolExecutor

from infra import errors
from infra import hardware

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
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


def get_args_parser() -> argparse.ArgumentParser:
    p = errors.OneLineParser(description="GPU acceptance check (exits 0 with one line where CUDA is absent)")
    p.add_argument("--budget", type=float, default=600, help="seconds for the whole check")
    p.add_argument("--imp-images", type=int, default=160, help="fabricated training images per class (10 classes)")
    p.add_argument("--imp-batch", type=int, default=64)
    p.add_argument("--imp-epochs", type=int, default=8, help="A-IMP epochs (2 per level)")
    p.add_argument("--transfer-images", type=int, default=2000, help="fabricated CIFAR-10 training images")
    p.add_argument("--arch", default="resnet50", help="model of the A-IMP and transfer runs")
    p.add_argument("--size", type=int, default=224, help="image side of the A-IMP and transfer runs")
    p.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"],
                   help="--amp of both runs (cards before compute capability 8.0: fp16)")
    p.add_argument("--work", default=None, help="folder for data and runs (default: a temporary one)")
    p.add_argument("--md", default=os.path.join(ROOT, "BENCHMARKS.md"), help="where bench.py appends its row")
    return p


# ---------------------------------------------------------------------------- fabricated data
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


# ---------------------------------------------------------------------------- items
class Check:
    """Runs the items within one time budget and prints one verdict line per item."""

    def __init__(self, budget: float):
        self.deadline = time.time() + budget
        self.failed = 0

    def left(self) -> float:
        return self.deadline - time.time()

    def verdict(self, ok: bool | None, item: str, detail: str = "") -> None:
        self.failed += ok is False
        word = {True: "PASS", False: "FAIL", None: "SKIP"}[ok]
        detail = " ".join(detail.split())  # one line per item, whatever the message held
        print(f"{word}  {item}" + (f": {detail}" if detail else ""), flush=True)

    def run(self, cmd: list[str], log: str, **kw) -> tuple[int | None, float]:
        """(exit status or None on timeout, seconds); output goes to `log`."""
        start = time.time()
        env = {k: v for k, v in os.environ.items() if k != hardware.PIN}
        with open(log, "w") as out:
            try:
                rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    timeout=max(self.left(), 1), **kw).returncode
            except subprocess.TimeoutExpired:
                rc = None
        return rc, time.time() - start


def _failed(rc: int | None, took: float, log: str) -> str:
    """Why a run failed, with its log's last line (e.g. "error: --amp bf16 needs bf16 units ...")."""
    what = "stopped by the time budget" if rc is None else f"exit {rc}"
    lines = open(log, errors="replace").read().strip().splitlines()
    return f"{what} after {took:.0f}s: {lines[-1][:300] if lines else '(no output)'} (see {log})"


def cuda_tests(check: Check, work: str, path: str = "tests/test_cuda.py") -> None:
    """One verdict per `cuda`-marked test in `path`, read from pytest's JUnit XML report."""
    xml = os.path.join(work, "cuda-tests.xml")
    rc, took = check.run([sys.executable, "-m", "pytest", path, "-m", "cuda", "-p", "no:cacheprovider",
                          f"--junitxml={xml}"], os.path.join(work, "cuda-tests.log"))
    if not os.path.exists(xml):
        return check.verdict(False, "CUDA tests", f"pytest exited {rc} without a report (see {work}/cuda-tests.log)")
    for case in ET.parse(xml).getroot().iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        detail = (bad.get("message") or "")[:300] if bad is not None else \
            (skipped.get("message") or "") if skipped is not None else f"{float(case.get('time', 0)):.1f}s"
        check.verdict(None if skipped is not None else bad is None, f"cuda test {case.get('name')}", detail)
    if rc is None:
        check.verdict(False, "CUDA tests", f"stopped by the time budget after {took:.0f}s")


def aimp_run(check: Check, work: str, args) -> None:
    start = time.time()
    data = fabricate_folder(os.path.join(work, "imagefolder"), args.imp_images, max(2, args.imp_images // 8),
                            args.size)
    made = time.time() - start
    out = os.path.join(work, "aimp")
    rc, took = check.run([sys.executable, "main_imp_adv.py", data, "--save_dir", out, "-b", str(args.imp_batch),
                          "-j", str(min(8, os.cpu_count() or 1)), "--epochs", str(args.imp_epochs),
                          "--prune_epoch", "2", "--lr", "0.01", "-p", "0", *_model_flags(args)],
                         os.path.join(work, "aimp.log"))
    item = f"A-IMP {args.arch} {args.size} px {args.amp} (PGD-3)"
    if rc != 0:
        return check.verdict(False, item, _failed(rc, took, os.path.join(work, "aimp.log")))
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    levels = args.imp_epochs // 2
    tickets = [os.path.exists(os.path.join(out, f"{k}-ticket.pth.tar")) for k in range(1, levels + 2)]
    sparsity = [json.load(open(os.path.join(out, f"{k}-sparsity.json")))["sparsity"] for k in range(1, levels + 2)]
    exact = all(abs(s - (1 - 0.8 ** k)) < 1e-3 for k, s in enumerate(sparsity, 1))
    finite = all(math.isfinite(r["train_loss"]) for r in rows)
    steps = len(rows) * math.ceil(CLASSES * args.imp_images / args.imp_batch)
    speed = CLASSES * args.imp_images * len(rows) / sum(r["time"] for r in rows)
    check.verdict(len(rows) == args.imp_epochs and all(tickets) and exact and finite, item,
                  f"{steps} steps, {levels} level(s), tickets at {', '.join(f'{100 * s:.1f}%' for s in sparsity)}, "
                  f"losses finite {finite}, {speed:.0f} img/s with validation ({made:.0f}s to fabricate data)")


def _model_flags(args) -> list[str]:
    """Model, image size (small images: a small-input stem, no resize) and amp, as both entry points take them."""
    flags = ["--arch", args.arch, "--image-size", str(args.size)]
    flags += ["--small-input", "--resize-size", str(args.size)] if args.size <= 64 else []
    return flags + ([] if args.amp == "none" else ["--amp", args.amp])


def transfer_run(check: Check, work: str, args) -> None:
    from datafiles import fabricate

    data = fabricate.make_cifar10(os.path.join(work, "cifar"), n_train=args.transfer_images,
                                 n_test=max(20, args.transfer_images // 4))
    script = os.path.join(work, "transfer.py")
    with open(script, "w") as f:
        f.write(TRANSFER.format(root=ROOT))
    out = os.path.join(work, "transfer")
    rc, took = check.run([sys.executable, script, "--data", data, "--dataset", "cifar10", "--init", "",
                          "--save_dir", out, "--mode", "adv", "--epochs", "2", "--batch_size", "128",
                          "--train_step", "3", "--test_step", "5", "--pipeline", "device", "--print_freq", "0",
                          *_model_flags(args)], os.path.join(work, "transfer.log"))
    item = f"transfer {args.arch} {args.size} px, device pipeline, PGD-3 training, {args.amp}"
    if rc != 0:
        return check.verdict(False, item, _failed(rc, took, os.path.join(work, "transfer.log")))
    res = json.load(open(os.path.join(out, "results.json")))
    ok = res["complete"] and res["pipeline"] == "device" and res.get("test_precision") == "fp32"
    check.verdict(ok, item, f"{took:.0f}s, pipeline {res['pipeline']}, test in {res.get('test_precision')}, "
                            f"test SA {res['best_sa']['test_sa']:.1f} RA {res['best_sa']['test_ra']:.1f}")


def bench(check: Check, work: str, md: str) -> None:
    probes = [] if check.left() > 300 else ["--no-memory"]  # the peak-memory probes start fresh processes
    rc, took = check.run([sys.executable, "-m", "benchmarks.bench", "--md", md, "--jsonl",
                          os.path.join(work, "bench.jsonl"), *probes], os.path.join(work, "bench.log"))
    tail = open(os.path.join(work, "bench.log")).read().strip().splitlines()[-12:]
    check.verdict(rc == 0, "bench.py 224 px (row appended to BENCHMARKS.md)" if rc == 0 else "bench.py 224 px",
                  f"{took:.0f}s" if rc == 0 else _failed(rc, took, os.path.join(work, "bench.log")))
    if rc == 0:
        print("\n".join(tail), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if not hardware.cuda_usable():
        print("gpu_check: no CUDA device is usable on this machine (or DOUBLEWIN_DEVICE=cpu): nothing to check")
        return 0
    check = Check(args.budget)
    work = args.work or tempfile.mkdtemp(prefix="doublewin-gpu-check-")
    os.makedirs(work, exist_ok=True)
    print(f"gpu_check: work folder {work}, budget {args.budget:.0f}s", flush=True)
    items = (("CUDA tests", lambda: cuda_tests(check, work)), ("A-IMP", lambda: aimp_run(check, work, args)),
             ("transfer", lambda: transfer_run(check, work, args)), ("bench", lambda: bench(check, work, args.md)))
    for name, item in items:
        if check.left() < 30:
            check.verdict(None, name, "no time left in the budget")
            continue
        item()
    print(f"gpu_check: {'all items passed' if not check.failed else f'{check.failed} item(s) failed'}", flush=True)
    return 1 if check.failed else 0


if __name__ == "__main__":
    errors.run_cli(main)
