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


# flock as $SHIM_FLOCK says, read at each call (so the children of one fork server may differ, see
# tests/forkserver.py): "noop" answers 0 without locking anything: each "node" sees only its own locks (Lustre
# -o localflock, NFS local_lock=flock, BeeGFS without global file locks), seen from the other node; "enolck" fails
# with ENOLCK: no lock support at all (NFSv3 without lockd); anything else (or unset) is the real flock
FLOCK = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
int flock(int fd, int operation) {
    const char *how = getenv("SHIM_FLOCK");
    if (how && !strcmp(how, "noop")) return 0;
    if (how && !strcmp(how, "enolck")) { errno = ENOLCK; return -1; }
    int (*real)(int, int) = (int (*)(int, int))dlsym(RTLD_NEXT, "flock");
    if (!real) { errno = ENOSYS; return -1; }
    return real(fd, operation);
}
"""

# stat, open and opendir of every path that contains $SHIM_PATH fail with errno $SHIM_ERRNO: a data folder or
# file on a mount that went stale (ESTALE), an I/O error (EIO), a file server that is gone (ENOTCONN)... Both
# glibc's stat symbols and the older __xstat ones are covered (which one a Python calls depends on the glibc it
# was built against), and open/openat in their 64-bit names too.
PATH_FAILS = r"""
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static int hit(const char *path) {
    const char *part = getenv("SHIM_PATH");
    if (!path || !part || !*part || !strstr(path, part)) return 0;
    const char *e = getenv("SHIM_ERRNO");
    errno = e ? atoi(e) : EIO;
    return 1;
}
#define NEXT(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))
/* the stat family without <sys/stat.h>, whose prototypes differ between its names; the buffer is passed on */
#define REAL(type, name) type real = (type)dlsym(RTLD_NEXT, #name); if (!real) { errno = ENOSYS; return -1; }
typedef int (*stat_t)(const char *, void *);
#define STAT(name) int name(const char *p, void *b) { if (hit(p)) return -1; REAL(stat_t, name) return real(p, b); }
STAT(stat) STAT(stat64) STAT(lstat) STAT(lstat64)
typedef int (*statat_t)(int, const char *, void *, int);
#define STATAT(name) int name(int d, const char *p, void *b, int f) { if (hit(p)) return -1; \
    REAL(statat_t, name) return real(d, p, b, f); }
STATAT(fstatat) STATAT(fstatat64)
typedef int (*xstat_t)(int, const char *, void *);
#define XSTAT(name) int name(int v, const char *p, void *b) { if (hit(p)) return -1; \
    REAL(xstat_t, name) return real(v, p, b); }
XSTAT(__xstat) XSTAT(__xstat64) XSTAT(__lxstat) XSTAT(__lxstat64)
typedef int (*statx_t)(int, const char *, int, unsigned int, void *);
int statx(int d, const char *p, int f, unsigned int m, void *b) { if (hit(p)) return -1; REAL(statx_t, statx)
    return real(d, p, f, m, b); }
static mode_t mode_of(int flags, va_list ap) { return (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0; }
#define OPEN(name) int name(const char *p, int f, ...) { va_list ap; va_start(ap, f); mode_t m = mode_of(f, ap); \
    va_end(ap); return hit(p) ? -1 : NEXT(name)(p, f, m); }
OPEN(open) OPEN(open64)
#define OPENAT(name) int name(int d, const char *p, int f, ...) { va_list ap; va_start(ap, f); \
    mode_t m = mode_of(f, ap); va_end(ap); return hit(p) ? -1 : NEXT(name)(d, p, f, m); }
OPENAT(openat) OPENAT(openat64)
DIR *opendir(const char *p) { return hit(p) ? NULL : NEXT(opendir)(p); }
"""

# writes to files whose path contains $SHIM_PATH fail with errno $SHIM_ERRNO (default ENOSPC: a full disk) from
# the ($SHIM_AFTER + 1)-th time such a file is opened on: the first $SHIM_AFTER writes of it succeed, the next
# fails halfway through, as on a disk that fills up during a run
WRITE_FAILS = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char doomed[65536];
static int opened;

static void track(int fd, const char *path) {
    const char *part = getenv("SHIM_PATH"), *after = getenv("SHIM_AFTER");
    if (fd < 0 || fd >= 65536 || !path || !part || !strstr(path, part)) return;
    if (++opened > (after ? atoi(after) : 0)) doomed[fd] = 1;
}
#define NEXT(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))
static mode_t mode_of(int flags, va_list ap) { return (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0; }
#define OPEN(name) int name(const char *p, int f, ...) { va_list ap; va_start(ap, f); mode_t m = mode_of(f, ap); \
    va_end(ap); int fd = NEXT(name)(p, f, m); track(fd, p); return fd; }
OPEN(open) OPEN(open64)
#define OPENAT(name) int name(int d, const char *p, int f, ...) { va_list ap; va_start(ap, f); \
    mode_t m = mode_of(f, ap); va_end(ap); int fd = NEXT(name)(d, p, f, m); track(fd, p); return fd; }
OPENAT(openat) OPENAT(openat64)
ssize_t write(int fd, const void *b, size_t n) {
    if (fd >= 0 && fd < 65536 && doomed[fd]) { const char *e = getenv("SHIM_ERRNO"); errno = e ? atoi(e) : ENOSPC;
        return -1; }
    return NEXT(write)(fd, b, n);
}
int close(int fd) { if (fd >= 0 && fd < 65536) doomed[fd] = 0; return NEXT(close)(fd); }
"""
