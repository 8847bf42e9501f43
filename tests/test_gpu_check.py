"""benchmarks/gpu_check.py on CPU: one line and exit 0 without CUDA, the A-IMP and transfer items run small (the
GPU runs them at 224 px with ResNet-50 and bf16), and one verdict per CUDA test from pytest's report."""
from __future__ import annotations

import os
import subprocess

import pytest

import dataset
from benchmarks import gpu_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--arch", "resnet_tiny", "--size", "32", "--amp", "none", "--imp-images", "4", "--imp-batch", "20",
         "--imp-epochs", "2", "--transfer-images", "40"]


def test_without_cuda_one_line_and_exit_0(capsys):
    assert gpu_check.main(SMALL) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "no CUDA device is usable" in out
    done = subprocess.run(["bash", os.path.join(ROOT, "script", "gpu_check.sh")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.count("\n") == 1 and "nothing to check" in done.stdout


def test_fabricated_folder_is_an_imagenet_layout(tmp_path):
    root = gpu_check.fabricate_folder(str(tmp_path), n_train=2, n_val=1, size=40)
    splits = dataset.build_datasets("imagenet", root, image_size=32, resize_size=40)
    assert (len(splits.train), len(splits.val), splits.num_classes) == (20, 10, 10)
    assert splits.train[0][0].shape == (3, 32, 32)


@pytest.mark.slow
def test_items_run_and_give_verdicts(tmp_path, capsys):
    args = gpu_check.get_args_parser().parse_args(SMALL)
    check = gpu_check.Check(600)
    gpu_check.aimp_run(check, str(tmp_path), args)
    gpu_check.transfer_run(check, str(tmp_path), args)
    out = capsys.readouterr().out.splitlines()
    assert check.failed == 0, "\n".join(out) + open(tmp_path / "aimp.log").read()[-2000:]
    assert out[0].startswith("PASS  A-IMP resnet_tiny 32 px none") and "1 level(s), tickets at 20.0%, 36.0%," in out[0]
    assert out[1].startswith("PASS  transfer resnet_tiny") and "test in fp32" in out[1]


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
    check = gpu_check.Check(120)
    gpu_check.cuda_tests(check, str(tmp_path), str(tests))
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["PASS  cuda test test_ok", "FAIL  cuda test test_broken",
                                                     "SKIP  cuda test test_two"]
    assert "the kernel refused" in out[1] and "needs 2 GPUs" in out[2] and check.failed == 1


def test_a_failed_run_names_its_last_log_line(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("starting\nerror: --amp bf16 needs bf16 units (compute capability 8.0+); Tesla V100 has 7.0\n")
    assert gpu_check._failed(2, 3.2, str(log)) == (f"exit 2 after 3s: error: --amp bf16 needs bf16 units (compute "
                                                   f"capability 8.0+); Tesla V100 has 7.0 (see {log})")
    assert gpu_check._failed(None, 600, str(log)).startswith("stopped by the time budget after 600s: error:")
