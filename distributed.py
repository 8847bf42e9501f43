"""Process-group set-up (torchrun env://, the original --multiprocessing-distributed spawn, or one process),
exact metric reduction across ranks, and samplers that never count an evaluation sample twice."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from errors import UserError, one_line


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    distributed: bool = False
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        if not self.distributed:
            return f"one process on {self.device}"
        return f"rank {self.rank}/{self.world_size} on {self.device} ({self.backend})"


@dataclass(frozen=True)
class Launch:
    """What the original's distributed flags mean on this machine."""
    gpu: int | None = None
    dist_url: str = "env://"
    dist_backend: str = "nccl"
    world_size: int = -1
    rank: int = -1
    multiprocessing_distributed: bool = False


def _backend(requested: str) -> str:
    # nccl needs CUDA; the unchanged GPU scripts fall back to gloo on a CPU machine
    return requested if torch.cuda.is_available() else "gloo"


def _device(local_rank: int | None) -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    idx = 0 if local_rank is None else local_rank
    torch.cuda.set_device(idx)
    return torch.device("cuda", idx)


def _init(rank: int, world: int, local_rank: int, url: str, backend: str, device_gpu: int | None) -> DistEnv:
    backend = _backend(backend)
    dev = _device(device_gpu)
    dist.init_process_group(backend=backend, init_method=url, world_size=world, rank=rank)
    return DistEnv(rank, world, local_rank, dev, True, backend)


def launch(worker: Callable[[DistEnv, Any], None], payload: Any, opts: Launch) -> str:
    """Run `worker(env, payload)` in the process layout the flags ask for; returns a one-line description."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and opts.dist_url == "env://" \
            or "TORCHELASTIC_RUN_ID" in os.environ:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if world == 1:
            worker(DistEnv(device=_device(local if torch.cuda.is_available() else None)), payload)
            return "torchrun with one process"
        worker(_init(rank, world, local, "env://", opts.dist_backend, local), payload)
        return f"torchrun: {world} processes"
    ngpus = torch.cuda.device_count()
    if opts.multiprocessing_distributed:
        if ngpus == 0:
            worker(DistEnv(), payload)
            return "--multiprocessing-distributed asked for one process per GPU, but no GPU is visible: one CPU process"
        nodes = max(opts.world_size, 1)
        world = ngpus * nodes
        try:
            torch.multiprocessing.spawn(_spawned, nprocs=ngpus,
                                        args=(worker, payload, ngpus, world, max(opts.rank, 0), opts))
        except torch.multiprocessing.ProcessExitedException as e:
            if e.exit_code == 2:  # a user error, already reported as one line by the rank that met it
                raise SystemExit(2) from None
            raise
        return f"--multiprocessing-distributed: {ngpus} GPU processes on this node, {world} in all"
    if opts.world_size > 1:
        local = opts.gpu if opts.gpu is not None else 0
        worker(_init(opts.rank, opts.world_size, local, opts.dist_url, opts.dist_backend, opts.gpu), payload)
        return f"process {opts.rank} of {opts.world_size}"
    worker(DistEnv(device=_device(opts.gpu)), payload)
    return "one process on " + ("GPU" if torch.cuda.is_available() else "CPU")


def _spawned(i: int, worker, payload, ngpus: int, world: int, node_rank: int, opts: Launch) -> None:
    env = _init(node_rank * ngpus + i, world, i, opts.dist_url, opts.dist_backend, i)
    try:
        worker(env, payload)
    except UserError as e:  # one line and exit 2, as errors.run_cli does in a single process
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        cleanup(env)


def cleanup(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------- collectives
def all_reduce_sum(t: torch.Tensor, env: DistEnv | None) -> torch.Tensor:
    if env is not None and env.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_(t: torch.Tensor, env: DistEnv | None, src: int = 0) -> torch.Tensor:
    if env is not None and env.distributed:
        dist.broadcast(t, src=src)
    return t


def barrier(env: DistEnv | None) -> None:
    if env is not None and env.distributed:
        dist.barrier()


def broadcast_mask(mask: dict[str, torch.Tensor], env: DistEnv | None) -> dict[str, torch.Tensor]:
    """Make every rank hold rank 0's mask (masks are computed once, on the main rank)."""
    if env is None or not env.distributed:
        return mask
    out = {}
    for name in sorted(mask):
        t = mask[name].to(env.device, torch.uint8)
        dist.broadcast(t, src=0)
        out[name] = t.bool()
    return {k: out[k] for k in mask}


# ---------------------------------------------------------------------------- samplers
class ShardSampler(Sampler[int]):
    """Rank r takes indices r, r+W, r+2W, ...: every sample exactly once over all ranks (no padding)."""

    def __init__(self, n: int, env: DistEnv):
        self.indices = list(range(env.rank, n, env.world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def wrap_model(model: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    if not env.distributed:
        return model
    ids = [env.device.index] if env.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
