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


CLUSTER_FILES = ("test_slurm.py", "test_campaign_slurm.py")


def pytest_configure(config):
    """The CPU suite behaves alike on a CPU box and a GPU node: runs, ranks and backends stay on CPU / gloo (the
    CUDA tests in test_cuda.py lift this pin). A pytest-xdist worker starts with SIGINT ignored, and every process
    it starts would inherit that: Ctrl-C tests (a campaign's submission, the local queue) need the terminal's
    behaviour, KeyboardInterrupt. Every process a test starts gets one intra-op thread unless the test says
    otherwise (OMP_NUM_THREADS): its tensors are tiny, and idle OpenMP threads spin on a busy 2-core machine."""
    os.environ[hardware.PIN] = "cpu"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if hasattr(config, "workerinput"):  # set on xdist's workers only
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group marks into the test ids
def pytest_collection_modifyitems(items):
    """A test on the live SLURM cluster (the `slurm_cluster` fixture, script/slurm_up.sh) is marked `cluster` and
    `slow`: `-m "not cluster"` leaves them out, `-m cluster` runs only them. With several workers (pytest-xdist,
    `--dist loadgroup`, as script/test.sh runs it) every test that talks to the cluster, and every test of a file
    that does, runs on one worker, one at a time: the cluster has 2 CPUs a node, and a test that drains a node or
    counts the queue must not meet another test's jobs. Every other test goes to whichever worker is free."""
    for item in items:
        on_cluster = "slurm_cluster" in getattr(item, "fixturenames", ())
        if on_cluster:
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.slow)
        if on_cluster or item.path.name in CLUSTER_FILES:
            item.add_marker(pytest.mark.xdist_group("cluster"))


@pytest.hookimpl(optionalhook=True)  # an xdist hook: there only where pytest-xdist is installed
def pytest_xdist_node_collection_finished(node, ids):
    """Under `--dist loadgroup` a worker puts a test's group into the test's id, and xdist groups by that. With
    pytest 9.2 and later the change does not stick and the groups are silently split (pytest-xdist#1386): stop
    then, rather than let two cluster tests drain each other's nodes."""
    if node.config.getvalue("dist") != "loadgroup":
        return
    lost = [i for i in ids if os.path.basename(i.split("::")[0]) in CLUSTER_FILES and "@" not in i]
    if lost:
        pytest.exit(f"error: pytest {pytest.__version__} with pytest-xdist does not group tests under --dist loadgroup"
                    f" ({lost[0]} has no group in its id): install requirements-test.txt's pytest", returncode=4)
