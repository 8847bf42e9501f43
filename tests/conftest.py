"""Shared fixtures: tiny fabricated datasets (see fabricate.py), written once per session.

Each `*_root` fixture also switches torchvision's MD5 checks to existence checks for the test using it.
The whole suite is pinned to CPU (DOUBLEWIN_DEVICE=cpu) so that it asserts the same on a GPU node.
"""
from __future__ import annotations

import gc
import os
import signal

import pytest
import torch
from torch import nn

from datafiles import fabricate
from infra import hardware
import recipes


@pytest.fixture
def fake_checksums(monkeypatch):
    fabricate.allow_fake_checksums(monkeypatch)


@pytest.fixture(scope="session")
def _fake_files(tmp_path_factory):
    """Lazily written fabricated datasets, shared by the whole session (tests must not modify them)."""
    made: dict[str, str] = {}

    def get(kind: str) -> str:
        if kind not in made:
            root = str(tmp_path_factory.mktemp(kind))
            made[kind] = {"cifar10": fabricate.make_cifar10, "cifar100": fabricate.make_cifar100,
                          "svhn": fabricate.make_svhn, "folder": fabricate.make_image_folder}[kind](root)
        return made[kind]
    return get


@pytest.fixture
def cifar10_root(_fake_files, fake_checksums) -> str:
    """60 train (54 train + 6 val after the split) and 20 test images, all 10 classes."""
    return _fake_files("cifar10")


@pytest.fixture
def cifar100_root(_fake_files, fake_checksums) -> str:
    return _fake_files("cifar100")


@pytest.fixture
def svhn_root(_fake_files, fake_checksums) -> str:
    return _fake_files("svhn")


@pytest.fixture
def image_folder_root(_fake_files) -> str:
    """ImageFolder layout root/{train,val}/{ant,bee,cat}/*.png, 4 images per class and split (also an
    ImageNet-layout root)."""
    return _fake_files("folder")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Test tensors are tiny: a second intra-op thread only adds contention on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
    """Each test leaves the signal handlers as it found them: code run in this process (a SLURM job's Task passing
    SIGTERM/SIGINT/SIGHUP/SIGUSR1 on to its run, say) installs its own, and a later test on the same worker
    would meet them (a Ctrl-C that no longer raises KeyboardInterrupt)."""
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)}
    yield
    for sig, handler in kept.items():
        if signal.getsignal(sig) is not handler and handler is not None:
            signal.signal(sig, handler)


@pytest.fixture
def frozen_gc():
    """Every object that exists before the test goes out of the collector's reach (gc.freeze): the benchmark's own
    gc.collect() calls then walk what the test makes, not the hundreds of thousands of torch's and pytest's."""
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture
def eager_compile(monkeypatch) -> list[str]:
    """nn.Module.compile with dynamo's eager backend (the real tracing, without inductor's minutes of C++
    builds); returns the list of the class names of the modules compiled."""
    calls: list[str] = []
    plain_compile = nn.Module.compile

    def compile_eager(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return plain_compile(self, backend="eager")
    monkeypatch.setattr(nn.Module, "compile", compile_eager)
    return calls


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 'pre-trained' resnet_tiny init (1000-class head, as ImageNet weights) and a 60% magnitude ticket of it."""
    return recipes.write_pretrained(str(tmp_path_factory.mktemp("tiny")), 0.6, {"level": 4, "source": "imp"})


def pytest_configure(config):
    """The CPU suite behaves alike on a CPU box and a GPU node: runs, ranks and backends stay on CPU / gloo (the
    CUDA tests in test_cuda.py lift this pin). A pytest-xdist worker starts with SIGINT ignored, and every process
    it starts would inherit that: Ctrl-C tests (a campaign's submission, the local queue) need the terminal's
    behaviour, KeyboardInterrupt. Every process a test starts gets one intra-op thread unless the test says
    otherwise (OMP_NUM_THREADS): its tensors are tiny, and idle OpenMP threads spin on a busy 2-core machine.
    tests/test_stacks.py checks all three."""
    os.environ[hardware.PIN] = "cpu"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if hasattr(config, "workerinput"):  # set on xdist's workers only
        signal.signal(signal.SIGINT, signal.default_int_handler)


CLUSTER_FILES = ("test_slurm.py", "test_campaign_slurm.py")
# The groups that take longest, longest first (seconds of one worker, measured on 2 cores): handed out first, so
# that no long one starts last while the other workers idle. The cluster group mostly waits on SLURM.
LONGEST_FIRST = ("cluster", "test_demo.py", "test_campaign_runs.py", "test_lease.py", "test_distributed.py",
                 "test_transfer_dist.py", "test_imp_dist.py", "test_faults.py", "test_verdict.py", "test_gpu_check.py",
                 "test_transfer_pipeline.py", "test_campaign.py", "test_node_faults.py")


def group_of(item) -> str:
    """The xdist group of a test: "cluster" for every test on the live cluster and every test of a file that
    talks to it, else its file (so that a file's module fixtures are made once)."""
    if "slurm_cluster" in getattr(item, "fixturenames", ()) or item.path.name in CLUSTER_FILES:
        return "cluster"
    return item.path.name


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group marks into the test ids
def pytest_collection_modifyitems(items):
    """A test on the live SLURM cluster (the `slurm_cluster` fixture, script/slurm_up.sh) is marked `cluster` and
    `slow`: `-m "not cluster"` leaves them out, `-m cluster` runs only them. With several workers (pytest-xdist,
    `--dist loadgroup --no-loadscope-reorder`, as script/test.sh runs it) each group (`group_of`) runs on one
    worker: the cluster tests one at a time, since the cluster has 2 CPUs a node, and a test that drains a node
    or counts the queue must not meet another test's jobs. The groups go out longest first (LONGEST_FIRST)."""
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.slow)
        item.add_marker(pytest.mark.xdist_group(group_of(item)))
    rank = {group: i for i, group in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(group_of(item), len(rank)))  # stable: a file's own order stays


@pytest.hookimpl(optionalhook=True)  # an xdist hook: there only where pytest-xdist is installed
def pytest_xdist_node_collection_finished(node, ids):
    """Under `--dist loadgroup` a worker puts a test's group into the test's id, and xdist groups by that. With
    pytest 9.2 and later the change does not stick and the groups are silently split (pytest-xdist#1386): stop
    then, rather than let two cluster tests drain each other's nodes."""
    if node.config.getvalue("dist") != "loadgroup":
        return
    lost = [i for i in ids if "@" not in i]
    if lost:
        pytest.exit(f"error: pytest {pytest.__version__} with pytest-xdist does not group tests under --dist loadgroup"
                    f" ({lost[0]} has no group in its id): install requirements-test.txt's pytest", returncode=4)
