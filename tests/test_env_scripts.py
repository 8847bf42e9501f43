"""script/env.sh, run in a temporary copy of script/ and requirements*.txt: DOUBLEWIN_PY is used as it is (no .venv,
nothing installed, a missing dependency named in one line with the command that adds it); without it, .venv is made
by a Python 3.10-3.13 found on PATH (shims stand in for the interpreters, so nothing is downloaded)."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import pytest

import scriptkit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = 'source "$(dirname "${BASH_SOURCE[0]}")/env.sh"\necho "DOUBLEWIN_PY=$DOUBLEWIN_PY"\n'
BASH = shutil.which("bash")
TOOLS = ("cat", "sha256sum", "cut", "dirname", "mkdir", "chmod", "grep", "ln")


@pytest.fixture
def copy(tmp_path):
    """A repository copy holding what env.sh reads, and script/probe.sh, which sources it and prints the result."""
    repo = scriptkit.copy_scripts(tmp_path)
    (repo / "script" / "probe.sh").write_text(PROBE)
    return repo


def probe(repo, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("DOUBLEWIN_PY", "PYTHON", "DOUBLEWIN_NEEDS")}
    return subprocess.run([BASH, str(repo / "script" / "probe.sh")], capture_output=True, text=True, timeout=120,
                          env={**base, **env})


@pytest.mark.slow
def test_doublewin_py_is_used_as_it_is(copy):
    done = probe(copy, DOUBLEWIN_PY=sys.executable, DOUBLEWIN_NEEDS="pytest")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout == f"DOUBLEWIN_PY={sys.executable}\n"
    assert not (copy / ".venv").exists()


@pytest.mark.slow
def test_a_missing_dependency_is_named_in_one_line_with_the_command_that_adds_it(copy):
    with open(copy / "requirements.txt", "a") as f:
        f.write("doublewin-absent-package>=1.2   # not on any machine\n")
    done = probe(copy, DOUBLEWIN_PY=sys.executable)
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: {sys.executable} lacks doublewin-absent-package: add it with  "
                                  f"{sys.executable} -m pip install 'doublewin-absent-package>=1.2'")
    assert "torch and torchvision stay as they are" in done.stderr and not (copy / ".venv").exists()


@pytest.mark.slow
def test_test_packages_are_needed_only_where_a_script_names_them(copy):
    with open(copy / "requirements-test.txt", "a") as f:
        f.write("doublewin-absent-test-package==0.1\n")
    assert probe(copy, DOUBLEWIN_PY=sys.executable).returncode == 0
    done = probe(copy, DOUBLEWIN_PY=sys.executable, DOUBLEWIN_NEEDS="pytest doublewin-absent-test-package")
    assert done.returncode == 2 and "lacks doublewin-absent-test-package:" in done.stderr


def test_doublewin_py_without_torch_is_refused_not_installed_over(copy, tmp_path):
    fake = tmp_path / "python3"
    fake.write_text(f"#!/bin/bash\nexec {sys.executable} -S -I \"$@\"\n")  # -S: no site-packages, so no torch
    fake.chmod(0o755)
    done = probe(copy, DOUBLEWIN_PY=str(fake))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "cannot import torch and torchvision: install the PyTorch build for your machine" in done.stderr


# ---------------------------------------------------------------------------- the .venv path
SHIM = """#!/bin/bash
# {name} reporting version {version}: runs -c code under the real interpreter; -m venv makes a venv whose pip only logs
echo "{name} $*" >> {log}
if [ "$1" = -c ]; then exec {real} -c "import sys; sys.version_info = {version_info}; sys.version = '{version} (shim)'
$2"; fi
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin"
  printf '#!/bin/bash\\nif [ "$1 $2" = "-m pip" ]; then echo "venv-python $*" >> {log}; exit 0; fi\\nexec {real} "$@"\\n' \\
    > "$3/bin/python"
  chmod +x "$3/bin/python"
  exit 0
fi
exit 99
"""


def shim_path(tmp_path, versions: dict[str, str]) -> tuple[str, str]:
    """A PATH holding only the shell tools env.sh uses and a shim per interpreter name; and the shims' log."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for tool in TOOLS:
        os.symlink(shutil.which(tool), bin_dir / tool)
    for name, version in versions.items():
        info = tuple(int(p) for p in version.split(".")) + ("final", 0)
        (bin_dir / name).write_text(SHIM.format(name=name, version=version, version_info=info, log=log,
                                                real=sys.executable))
        (bin_dir / name).chmod(0o755)
    return str(bin_dir), str(log)


