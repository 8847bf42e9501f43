"""CUDA-path checks that CPU PyTorch can show with monkeypatched torch.cuda: more local processes than GPUs is refused
in one line naming both counts, --amp bf16 is checked on each rank's own GPU, IMP --evaluate measures in fp32, and
a run given a GPU that CUDA cannot use stops at once (exit 3) instead of training on the CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import main_imp_adv
from infra import paths, distributed, hardware
from infra.distributed import DistEnv, Launch
from infra.errors import ConfigError, NodeError, UserError
from recipes import argv, imp_argv, write_init
from training import engine, runner

TORCHRUN = {"TORCHELASTIC_RUN_ID": "x", "RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}


@pytest.fixture
def gpus(monkeypatch):
    """`n` visible CUDA devices of the given compute capabilities (nothing runs on them)."""
    def use(*capabilities: tuple[int, int]) -> None:
        monkeypatch.delenv(hardware.PIN, raising=False)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
        monkeypatch.setattr(torch.cuda, "set_device", lambda idx: None)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capabilities[torch.device(d).index])
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: f"card{torch.device(d).index}")
    return use


# ---------------------------------------------------------------------------- local processes and GPUs
def test_more_torchrun_processes_on_a_node_than_gpus_is_refused(gpus, monkeypatch):
    gpus((8, 0), (8, 0))
    for k, v in {**TORCHRUN, "LOCAL_WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(k, v)
    started = []
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: started.append(kw))
    with pytest.raises(UserError, match=r"^4 processes on this node but it shows 2 GPU\(s\): two would share a GPU; "
                                        r"start at most 2 per node \(torchrun --nproc_per_node 2\)$"):
        distributed.launch(lambda env, payload: None, None, Launch())
    assert started == []  # refused before NCCL could meet the duplicate
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    seen = []
    distributed.launch(lambda env, payload: seen.append(env.device), None, Launch())
    assert seen == [torch.device("cuda", 0)] and started[0]["backend"] == "nccl"


def test_the_local_world_comes_from_torchrun_only():
    assert distributed.ranks_from_env({**TORCHRUN, "LOCAL_WORLD_SIZE": "4"}).local_world == 4
    srun = {"SLURM_STEP_ID": "0", "SLURM_NTASKS": "4", "SLURM_PROCID": "1", "SLURM_LOCALID": "1"}
    assert distributed.ranks_from_env(srun).local_world is None  # --gpus-per-task: each task its own GPU


# ---------------------------------------------------------------------------- bf16 on each rank's device
def test_bf16_is_checked_on_the_ranks_own_gpu(gpus, tmp_path):
    gpus((8, 0), (7, 0))
    ran = []

    class Cfg:
        save_dir, deterministic, tf32, amp = str(tmp_path), False, True, "bf16"

    runner.in_worker(lambda env, cfg: ran.append(env.device), DistEnv(device=torch.device("cuda", 0)), Cfg)
    assert ran == [torch.device("cuda", 0)]
    with pytest.raises(ConfigError, match=r"--amp bf16 needs bf16 units .*card1 has 7\.0"):
        runner.in_worker(lambda env, cfg: ran.append(env.device), DistEnv(rank=1, device=torch.device("cuda", 1)),
                         Cfg)
    assert ran == [torch.device("cuda", 0)]
    Cfg.amp = "fp16"
    runner.in_worker(lambda env, cfg: ran.append(env.device), DistEnv(rank=1, device=torch.device("cuda", 1)), Cfg)
    assert ran[-1] == torch.device("cuda", 1)


# ---------------------------------------------------------------------------- IMP --evaluate precision
def test_imp_evaluate_measures_in_fp32_under_amp(_fake_files, tmp_path, monkeypatch):
    """A bf16 run's -e measures SA and RA in fp32 (CPU autocast stands in for the GPU's), as transfer's final test."""
    monkeypatch.setattr(hardware, "check_amp", lambda amp, device=None: None)
    calls = []
    plain = engine.evaluate

    def spy(model, loader, run, **kw):
        calls.append((kw["desc"], run.amp))
        return plain(model, loader, run, **kw)
    monkeypatch.setattr(engine, "evaluate", spy)
    init = write_init(str(tmp_path / "init.pth"))
    out = tmp_path / "eval"
    assert main_imp_adv.main(imp_argv(_fake_files("folder"), init, str(out), "-e", "--amp", "bf16")) == 0
    assert calls == [("eval", None), ("eval (attack)", None)]
    assert set(json.load(open(os.path.join(out, paths.EVALUATION)))) >= {"sa_top1", "ra_top1"}


@pytest.mark.parametrize("environ, gpu, given", [
    ({"CUDA_VISIBLE_DEVICES": "0"}, None, "CUDA_VISIBLE_DEVICES=0"),
    ({"SLURM_JOB_GPUS": "2,3"}, None, "SLURM_JOB_GPUS=2,3"),
    ({}, 1, "--gpu 1"),
    ({"CUDA_VISIBLE_DEVICES": "0", hardware.PIN: "cpu"}, None, None),   # the CPU asked for on purpose
    ({"CUDA_VISIBLE_DEVICES": ""}, None, None),                         # GPUs hidden: a CPU run
    ({"CUDA_VISIBLE_DEVICES": "-1"}, None, None),
    ({}, None, None),
])
def test_a_gpu_given_but_unusable_is_a_node_error(monkeypatch, environ, gpu, given):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if given is None:
        hardware.check_gpus_given(environ, gpu)
        return
    with pytest.raises(NodeError, match=f"given a GPU \\({given}\\) but CUDA cannot use it.*not train on the CPU"):
        hardware.check_gpus_given(environ, gpu)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    hardware.check_gpus_given(environ, gpu)  # a working GPU: nothing to say


@pytest.mark.slow
def test_a_run_given_a_gpu_that_is_not_there_stops_in_one_line_with_exit_3(tmp_path, cifar10_root, pretrained):
    """GPU 99 exists on no machine: the run stops before touching SAVE_DIR, with one line and the node-error
    status that tells a scheduler to try elsewhere, instead of training for hours on the CPU."""
    save = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != hardware.PIN}
    cmd = [sys.executable, "main_train_downstream.py", *argv(str(save), cifar10_root, "cifar10", pretrained.init)]
    out = subprocess.run(cmd, env={**env, "CUDA_VISIBLE_DEVICES": "99"}, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=120)
    assert out.returncode == 3, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: this process was given a GPU (CUDA_VISIBLE_DEVICES=99)")
    assert not save.exists()
