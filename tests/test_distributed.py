"""distributed.py pieces that run on one CPU: the spawn path's error handling and the exact evaluation shards."""
from __future__ import annotations

import socket

import pytest
import torch

import distributed
from errors import UserError


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
