"""infra/distributed.py on CPU: the spawn path's error handling, exact evaluation shards, ranks and devices under
torchrun / srun (fake environments and device counts), the process group's timeout, and validation under DDP."""
from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess

import pytest
import torch

from infra import distributed
from training import engine
from infra import hardware
import models
from infra.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bad_worker(env, payload):
    raise UserError(f"--init {payload} not found: check the path")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_user_error_on_a_spawned_rank_is_one_line_and_exit_2(capfd):
    opts = distributed.Launch(dist_url=f"tcp://127.0.0.1:{_free_port()}", dist_backend="gloo")
    with pytest.raises(torch.multiprocessing.ProcessExitedException) as info:
        torch.multiprocessing.spawn(distributed._spawned, nprocs=1, args=(_bad_worker, "w.pth", 1, 1, 0, opts))
    assert info.value.exit_code == 2
    err = capfd.readouterr().err
    assert "error: --init w.pth not found: check the path" in err and "Traceback" not in err


@pytest.mark.parametrize("n,world", [(9, 2), (10, 3), (2, 4), (0, 2)])
def test_shard_sampler_covers_every_sample_exactly_once(n, world):
    shards = [list(distributed.ShardSampler(n, distributed.DistEnv(rank=r, world_size=world))) for r in range(world)]
    flat = sorted(i for s in shards for i in s)
    assert flat == list(range(n))
    assert [len(s) for s in shards] == [len(distributed.ShardSampler(n, distributed.DistEnv(rank=r, world_size=world)))
                                        for r in range(world)]


def test_single_process_collectives_are_identity():
    env = distributed.DistEnv()
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(distributed.all_reduce_sum(t.clone(), env), t)
    mask = {"a.weight": torch.tensor([True, False])}
    assert distributed.broadcast_mask(mask, env) is mask
    assert env.is_main and env.describe() == "one process on cpu"


# ---------------------------------------------------------------------------- ranks and devices under schedulers
SRUN = {"SLURM_STEP_ID": "0", "SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
        "SLURM_JOB_ID": "123456", "SLURM_STEP_NODELIST": "gpu[07-08]"}


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"WORLD_SIZE": "1"}, None),
    ({"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "1"}, distributed.Ranks(0, 1, 0, "torchrun")),
    ({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", **SRUN}, distributed.Ranks(5, 8, 1, "torchrun")),
    (SRUN, distributed.Ranks(3, 4, 1, "srun", "tcp://gpu07:18456")),
    ({**SRUN, "MASTER_ADDR": "head", "MASTER_PORT": "29500"}, distributed.Ranks(3, 4, 1, "srun", "tcp://head:29500")),
    ({k: v for k, v in SRUN.items() if k != "SLURM_STEP_ID"}, None),  # sbatch's own shell: one process
    ({**SRUN, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, None),
])
def test_ranks_come_from_torchrun_or_srun(environ, expected):
    assert distributed.ranks_from_env(environ) == expected


@pytest.mark.parametrize("nodes, first", [("gpu[07-09,12],cpu1", "gpu07"), ("node5", "node5"),
                                          ("a-[3,5]-ib,b", "a-3-ib"), ("n[001-004]", "n001"), ("x,y", "x"),
                                          ("rack[1-2]-node[01-04],z", "rack1-node01")])
def test_first_host_of_a_slurm_node_list(nodes, first):
    assert distributed.first_host(nodes) == first


def test_first_process_follows_the_launchers_rank(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "LOCAL_RANK", *SRUN):
        monkeypatch.delenv(k, raising=False)
    assert distributed.first_process(distributed.Launch())
    assert not distributed.first_process(distributed.Launch(world_size=2, rank=1))
    for k, v in SRUN.items():
        monkeypatch.setenv(k, v)
    assert not distributed.first_process(distributed.Launch())  # task 3 of srun: every task runs main()
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert distributed.first_process(distributed.Launch())


@pytest.fixture
def gpus(monkeypatch):
    """`n` visible fake CUDA devices; returns the list of set_device calls (nothing runs on them)."""
    chosen: list[int] = []

    def use(n: int) -> list[int]:
        monkeypatch.delenv(hardware.PIN, raising=False)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
        return chosen
    return use


def test_the_local_rank_is_taken_modulo_the_visible_gpus(gpus):
    chosen = gpus(1)  # SLURM --gpus-per-task / Kubernetes: each task sees its own single GPU
    assert [distributed._device(r) for r in (0, 1, 3)] == [torch.device("cuda", 0)] * 3 and chosen == [0, 0, 0]
    gpus(4)
    assert distributed._device(6) == torch.device("cuda", 2)
    with pytest.raises(UserError, match="--gpu 4: this machine shows 4 GPU"):
        distributed._device(4, flag="--gpu")


def test_pinned_cpu_ignores_visible_gpus(gpus, monkeypatch):
    gpus(2)
    monkeypatch.setenv(hardware.PIN, "cpu")
    assert distributed._device(1) == torch.device("cpu") and distributed._backend("nccl") == "gloo"


def test_process_group_waits_long_enough_and_binds_its_gpu(gpus, monkeypatch):
    gpus(2)
    seen: dict = {}
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: seen.update(kw))
    env = distributed._init(3, 4, 1, "tcp://h:1", "nccl", 1)
    assert env.device == torch.device("cuda", 1) and env.backend == "nccl"
    assert seen["device_id"] == torch.device("cuda", 1) and seen["timeout"] >= datetime.timedelta(minutes=30)
    gpus(0)
    distributed._init(0, 2, 0, "tcp://h:1", "nccl", 0)
    assert seen["backend"] == "gloo" and seen["device_id"] is None


def test_srun_without_torchrun_makes_a_group_of_the_slurm_tasks(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in SRUN.items():
        monkeypatch.setenv(k, v)
    seen: dict = {}
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: seen.update(kw))
    envs: list = []
    line = distributed.launch(lambda env, payload: envs.append(env), None,
                              distributed.Launch(multiprocessing_distributed=True))
    assert line == "srun: 4 processes" and envs[0].rank == 3 and envs[0].world_size == 4
    assert (seen["init_method"], seen["rank"], seen["world_size"]) == ("tcp://gpu07:18456", 3, 4)


# ---------------------------------------------------------------------------- validation under DDP
def _validate(env, payload):
    """Rank r's model differs from rank 0's in its BatchNorm statistics only (as after a DDP epoch)."""
    data, out = payload
    torch.manual_seed(0)
    net = models.build("resnet_tiny", 3)
    net.train()
    with torch.no_grad():
        net(torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(env.rank)) * (1 + 3 * env.rank))
    if env.is_main:
        torch.save(net.state_dict(), os.path.join(out, "rank0.pth"))
    loader = torch.utils.data.DataLoader(data, batch_size=4, sampler=distributed.ShardSampler(len(data), env))
    stats = engine.evaluate(net, loader, engine.Step(env, show_progress=False))
    with open(os.path.join(out, f"rank{env.rank}.json"), "w") as f:
        json.dump(stats, f)


@pytest.mark.slow
def test_validation_on_two_ranks_measures_rank_0s_model(tmp_path):
    """Each rank validates its shard; the sum must be the numbers of the model rank 0 saves (its buffers), as
    validating through DDP gave."""
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.rand(11, 3, 32, 32, generator=g), torch.arange(11) % 3)
    opts = distributed.Launch(dist_url=f"tcp://127.0.0.1:{_free_port()}", dist_backend="gloo")
    torch.multiprocessing.spawn(distributed._spawned, nprocs=2, args=(_validate, (data, str(tmp_path)), 2, 2, 0, opts))
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1)]
    net = models.build("resnet_tiny", 3)
    net.load_state_dict(torch.load(tmp_path / "rank0.pth", weights_only=True))
    whole = engine.evaluate(net, torch.utils.data.DataLoader(data, batch_size=4), engine.Step(show_progress=False))
    assert ranks[0] == ranks[1] and ranks[0]["n"] == 11
    assert ranks[0]["top1"] == whole["top1"] and ranks[0]["loss"] == pytest.approx(whole["loss"], rel=1e-6)


