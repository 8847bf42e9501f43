"""A fork server for tests: one Python process imports torch and the entry points once, then forks a child per
command, which runs a script as `python SCRIPT ARGS...` would (as __main__, with its own working directory,
environment, stdout/stderr and exit status; an uncaught exception ends it with status 1 and its traceback) for
the price of a fork instead of a fresh interpreter's seconds of imports. A server started with an LD_PRELOAD shim
(tests/shimkit.py) has it in every child; the shims read their settings (SHIM_PATH, SHIM_FLOCK...) at each call,
so each child may set its own. A module read at import sees the server's environment, not the child's: give the
server the environment the commands share. What only a fresh interpreter shows (an entry point's own imports, a
bash driver) stays with plain subprocesses."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SERVER = r"""
import atexit, gc, json, os, runpy, sys, threading, traceback
sys.path.insert(0, sys.argv[1])
for name in sys.argv[2:]:
    __import__(name)
gc.freeze()  # the imported objects stay out of the children's collections: fewer pages copied on write


def run_as_main(script):
    # `python SCRIPT` as the interpreter runs it, its exit status returned: threads joined, atexit run and output
    # flushed as at its exit, without its teardown of every module (pages that a fork would copy)
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    return code


for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "wait":
        pid, status = os.waitpid(req["pid"], os.WNOHANG)
        print(json.dumps({"code": os.waitstatus_to_exitcode(status) if pid else None}), flush=True)
        continue
    sys.stdout.flush()
    pid = os.fork()
    if pid:
        print(json.dumps({"pid": pid}), flush=True)
        continue
    os.chdir(req["cwd"])  # the child: becomes `python SCRIPT ARGS...`
    os.environ.clear()
    os.environ.update(req["env"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["out"], os.O_WRONLY | os.O_CREAT),
                            (2, req["err"], os.O_WRONLY | os.O_CREAT)):
        new = os.open(path, flags, 0o644)
        os.dup2(new, fd)
        os.close(new)
    sys.argv = [req["script"], *req["argv"]]
    sys.path[0] = os.path.dirname(req["script"])
    os._exit(run_as_main(req["script"]))
"""


class Child:
    """A command the server forked, used like subprocess.Popen (text mode; stdout and stderr go to files)."""

    def __init__(self, server: Forkserver, pid: int, out: str, err: str) -> None:
        self.server, self.pid, self.out, self.err = server, pid, out, err
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.ask({"op": "wait", "pid": self.pid})["code"]
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"forked {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.read_out(), self.read_err()

    def read_out(self) -> str:
        with open(self.out) as f:
            return f.read()

    def read_err(self) -> str:
        with open(self.err) as f:
            return f.read()


class Forkserver:
    """The server process, started with `env` (LD_PRELOAD included) after importing the modules `preload`."""

    def __init__(self, env: dict[str, str], preload: tuple[str, ...] = ("main_train_downstream",)) -> None:
        self.env = dict(env)
        self.folder = tempfile.mkdtemp(prefix="forkserver-")
        self.children: list[Child] = []
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, ROOT, *preload], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=self.env, cwd=ROOT, text=True)

    def ask(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the fork server exited ({self.proc.poll()})"
        return json.loads(line)

    def start(self, script: str, argv: list[str], env: dict[str, str] | None = None,
              cwd: str = ROOT) -> Child:
        """`python ROOT/script *argv`, forked; `env` defaults to the server's."""
        n = len(self.children)
        out, err = os.path.join(self.folder, f"{n}.out"), os.path.join(self.folder, f"{n}.err")
        req = {"op": "start", "script": os.path.join(ROOT, script), "argv": list(argv), "cwd": cwd,
               "env": dict(self.env if env is None else env), "out": out, "err": err}
        child = Child(self, self.ask(req)["pid"], out, err)
        self.children.append(child)
        return child

    def run(self, script: str, argv: list[str], env: dict[str, str] | None = None, cwd: str = ROOT,
            timeout: float = 300) -> subprocess.CompletedProcess:
        """As subprocess.run(..., capture_output=True, text=True)."""
        child = self.start(script, argv, env, cwd)
        out, err = child.communicate(timeout)
        return subprocess.CompletedProcess([script, *argv], child.returncode, out, err)

    def close(self) -> None:
        """Kills what still runs (a frozen child included), ends the server and removes its files."""
        for child in self.children:
            if child.returncode is None and child.poll() is None:
                for sig in (signal.SIGKILL, signal.SIGCONT):
                    try:
                        os.kill(child.pid, sig)
                    except ProcessLookupError:
                        pass
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)  # the children's stdout and stderr files


def gone(pid: int) -> bool:
    """Whether process `pid` has exited: no such process, or a zombie its parent has not reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
