"""LD_PRELOAD shims: a small C library, compiled once per test session, that changes what one system call
answers for the process it is preloaded into (and its children). It reproduces here what a filesystem or a node
we do not have would answer: flock that excludes nothing (locks that do not reach across nodes), flock failing
with ENOLCK (NFS without lockd), writes failing with ENOSPC (a full disk)..."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile

_BUILT: dict[str, str] = {}


def build(name: str, source: str) -> str:
    """The path of `source` (C) compiled as a shared library; fails the test with cc's message if it does not
    compile. Cached by content for the whole session."""
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    if key in _BUILT:
        return _BUILT[key]
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler (cc) is needed to build the LD_PRELOAD shims of these tests"
    folder = tempfile.mkdtemp(prefix=f"shim-{name}-")
    src, lib = os.path.join(folder, f"{name}.c"), os.path.join(folder, f"{name}.so")
    with open(src, "w") as f:
        f.write(source)
    done = subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", lib, src, "-ldl"], capture_output=True, text=True)
    assert done.returncode == 0, f"cc could not build the {name} shim:\n{done.stderr}"
    _BUILT[key] = lib
    return lib


def env_with(lib: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: os.environ) with `lib` preloaded in front of any other preload."""
    env = dict(os.environ if env is None else env)
    env["LD_PRELOAD"] = lib + (":" + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
    return env


# flock answers 0 without locking anything: each "node" sees only its own locks (Lustre -o localflock, NFS
# local_lock=flock, BeeGFS without global file locks), seen from the other node
FLOCK_NOOP = r"""
#include <sys/file.h>
int flock(int fd, int operation) { (void)fd; (void)operation; return 0; }
"""

# flock fails with ENOLCK: no lock support at all (NFSv3 without lockd)
FLOCK_ENOLCK = r"""
#include <errno.h>
#include <sys/file.h>
int flock(int fd, int operation) { (void)fd; (void)operation; errno = ENOLCK; return -1; }
"""
