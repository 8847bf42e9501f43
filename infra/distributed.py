"""Process-group set-up (torchrun, srun's SLURM ranks, the original --multiprocessing-distributed spawn, or one
process), exact metric reduction across ranks, and samplers that never count an evaluation sample twice."""
from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from infra.errors import UserError, one_line
from infra.flags import flag
from infra.hardware import cuda_usable


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


LAUNCH_GROUP = "distributed (the original's flags; torchrun works too)"


def _launch_flag(names: str, default: Any, help: str, **options) -> Any:
    return flag(names, default, help, group=LAUNCH_GROUP, result=False, **options)


@dataclass(frozen=True)
class Launch:
    """What the original's distributed flags mean on this machine (the process layout: it changes no result)."""
    gpu: int | None = _launch_flag("--gpu", None, "GPU id for a one-process run", type=int)
    dist_url: str = _launch_flag("--dist-url", "auto", "url of the process group rendezvous; auto: chosen per run "
                                 "(one node: a free port of this node; several nodes under SLURM: the first node "
                                 "and a port derived from the job id; torchrun and srun: their own)")
    dist_backend: str = _launch_flag("--dist-backend", "nccl", "nccl (gloo is used when no GPU is visible)")
    world_size: int = _launch_flag("--world-size", -1, "number of nodes (processes without "
                                   "--multiprocessing-distributed)", type=int)
    rank: int = _launch_flag("--rank", -1, "node rank (process rank without --multiprocessing-distributed)",
                             type=int)
    multiprocessing_distributed: bool = _launch_flag(
        "--multiprocessing-distributed", False, "one process per GPU on this node (one CPU process when no GPU "
        "is visible)")


AUTO = "auto"  # --dist-url: the rendezvous chosen per run (`rendezvous`), so two runs on one node never collide

# NCCL's default 10 minutes is shorter than rank 0's --download of a data set while the others wait in a barrier
TIMEOUT = datetime.timedelta(minutes=60)


@dataclass(frozen=True)
class Ranks:
    """This process's place in a run whose processes a launcher started (torchrun, or srun without torchrun)."""
    rank: int
    world_size: int
    local_rank: int
    launcher: str                        # "torchrun" or "srun"
    url: str = "env://"                  # the rendezvous
    local_world: int | None = None       # processes on this node that see the same GPUs (torchrun's); None: unknown


def ranks_from_env(environ: Mapping[str, str]) -> Ranks | None:
    """torchrun's RANK / WORLD_SIZE / LOCAL_RANK, else SLURM's SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID in a
    step of several tasks started by srun (SLURM_STEP_ID set; a batch script's own shell is one process);
    None for one process. srun's tasks may each see their own GPUs (--gpus-per-task), so their local world is
    left unknown."""
    if "TORCHELASTIC_RUN_ID" in environ or int(environ.get("WORLD_SIZE", "1")) > 1:
        local_world = environ.get("LOCAL_WORLD_SIZE")
        return Ranks(int(environ.get("RANK", "0")), int(environ.get("WORLD_SIZE", "1")),
                     int(environ.get("LOCAL_RANK", "0")), "torchrun",
                     local_world=int(local_world) if local_world else None)
    if "SLURM_STEP_ID" in environ and int(environ.get("SLURM_NTASKS", "1")) > 1:
        return Ranks(int(environ["SLURM_PROCID"]), int(environ["SLURM_NTASKS"]),
                     int(environ.get("SLURM_LOCALID", "0")), "srun", slurm_rendezvous(environ))
    return None


PORTS = (15000, 15000)  # a job's default port: 15000 + job id mod 15000, below Linux's ephemeral range (32768-60999)
# and above SLURM's own daemons (6817-6819) and the srun port range sites commonly reserve (MpiParams 12000-12999)


def slurm_rendezvous(environ: Mapping[str, str]) -> str:
    """tcp://MASTER_ADDR:MASTER_PORT, by default the step's first node and a port derived from the job id."""
    nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    addr = environ.get("MASTER_ADDR") or (_first_node(nodes) if nodes else "127.0.0.1")
    port = environ.get("MASTER_PORT") or str(PORTS[0] + int(environ.get("SLURM_JOB_ID", "0")) % PORTS[1])
    return f"tcp://{addr}:{port}"