@pytest.mark.slow
def test_the_venv_is_made_by_python_3_12(copy, tmp_path):
    path, log = shim_path(tmp_path, {"python3.12": "3.12.3", "python3": "3.9.18"})
    done = probe(copy, PATH=path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"DOUBLEWIN_PY={copy}/.venv/bin/python\n"
    assert f"setting up {copy}/.venv with 3.12.3" in done.stderr
    calls = open(log).read()
    assert f"python3.12 -m venv {copy}/.venv" in calls
    assert f"venv-python -m pip install -q --disable-pip-version-check -r {copy}/requirements.txt" in calls
    assert (copy / ".venv" / ".requirements.sha").exists()
    os.remove(log)
    assert probe(copy, PATH=path).returncode == 0 and not os.path.exists(log)  # up to date: no Python is asked


@pytest.mark.parametrize("versions", [{"python3": "3.9.18"}, {"python3.14": "3.14.0", "python3": "3.14.0"}])
def test_no_python_in_3_10_to_3_13_is_one_line(copy, tmp_path, versions):
    path, _ = shim_path(tmp_path, versions)
    done = probe(copy, PATH=path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and not (copy / ".venv").exists()
    assert done.stderr.startswith("error: no Python 3.10-3.13 found to make")
    assert "DOUBLEWIN_PY=/path/to/python" in done.stderr


@pytest.mark.slow
def test_python_names_the_interpreter_of_the_venv(copy, tmp_path):
    path, log = shim_path(tmp_path, {"python3.12": "3.12.3", "py310": "3.10.13", "py314": "3.14.0"})
    done = probe(copy, PATH=path, PYTHON="py314")
    assert done.returncode == 2 and done.stderr.startswith("error: PYTHON=py314 is not Python 3.10-3.13")
    done = probe(copy, PATH=path, PYTHON="py310")
    assert done.returncode == 0 and "with 3.10.13" in done.stderr and "py310 -m venv" in open(log).read()


@pytest.mark.parametrize("script", ["report.sh", "imp_pretrain/imp_std.sh", "train_downstream/adv_svhn.sh"])
def test_the_drivers_and_the_report_run_doublewin_py_and_python_only_makes_the_venv(tmp_path, script):
    """DOUBLEWIN_PY is the interpreter of every script; PYTHON (the maker of .venv) does not change it."""
    calls = tmp_path / "calls"
    for name in ("theirs", "mine"):  # script/env.sh's checks of an interpreter (without -u) pass
        (tmp_path / name).write_text(f"#!/bin/bash\n[ \"$1\" = -c ] || [ \"$1\" = - ] || echo {name} \"$@\" >> {calls}\n")
        (tmp_path / name).chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in ("DOUBLEWIN_PY", "PYTHON")}
    argv = [BASH, os.path.join(ROOT, "script", script), "w", "s", "d"]
    subprocess.run(argv, check=True, env={**base, "DOUBLEWIN_PY": str(tmp_path / "theirs")}, timeout=60)
    subprocess.run(argv, check=True, env={**base, "DOUBLEWIN_PY": str(tmp_path / "theirs"),
                                          "PYTHON": str(tmp_path / "mine")}, timeout=60)
    first, second = calls.read_text().splitlines()
    entry = {"report.sh": "report.py", "imp_pretrain/imp_std.sh": "main_imp_std.py"}.get(script,
                                                                                         "main_train_downstream.py")
    assert first.startswith("theirs ") and second.startswith("theirs ") and entry in first and entry in second


@pytest.mark.slow
def test_after_the_setup_made_venv_the_drivers_run_it_whatever_python_is_on_path(tmp_path):
    """A tree whose .venv is up to date (its python: this interpreter, which has torch), `python` on PATH a stand-in
    that exits 1, DOUBLEWIN_PY unset: the paper-scale drivers run .venv's Python (here, their --help)."""
    tree = tmp_path / "repo"
    tree.mkdir()
    for name in os.listdir(ROOT):
        if name != ".venv":
            os.symlink(os.path.join(ROOT, name), tree / name)
    venv_bin = tree / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    ran = tmp_path / "ran"
    (venv_bin / "python").write_text(f"#!/bin/sh\necho \"$@\" >> {ran}\nexec {sys.executable} \"$@\"\n")
    (venv_bin / "python").chmod(0o755)
    pins = b"".join(open(os.path.join(ROOT, n), "rb").read() for n in ("requirements.txt", "requirements-test.txt"))
    (tree / ".venv" / ".requirements.sha").write_text(hashlib.sha256(pins).hexdigest() + "\n")  # as env.sh stamps
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "python3"):  # the PATH's Python: no torch here
        (bin_dir / name).write_text("#!/bin/sh\necho 'the PATH python ran' >&2\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    env = {**{k: v for k, v in os.environ.items() if k not in ("DOUBLEWIN_PY", "PYTHON")},
           "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for driver, args, entry in [("imp_pretrain/imp_adv.sh", ["I", "S", "D"], "main_imp_adv.py"),
                                ("train_downstream/std.sh", ["cifar10", "I", "S", ""], "main_train_downstream.py")]:
        done = subprocess.run([BASH, str(tree / "script" / driver), *args, "--help"], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and "--recipe NAME" in done.stdout, done.stderr
        assert f"-u {tree / entry} --recipe {os.path.basename(driver)[:-3]} " in ran.read_text()
    assert not (tree / ".venv" / "lib").exists()  # nothing was installed
