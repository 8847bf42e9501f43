"""The stacks CI tests besides the pins (script/stacks.txt, made by script/stack.sh): .ci/run runs every one of
them and no other, the README's versions section names each one and promises no PyTorch older than the oldest,
script/stack.sh refuses a stack or a Python it cannot have in one line (run in a temporary copy of script/), and
script/test.sh runs what it is given: a file named runs that file, not the whole suite with it."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

import scriptkit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASH = shutil.which("bash")


def stacks() -> dict[str, tuple[str, str, str]]:
    """script/stacks.txt: name -> (python, torch, torchvision)."""
    rows = {}
    for line in open(os.path.join(ROOT, "script", "stacks.txt")):
        fields = line.split("#")[0].split()
        if fields:
            assert len(fields) == 4, line
            rows[fields[0]] = tuple(fields[1:])
    return rows


def readme_versions() -> str:
    text = open(os.path.join(ROOT, "README.md")).read()
    return text.split("## Supported versions", 1)[1].split("\n## ", 1)[0]


@pytest.fixture
def copy(tmp_path):
    return scriptkit.copy_scripts(tmp_path)


def stack_sh(repo, *args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([BASH, str(repo / "script" / "stack.sh"), *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})


def test_ci_runs_the_fast_subset_on_every_stack_and_no_other():
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    loop = re.search(r"^for stack in ([^;]+); do", ci, re.M)
    assert loop, ".ci/run has no `for stack in ...; do` loop"
    assert loop.group(1).split() == list(stacks()) and len(stacks()) >= 2
    body = ci[loop.end():ci.index("\ndone", loop.end())]
    assert 'bash script/stack.sh "$stack"' in body and 'DOUBLEWIN_PY="$py" bash script/test.sh -m "not slow"' in body


def test_the_readme_names_each_stack_and_promises_no_older_pytorch():
    section = readme_versions()
    for name, (python, torch, vision) in stacks().items():
        row = next((line for line in section.splitlines() if f"`{name}`" in line), None)
        assert row is not None, f"README's Supported versions has no row for stack `{name}`"
        assert [python, torch, vision] == [c.strip() for c in row.split("|")[2:5]], row
    oldest = min(tuple(map(int, torch.split(".")[:2])) for _, torch, _ in stacks().values())
    promised = re.search(r"PyTorch (\d+)\.(\d+) or newer", open(os.path.join(ROOT, "README.md")).read())
    assert promised and tuple(map(int, promised.groups())) == oldest


def test_an_unknown_stack_is_refused_in_one_line(copy):
    done = stack_sh(copy, "nosuch")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"error: no stack 'nosuch' in script/stacks.txt (its stacks: {' '.join(stacks())})\n"
    assert not (copy / ".stacks").exists()


def test_a_stack_whose_python_is_missing_is_refused_in_one_line(copy, tmp_path):
    with open(copy / "script" / "stacks.txt", "a") as f:
        f.write("future  3.99  9.9.9  0.99.9\n")
    done = stack_sh(copy, "future", PYENV_ROOT=str(tmp_path / "no-pyenv"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: stack 'future' needs Python 3.99: none found as python3.99 on PATH or "
                                  f"under {tmp_path / 'no-pyenv'}/versions")
    assert not (copy / ".stacks").exists()


FAKE_PYTHON = """#!/usr/bin/env bash
# python3.99 for stack.sh: answers its version checks; its venv's python is a pip that runs out of disk
if [ "$1" = -m ] && [ "$2" = venv ]; then
  mkdir -p "$3/bin"; printf '%s\\n' '#!/usr/bin/env bash' \\
    '[ "$2" = pip ] && { echo "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device"; exit 1; }' \\
    'echo "ModuleNotFoundError: No module named torch" >&2; exit 1' > "$3/bin/python"; chmod +x "$3/bin/python"
  exit 0
fi
case "$2" in *print*) echo 3.99.0;; esac  # the version line; the version check only exits 0
"""


def test_a_stack_that_runs_out_of_disk_is_removed_and_the_disk_named_in_one_line(copy, tmp_path):
    with open(copy / "script" / "stacks.txt", "a") as f:
        f.write("future  3.99  9.9.9  0.99.9\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3.99").write_text(FAKE_PYTHON)
    (bin_dir / "python3.99").chmod(0o755)
    done = stack_sh(copy, "future", PATH=f"{bin_dir}:{os.environ['PATH']}")
    assert done.returncode == 2 and done.stdout == "", done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith(f"error: installing stack 'future' into {copy}/.stacks/future ran out of disk: a stack "
                           "needs about 8 GB free while pip makes it"), done.stderr
    assert last.endswith("free there now")
    assert not (copy / ".stacks" / "future").exists()  # no half-made stack for the next try to trust


@pytest.mark.slow
def test_test_sh_runs_only_the_tests_it_is_given():
    done = subprocess.run([BASH, os.path.join(ROOT, "script", "test.sh"), "tests/test_stacks.py", "--collect-only",
                           "--noconftest", "-p", "no:cacheprovider"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DOUBLEWIN_PY": sys.executable})
    here = len(re.findall(r"^def test_", open(__file__).read(), re.M))  # this file's tests (none parametrized)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1].startswith(f"{here} tests collected in "), \
        done.stdout + done.stderr


def test_a_worker_whose_test_ids_lost_their_group_stops_the_run_in_one_line():
    """xdist's loadgroup groups by the `@group` a worker adds to each test id; where the pytest installed ignores
    that (pytest 9.2 with xdist 3.8), the cluster tests would run side by side and drain each other's nodes: the
    run stops at collection with one line that names the fix. Ids that carry their group pass."""
    import types
    import conftest
    node = types.SimpleNamespace(config=types.SimpleNamespace(getvalue={"dist": "loadgroup"}.get))
    conftest.pytest_xdist_node_collection_finished(node, ["tests/test_slurm.py::test_x@cluster",
                                                          "tests/test_imp.py::test_y@test_imp.py"])
    with pytest.raises(pytest.exit.Exception) as stop:
        conftest.pytest_xdist_node_collection_finished(node, ["tests/test_slurm.py::test_x@cluster",
                                                              "tests/test_imp.py::test_y"])
    assert stop.value.returncode == 4 and "\n" not in stop.value.msg
    assert stop.value.msg.endswith("(tests/test_imp.py::test_y has no group in its id): install "
                                   "requirements-test.txt's pytest")
    other = types.SimpleNamespace(config=types.SimpleNamespace(getvalue={"dist": "load"}.get))
    conftest.pytest_xdist_node_collection_finished(other, ["tests/test_imp.py::test_y"])  # no groups asked for


def test_the_suite_runs_pinned_to_cpu_with_one_thread_per_process_and_ctrl_c_as_a_terminal_has_it():
    """tests/conftest.py's pytest_configure, seen from a test: the CPU pin that every run and rank of the suite
    reads, one intra-op thread for each process a test starts (unless pytest was started with its own), and
    SIGINT raising KeyboardInterrupt also on a pytest-xdist worker (which starts with it ignored)."""
    import signal
    from infra import hardware
    assert os.environ.get(hardware.PIN) == "cpu"
    assert os.environ.get("OMP_NUM_THREADS", "").isdigit()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