def _first_node(nodelist: str) -> str:
    """The first host as `scontrol show hostnames` says (SLURM's own reading), else `first_host`'s."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return first_host(nodelist)


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: "gpu[07-09,12],cpu1" -> "gpu07", "rack[1-2]-n[01-04]" -> "rack1-n01"."""
    first = re.match(r"(?:[^,\[]|\[[^\]]*\])*", nodelist.strip()).group(0)  # the first name, brackets and all
    return re.sub(r"\[([^\],-]*)[^\]]*\]", r"\1", first)  # each bracket's first number


def first_process(opts: Launch) -> bool:
    """Whether this process speaks for the run before ranks exist (launcher's rank, else the --rank flag)."""
    ranks = ranks_from_env(os.environ)
    if ranks is not None:
        return ranks.rank == 0
    return (max(opts.rank, 0) if opts.world_size > 1 else 0) == 0


def _backend(requested: str) -> str:
    # nccl needs CUDA; the unchanged GPU scripts fall back to gloo on a CPU machine
    return requested if cuda_usable() else "gloo"


def device_index(local_rank: int, visible: int) -> int:
    """The CUDA device of a local rank: modulo the visible devices, so one GPU per task (SLURM --gpus-per-task,
    Kubernetes) is device 0 whatever the local rank."""
    return local_rank % visible


def _device(local_rank: int | None, *, flag: str | None = None, local_world: int | None = None) -> torch.device:
    """This process's device: CPU without usable CUDA; else the local rank's GPU (`flag`: an explicit --gpu).
    `local_world`: the processes of this node that see the same GPUs; more of them than GPUs is refused (two
    ranks on one GPU: NCCL fails with "Duplicate GPU detected")."""
    if not cuda_usable():
        return torch.device("cpu")
    visible = torch.cuda.device_count()
    if flag is not None and local_rank is not None and not 0 <= local_rank < visible:
        raise UserError(f"{flag} {local_rank}: this machine shows {visible} GPU(s), numbered from 0")
    if local_world is not None and local_world > visible:
        raise UserError(f"{local_world} processes on this node but it shows {visible} GPU(s): two would share a "
                        f"GPU; start at most {visible} per node (torchrun --nproc_per_node {visible})")
    idx = device_index(local_rank or 0, visible)
    torch.cuda.set_device(idx)
    return torch.device("cuda", idx)


def _init(rank: int, world: int, local_rank: int, url: str, backend: str, device_gpu: int | None,
          local_world: int | None = None, hosted: bool = False) -> DistEnv:
    """Join the process group at `url`; `hosted`: a tcp:// rendezvous the spawning parent holds, which every
    rank joins as a client (rank 0 would otherwise try to host it on the same port)."""
    backend = _backend(backend)
    dev = _device(device_gpu, local_world=local_world)
    where: dict[str, Any] = {"init_method": url}
    if hosted:
        host, port = url.removeprefix("tcp://").rsplit(":", 1)
        where = {"store": dist.TCPStore(host, int(port), world, is_master=False, timeout=TIMEOUT)}
    dist.init_process_group(backend=backend, world_size=world, rank=rank, timeout=TIMEOUT,
                            device_id=dev if backend == "nccl" else None, **where)
    return DistEnv(rank, world, local_rank, dev, True, backend)


