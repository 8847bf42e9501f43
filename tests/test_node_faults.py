"""The machine's faults are exit 3, the input's exit 2: a full disk while a checkpoint is written, a data folder on
a stale mount, an image that meets an I/O error, a SAVE_DIR that cannot take a file. Each is reproduced with an
LD_PRELOAD shim (tests/shimkit.py) under the real transfer entry point at tiny settings: one `error:` line naming
the path and what to do, and the previous checkpoint intact and loadable. The full disk runs the bash driver in a
fresh process; the other shimmed runs are children of one fork server that has the shim (tests/forkserver.py);
runs without a shim run in this process."""
from __future__ import annotations

import errno
import os
import subprocess

import pytest

import campaignkit as kit
import forkserver
import main_train_downstream
import shimkit
from infra import checkpoint, errors
from infra import paths

ROOT = kit.ROOT


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return kit.make_inputs(str(tmp_path_factory.mktemp("faults")))


def transfer(inputs, save: str, *extra: str, env: dict | None = None, data: str | None = None):
    cmd = ["bash", os.path.join(ROOT, "script", "train_downstream", "std.sh"), "folder", inputs["init"], save, "",
           "--data", data or inputs["data"], *kit.TINY, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or kit.ENV, timeout=300)


def shimmed(source: str, name: str, path: str, code: int, **more: str) -> dict:
    env = shimkit.env_with(shimkit.build(name, source), kit.ENV)
    env.update(SHIM_PATH=path, SHIM_ERRNO=str(code), **more)
    return env


def python_argv(inputs, save: str, *extra: str, data: str | None = None) -> list[str]:
    """The arguments std.sh (as `transfer` runs it) passes to main_train_downstream.py: its exec line."""
    return ["--recipe", "std", "--dataset", "folder", "--init", inputs["init"], "--save_dir", save, "--tickets_file",
            "", "--data", data or inputs["data"], *kit.TINY, *extra]


def in_process(capsys, argv: list[str]) -> subprocess.CompletedProcess:
    """The entry point run in this process, as its `__main__` runs it (errors.run_cli)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        errors.run_cli(main_train_downstream.main, argv)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, e.value.code, out, err)


@pytest.fixture(scope="module")
def path_fails():
    """A fork server with the PATH_FAILS shim: each run sets its own SHIM_PATH and SHIM_ERRNO."""
    server = forkserver.Forkserver(shimkit.env_with(shimkit.build("pathfails", shimkit.PATH_FAILS), kit.ENV))
    yield server
    server.close()


def path_failing(server, inputs, save: str, path: str, code: int, **more: str):
    """The tiny run (std.sh's command) where every stat/open of a path containing `path` fails with `code`."""
    env = dict(server.env, SHIM_PATH=path, SHIM_ERRNO=str(code), **more)
    return server.run("main_train_downstream.py", python_argv(inputs, save), env=env)


def one_error_line(done: subprocess.CompletedProcess, status: int, start: str) -> str:
    assert done.returncode == status, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(start), done.stderr[-3000:]
    return done.stderr


@pytest.mark.parametrize("code", [errno.ESTALE, errno.EIO, errno.ENOTCONN, errno.EHOSTDOWN, errno.ETIMEDOUT,
                                  errno.ENOSPC, errno.EDQUOT])
def test_the_machines_faults_are_node_errors_naming_the_path(code):
    err = errors.node_error("/nfs/run/x", OSError(code, os.strerror(code)), "writing")
    storage = code in (errno.ENOSPC, errno.EDQUOT)  # every node sharing the disk meets it: no node to blame
    assert isinstance(err, errors.NodeError) and isinstance(err, errors.StorageError) == storage
    assert err.exit_status == (4 if storage else 3)
    assert str(err).startswith(f"writing /nfs/run/x failed ({os.strerror(code)}): ") and "\n" not in str(err)


@pytest.mark.parametrize("code", [errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR])
def test_the_inputs_faults_are_not(code):
    assert errors.node_error("/x", OSError(code, os.strerror(code)), "reading") is None
    assert errors.machine_fault(ValueError("x")) is None


def test_a_read_only_filesystem_is_the_machines_only_where_it_was_writable():
    e = OSError(errno.EROFS, os.strerror(errno.EROFS))
    assert errors.node_error("/x", e, "writing") is None  # a folder the user chose that never was writable
    assert "went read-only" in str(errors.node_error("/x", e, "writing", was_writable=True))


@pytest.mark.slow
def test_a_full_disk_while_a_checkpoint_is_written_exits_4_and_keeps_the_previous_one(inputs, tmp_path, capsys):
    save = str(tmp_path / "run")
    # the first checkpoint (epoch 1) is written; the disk is full when the second is
    env = shimmed(shimkit.WRITE_FAILS, "writefails", "/.checkpoint.pth.tar.", errno.ENOSPC,  # its temp file
                  SHIM_AFTER="1")
    done = transfer(inputs, save, "--epochs", "2", env=env)
    ckpt = os.path.join(save, paths.CHECKPOINT)
    line = one_error_line(done, 4, f"error: writing {ckpt} failed (No space left on device): the disk is full")
    assert "the previous version, if any, is intact" in line and "re-run the same command" in line
    assert checkpoint.load_own(ckpt)["epoch"] == 1  # the previous checkpoint, loadable
    assert not [n for n in os.listdir(save) if n.endswith(".tmp")]  # no half-written temp file left
    again = in_process(capsys, python_argv(inputs, save, "--epochs", "2"))  # space freed: the same command
    assert again.returncode == 0, again.stderr[-3000:]                      # resumes and finishes
    assert checkpoint.load_own(ckpt)["epoch"] == 2 and "resum" in open(os.path.join(save, "log.txt")).read()


@pytest.mark.slow
def test_a_stale_data_folder_exits_3_and_a_missing_one_exits_2(inputs, tmp_path, path_fails, capsys):
    data = inputs["data"]
    done = path_failing(path_fails, inputs, str(tmp_path / "stale"), data, errno.ESTALE)
    line = one_error_line(done, 3, f"error: reading {data}")
    assert "(Stale file handle): the file server no longer knows the file" in line
    done = in_process(capsys, python_argv(inputs, str(tmp_path / "missing"), data=str(tmp_path / "nowhere")))
    one_error_line(done, 2, f"error: folder data not found: {tmp_path / 'nowhere'}/train is not a folder")


@pytest.mark.slow
def test_an_io_error_on_one_image_exits_3_naming_it(inputs, tmp_path, path_fails):
    image = os.path.join(inputs["data"], "train", "bee", "00005.png")
    done = path_failing(path_fails, inputs, str(tmp_path / "run"), image, errno.EIO)
    line = one_error_line(done, 3, f"error: reading {image} failed (Input/output error): the disk, mount or file "
                                   "server failed, not the input")
    assert "cannot be decoded" not in line


@pytest.mark.slow
@pytest.mark.parametrize("code, status, start", [
    (errno.ENOSPC, 4, "error: --save_dir: writing to {save} failed (No space left on device): the disk is full"),
    (errno.EROFS, 2, "error: --save_dir {save} cannot be written (Read-only file system): choose a folder"),
])
def test_a_save_dir_that_cannot_take_a_file(inputs, tmp_path, path_fails, code, status, start):
    save = str(tmp_path / "run")
    done = path_failing(path_fails, inputs, save, os.path.join(save, ".write-test."), code)
    one_error_line(done, status, start.format(save=save))
