"""benchmarks/gpu_check.py on CPU: one line and exit 0 without CUDA; the budget gives each item a slice, passes unused
time on and skips (saying so) what no longer fits; gpu_check.json is rewritten after every verdict; the items run
small here (the GPU runs them at 224 px with ResNet-50 and bf16) and give their verdicts and numbers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import dataset
import forkserver
from benchmarks import gpu_check, gpu_items

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--arch", "resnet_tiny", "--size", "32", "--amp", "none", "--bench-batch", "8", "--imp-images", "4",
         "--imp-batch", "20", "--imp-epochs", "2", "--transfer-images", "40"]


@pytest.mark.slow
def test_without_cuda_one_line_exit_0_and_nothing_written(capsys, tmp_path):
    assert gpu_check.main(["--out", str(tmp_path / "out"), *SMALL]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "no CUDA device is usable" in out and not (tmp_path / "out").exists()
    env = {**os.environ, "DOUBLEWIN_PY": sys.executable}
    done = subprocess.run(["bash", os.path.join(ROOT, "script", "gpu_check.sh"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and done.stdout.count("\n") == 1 and "nothing to check" in done.stdout, done.stderr
    assert not (tmp_path / "out").exists()


def test_help_documents_the_order_the_budget_and_what_dir_receives():
    text = gpu_check.get_args_parser().format_help()
    names = [item.name for item in gpu_check.ITEMS]
    assert names == ["speed", "memory", "ticket", "ddp", "aimp", "transfer", "fp16", "cuda-tests"]
    assert [text.index(f"{k}. {name}") for k, name in enumerate(names, 1)] == sorted(
        text.index(f"{k}. {name}") for k, name in enumerate(names, 1))
    assert "default 540" in text and "gpu_check.json" in text and "benchmarks_row.md" in text
    assert sum(item.share for item in gpu_check.ITEMS) == pytest.approx(1.0)


# ---------------------------------------------------------------------------- the budget and the record
class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _item(name: str, took: float, clock: Clock, seen: list, out, least: float = 10, fail: bool = False):
    def run(check, ctx, limit):
        seen.append((name, limit, [i["item"] for i in json.load(open(out / "gpu_check.json"))["items"]]))
        clock.now += took
        if fail:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        check.verdict(True, name, f"{took:.0f}s", {"took": took})
    return gpu_check.Item(name, 1.0, least, run)


def test_the_budget_passes_unused_time_on_and_skips_what_no_longer_fits(tmp_path, capsys):
    clock, seen, out = Clock(), [], tmp_path / "out"
    plan = [_item("a", 5, clock, seen, out), _item("b", 100, clock, seen, out, fail=True),
            _item("c", 1, clock, seen, out, least=30), _item("d", 1, clock, seen, out, least=5)]
    check = gpu_check.Check(str(out), 160, {"card": "fake"}, clock=clock)
    gpu_check.run_items(check, None, plan)
    # slices end at 40, 80, 120, 160 s: a ends at 5 s, so b may run 75 s; b overruns to 105 s: 15 s is left of c's
    # slice (needs 30: skipped) and 55 s of d's
    assert seen == [("a", 40, []), ("b", 75, ["a"]), ("d", 55, ["a", "b", "c"])]
    record = json.load(open(out / "gpu_check.json"))
    assert [(i["item"], i["verdict"]) for i in record["items"]] == [("a", "PASS"), ("b", "FAIL"), ("c", "SKIP"),
                                                                    ("d", "PASS")]
    assert "RuntimeError: CUDA error: an illegal memory access" in record["items"][1]["detail"]
    assert record["items"][2]["detail"] == "skipped: 15s of its slice left, it needs ~30s"
    assert record["finished"] and record["card"] == "fake" and record["items"][0]["numbers"] == {"took": 5}
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "PASS  a: 5s" and lines[2].startswith("SKIP  c: skipped")


def test_a_subprocess_item_is_stopped_at_its_slice_with_its_children(tmp_path):
    check = gpu_check.Check(str(tmp_path), 60, {})
    pid_file = tmp_path / "child.pid"
    start = time.time()
    rc, took = check.run(["bash", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], check.log("sleepy"), limit=1)
    assert rc is None and took < 10 and time.time() - start < 10
    child = int(pid_file.read_text())
    time.sleep(0.2)
    assert forkserver.gone(child)  # the background sleep went with the group
    assert gpu_items._failed(rc, took, check.log("sleepy")).startswith(f"stopped at the end of its slice after "
                                                                       f"{took:.0f}s: (no output) (see ")


def test_a_failed_run_names_its_last_log_line(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("starting\nerror: --amp bf16 needs bf16 units (compute capability 8.0+); Tesla V100 has 7.0\n")
    assert gpu_items._failed(2, 3.2, str(log)) == (f"exit 2 after 3s: error: --amp bf16 needs bf16 units (compute "
                                                   f"capability 8.0+); Tesla V100 has 7.0 (see {log})")


# ---------------------------------------------------------------------------- the items, small, on CPU
def _context(tmp_path) -> tuple[gpu_check.Check, gpu_items.Context]:
    args = gpu_check.get_args_parser().parse_args(SMALL)
    return gpu_check.Check(str(tmp_path / "out"), 600, {}), gpu_items.Context(args, str(tmp_path / "work"))


@pytest.mark.slow
def test_the_benchmark_items_write_their_numbers_and_the_row(tmp_path, capsys, frozen_gc):
    check, ctx = _context(tmp_path)
    os.makedirs(ctx.work)
    for item in (gpu_items.speed, gpu_items.memory, gpu_items.ticket):
        item(check, ctx, 60)
    record = json.load(open(tmp_path / "out" / "gpu_check.json"))
    assert [(i["item"], i["verdict"]) for i in record["items"]] == [("speed", "PASS"), ("memory", "PASS"),
                                                                    ("ticket", "PASS")]
    speed, memory, ticket = (i["numbers"] for i in record["items"])
    assert set(speed) == {"baseline", "ours", "ours-plain"} and speed["ours"]["images_per_s"] > 0
    assert [p["batch"] for p in memory["ours"]["sweep"]] == [2, 4, 8] and memory["card_mib"] is None
    assert "ticket_overhead_paired" in ticket
    row = (tmp_path / "out" / "benchmarks_row.md").read_text()
    assert row.count("\n") == 1 and row.count(" | ") == 10 and "peak RSS" not in row and "process RSS at b8" in row
    assert len((tmp_path / "out" / "bench.jsonl").read_text().splitlines()) == 3 + 2 + 2
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("PASS  speed: ours") and "the original's fp32 way" in out[0]


@pytest.mark.slow
def test_the_run_items_give_verdicts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the runs' processes: idle OpenMP threads spin on a busy machine
    check, ctx = _context(tmp_path)
    os.makedirs(ctx.work)
    gpu_items.aimp(check, ctx, 600)
    gpu_items.transfer(check, ctx, 600)
    gpu_items.ddp(check, ctx, 600)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("PASS  aimp: resnet_tiny 32 px none") and "1 level(s), tickets at 20.0%, 36.0%," in out[0]
    assert out[1].startswith("PASS  transfer: resnet_tiny") and "test in fp32" in out[1]
    # without a usable GPU the ddp item's run, given GPU 0, refuses to train on the CPU: the item must not pass
    assert out[2].startswith("FAIL  ddp: exit 3") and "CUDA cannot use it" in out[2]


def test_fabricated_folder_is_an_imagenet_layout(tmp_path):
    root = gpu_items.fabricate_folder(str(tmp_path), n_train=2, n_val=1, size=40)
    splits = dataset.build_datasets("imagenet", root, image_size=32, resize_size=40)
    assert (len(splits.train), len(splits.val), splits.num_classes) == (20, 10, 10)
    assert splits.train[0][0].shape == (3, 32, 32)


FAKE_CUDA_TESTS = """import pytest
pytestmark = pytest.mark.cuda
def test_ok(): pass
def test_broken(): assert 1 == 2, "the kernel refused"
@pytest.mark.skip(reason="needs 2 GPUs")
def test_two(): pass
"""


def test_one_verdict_per_cuda_test(tmp_path, capsys):
    tests = tmp_path / "test_fake_cuda.py"
    tests.write_text(FAKE_CUDA_TESTS)
    check, ctx = _context(tmp_path)
    gpu_items.cuda_tests(check, ctx, 120, str(tests))
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["PASS  cuda test test_ok", "FAIL  cuda test test_broken",
                                                     "SKIP  cuda test test_two"]
    assert "the kernel refused" in out[1] and "needs 2 GPUs" in out[2] and check.failed == 1
    record = json.load(open(tmp_path / "out" / "gpu_check.json"))
    assert [i["verdict"] for i in record["items"]] == ["PASS", "FAIL", "SKIP"]


@pytest.mark.slow
def test_images_are_fabricated_in_a_process_of_their_own_and_a_failure_is_the_verdict(tmp_path, capsys):
    check, _ = _context(tmp_path)
    assert gpu_items._folder(check, "aimp", str(tmp_path / "folder"), (1, 1, 8), 60)[0]
    assert sorted(os.listdir(tmp_path / "folder" / "train")) == [f"class{k}" for k in range(10)]
    (tmp_path / "file").write_text("")
    assert not gpu_items._folder(check, "aimp", str(tmp_path / "file" / "folder"), (1, 1, 8), 60)[0]
    out = capsys.readouterr().out.splitlines()
    assert out == [out[0]] and out[0].startswith("FAIL  aimp: fabricating its images: exit 1 after")
    assert "NotADirectoryError" in out[0] and check.failed == 1