def launch(worker: Callable[[DistEnv, Any], None], payload: Any, opts: Launch) -> str:
    """Run `worker(env, payload)` in the process layout the flags ask for; returns a one-line description."""
    ranks = ranks_from_env(os.environ)
    if ranks is not None and (ranks.launcher == "srun" or opts.dist_url in ("env://", AUTO)
                              or "TORCHELASTIC_RUN_ID" in os.environ):
        if ranks.world_size == 1:
            worker(DistEnv(device=_device(ranks.local_rank)), payload)
            return f"{ranks.launcher} with one process"
        url = ranks.url if ranks.launcher == "torchrun" or opts.dist_url in ("env://", AUTO) else opts.dist_url
        worker(_init(ranks.rank, ranks.world_size, ranks.local_rank, url, opts.dist_backend, ranks.local_rank,
                     ranks.local_world), payload)
        return f"{ranks.launcher}: {ranks.world_size} processes"
    ngpus = torch.cuda.device_count() if cuda_usable() else 0
    if opts.multiprocessing_distributed:
        if ngpus == 0:
            worker(DistEnv(), payload)
            return "--multiprocessing-distributed asked for one process per GPU, but no GPU is visible: one CPU process"
        nodes = max(opts.world_size, 1)
        _spawn(worker, payload, opts, ngpus, nodes)
        return f"--multiprocessing-distributed: {ngpus} GPU processes on this node, {ngpus * nodes} in all"
    if opts.world_size > 1:
        local = opts.gpu if opts.gpu is not None else 0
        url = rendezvous(opts, opts.world_size, os.environ)
        worker(_init(opts.rank, opts.world_size, local, url, opts.dist_backend, opts.gpu), payload)
        return f"process {opts.rank} of {opts.world_size}"
    worker(DistEnv(device=_device(opts.gpu, flag="--gpu")), payload)
    return "one process on " + ("GPU" if cuda_usable() else "CPU")


def rendezvous(opts: Launch, nodes: int, environ: Mapping[str, str]) -> str | None:
    """The url the processes of a run started without a launcher meet at: `--dist-url` as given, or for `auto`
    None on one node (the parent hosts the rendezvous on a free port: `_spawn`), `slurm_rendezvous` on several
    nodes of a SLURM job (every node derives the same one); elsewhere several nodes need an explicit url."""
    if opts.dist_url != AUTO:
        return opts.dist_url
    if nodes <= 1:
        return None
    if "SLURM_JOB_ID" in environ:
        return slurm_rendezvous(environ)
    raise UserError(f"--dist-url auto cannot choose a rendezvous that {nodes} nodes agree on outside SLURM: pass "
                    "--dist-url tcp://HOST:PORT (node 0's address and a free port), or start the run with torchrun")


def _spawn(worker, payload, opts: Launch, ngpus: int, nodes: int) -> None:
    """One process per GPU of this node (torch.multiprocessing.spawn). On one node with `--dist-url auto`, this
    process hosts the rendezvous on a port the OS chooses (held from before the ranks start until they end, so a
    second run on the node cannot take it) and the ranks join it."""
    url, store = rendezvous(opts, nodes, os.environ), None
    if url is None:
        store = dist.TCPStore("127.0.0.1", 0, ngpus, is_master=True, timeout=TIMEOUT, wait_for_workers=False)
        url = f"tcp://127.0.0.1:{store.port}"
    try:
        torch.multiprocessing.spawn(_spawned, nprocs=ngpus, args=(worker, payload, ngpus, ngpus * nodes,
                                                                  max(opts.rank, 0), replace(opts, dist_url=url),
                                                                  store is not None))
    except torch.multiprocessing.ProcessExitedException as e:
        if e.exit_code in (2, 3):  # a user or node error, already reported as one line by the rank that met it
            raise SystemExit(e.exit_code) from None
        raise
    finally:
        del store


def _spawned(i: int, worker, payload, ngpus: int, world: int, node_rank: int, opts: Launch,
             hosted: bool = False) -> None:
    env = _init(node_rank * ngpus + i, world, i, opts.dist_url, opts.dist_backend, i, hosted=hosted)
    try:
        worker(env, payload)
    except UserError as e:  # one line and exit 2 (3: NodeError), as errors.run_cli does in a single process
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        sys.exit(e.exit_status)
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


def broadcast_buffers(model: torch.nn.Module, env: DistEnv | None) -> None:
    """Every rank takes rank 0's buffers (BatchNorm running statistics drift apart: each rank normalises its
    own batches in train mode)."""
    if env is not None and env.distributed:
        for b in unwrap(model).buffers():
            dist.broadcast(b, src=0)


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
    """The network inside DistributedDataParallel / DataParallel wrappers (the model itself when unwrapped)."""
    while isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def wrap_model(model: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    if not env.distributed:
        return model
    ids = [env.device.index] if env.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