# ---------------------------------------------------------------------------- the rendezvous of a spawned run
def test_auto_rendezvous_is_chosen_per_run():
    auto = distributed.Launch(multiprocessing_distributed=True)
    assert auto.dist_url == distributed.AUTO
    assert distributed.rendezvous(auto, 1, {}) is None  # one node: the parent hosts it on a free port
    assert distributed.rendezvous(auto, 1, SRUN) is None  # also inside a SLURM job: another job may share the node
    job = {"SLURM_JOB_ID": "123456", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    assert distributed.rendezvous(auto, 2, job) == "tcp://gpu07:18456"  # every node derives the same one
    given = distributed.Launch(dist_url="tcp://head:29500")
    assert distributed.rendezvous(given, 2, {}) == distributed.rendezvous(given, 1, job) == "tcp://head:29500"
    with pytest.raises(UserError, match="--dist-url auto cannot choose a rendezvous that 2 nodes agree on"):
        distributed.rendezvous(auto, 2, {})


@pytest.mark.slow
def test_two_imp_stages_started_at_once_on_one_node_both_complete(image_folder_root, tmp_path):
    """Two IMP drivers started together on this machine, each spawning two ranks (`--multiprocessing-distributed`
    with two counted GPUs; the ranks run on the CPU with gloo): each run's rendezvous is its own, so both end
    (with the drivers' former fixed tcp://127.0.0.1:4356 the second stage's ranks met the first's and hung)."""
    import fakegpus
    from recipes import TINY, write_init
    init = write_init(str(tmp_path / "init.pth"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DOUBLEWIN_PY": fakegpus.wrapper(str(tmp_path / "python"), 2)}
    script = os.path.join(ROOT, "script", "imp_pretrain", "imp_std.sh")
    procs = [subprocess.Popen(["bash", script, init, str(tmp_path / f"stage{i}"), image_folder_root, *TINY,
                               "--epochs", "1", "--prune_epoch", "1"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True) for i in (1, 2)]
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
    for i, (p, out) in enumerate(zip(procs, outputs), 1):
        assert p.returncode == 0, out[-3000:]
        log = open(tmp_path / f"stage{i}" / "log.txt").read()
        assert "--multiprocessing-distributed: 2 GPU processes on this node" in log
        assert "rank 0/2 on cpu (gloo)" in log and "level 2: mask digest" in log and "on rank(s) 0, 1" in log
        assert os.path.exists(tmp_path / f"stage{i}" / "2-ticket.pth.tar")
