"""The campaign for real: the local queue (1 worker and 2 give the same files; an IMP stage feeds transfer runs
while it goes on) and a real SLURM cluster (a job array with a job requeued mid-run completes with the results
a local run gives, then the report; on the two-node CI cluster the requeued run lands on the other node). SLURM
tests skip with one line where no cluster answers, unless
DOUBLEWIN_REQUIRE_SLURM=1 (CI, after script/slurm_up.sh), where they fail instead."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import campaignkit as kit
import slurmkit
from campaign import spec, state
from slurmkit import slurm_cluster, two_nodes  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def inputs(request):
    return kit.once_per_session(request, "campaign_runs_inputs", kit.make_inputs)


@pytest.fixture(scope="module")
def local_two(inputs, request):
    """The 8-run campaign (dense and level 2; 2 seeds, std and adv) through the local queue with 2 workers: the
    reference for the other tests, run once per session (this file's SLURM tests run on another xdist worker than
    its others); its spec, its root and the queue's stdout."""
    def make(d: str) -> dict:
        path = kit.write_spec(os.path.join(d, "c.toml"), inputs, os.path.join(d, "runs"), levels=(2,))
        done = kit.sweep("run", path, "--local", "--jobs", "2", check=True)
        return {"spec": path, "root": os.path.join(d, "runs"), "stdout": done.stdout}
    return kit.once_per_session(request, "campaign_runs_local2", make)


def _counts(path: str) -> dict:
    return {k: v for k, v in state.counts(state.states(spec.load(path))).items() if v}


@pytest.mark.slow
def test_local_queue_two_workers_give_the_files_of_one(local_two, inputs, tmp_path):
    path, root, stdout = local_two["spec"], local_two["root"], local_two["stdout"]
    assert _counts(path) == {"done": 8}
    assert stdout.count("start  ") == 8 and "FAILED" not in stdout
    two = kit.results(root)
    assert len(two) == 8
    one_spec = kit.write_spec(str(tmp_path / "c.toml"), inputs, str(tmp_path / "runs"), seeds=(2,), levels=(2,),
                              modes=("adv",), dense=False)
    kit.sweep("run", one_spec, "--local", "--jobs", "1", check=True)
    one = kit.results(str(tmp_path / "runs"))
    assert list(one) == ["tiny/folder-1/aimp-2/adv/s2"] and one == {k: two[k] for k in one}
    again = kit.sweep("run", path, "--local", "--jobs", "2", check=True)  # nothing left: nothing launched
    assert "start" not in again.stdout and kit.results(root) == two
    plan = kit.sweep_here("plan", path, check=True).stdout  # the measured cost beside the estimate, per family
    assert any(ln.startswith("tiny aimp") and ln.endswith("(4 done)") for ln in plan.splitlines()), plan
    report = kit.sweep_here("report", path, check=True)
    assert "highest double-win sparsity" in report.stdout.lower()
    assert os.path.exists(os.path.join(root, "report", "report.json"))
    assert os.path.exists(os.path.join(root, "ticket_overlap.json"))  # sweep.py report ran tickets.py overlap


@pytest.mark.slow
def test_an_imp_stage_feeds_transfer_runs_while_it_goes_on(inputs, tmp_path):
    tickets = str(tmp_path / "imp")
    flags = ["-a", "resnet_tiny", "--small-input", "--image-size", "16", "--resize-size", "16", "-b", "8", "-j", "0",
             "--epochs", "4", "--prune_epoch", "1", "-p", "0", "--deterministic"]  # 4 levels: tickets 1-5
    imp = (f'[[init.tickets]]\nname = "imp"\ndir = "{tickets}"\nlevels = [1]\n[init.tickets.imp]\nkind = "std"\n'
           f'data = "{inputs["data"]}"\noverrides = {kit.toml_list(flags)}\n')
    path = kit.write_spec(str(tmp_path / "c.toml"), {**inputs, "init": inputs["init3"]}, str(tmp_path / "runs"),
                          seeds=(1,), modes=("std",), tickets=imp)
    assert _counts(path) == {"pending": 2, "waiting": 1}
    kit.sweep("run", path, "--local", "--jobs", "3", check=True)  # a slot free for level 1 while IMP goes on
    assert _counts(path) == {"done": 3}
    with open(os.path.join(tickets, "launch.json")) as f:
        imp_run = json.load(f)
    with open(os.path.join(tmp_path, "runs", "tiny", "folder-1", "imp-1", "std", "s1", "launch.json")) as f:
        level1 = json.load(f)
    assert imp_run["exit"] == 0 and level1["exit"] == 0
    assert level1["start"] < imp_run["end"]  # level 1's transfer began while IMP trained level 2 and 3


# ---------------------------------------------------------------------------- SLURM
def _node_of(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%N"], capture_output=True, text=True).stdout.strip()
    return out if out in ("n1", "n2") else ""


def _requeue_one_mid_run(root: str, deadline: float) -> tuple[str, str]:
    """Wait for a run to be training (lock held), drain its node, requeue its job: (its folder, the node)."""
    while time.time() < deadline:
        for folder, _, files in os.walk(root):
            if "launch.json" in files and "results.json" not in files and state.lock_holder(folder):
                with open(os.path.join(folder, "launch.json")) as f:
                    job = json.load(f).get("slurm_job")
                node = _node_of(job) if job else ""
                if not node:
                    continue
                slurmkit.drain(node)  # its other jobs go on; the requeued one can only start on the other node
                for _ in range(20):  # "Job is pending execution" for a second after a start: retry
                    if subprocess.run(["scontrol", "requeue", job], capture_output=True).returncode == 0:
                        return folder, node
                    time.sleep(0.5)
                slurmkit.resume(node)
        time.sleep(0.2)
    raise AssertionError("no run was seen training")


def _starts(folder: str) -> list[str]:
    """The hosts a run started on, in order (its stdout.txt's `== DATE on HOST: command` lines)."""
    with open(os.path.join(folder, "stdout.txt")) as f:
        return [line.split(" on ", 1)[1].split(":", 1)[0] for line in f if line.startswith("== ")]


@pytest.mark.slow
def test_slurm_requeue_lands_on_the_other_node_and_matches_the_local_run(two_nodes, inputs, request, tmp_path):
    path = kit.write_spec(str(tmp_path / "c.toml"), inputs, str(tmp_path / "runs"), seeds=(1,), levels=(2,),
                          modes=("adv",))
    sweep = subprocess.Popen([sys.executable, os.path.join(kit.ROOT, "sweep.py"), "run", path, "--slurm",
                              "--gpus-per-run", "0", "--cpus-per-run", "1", "--time", "10", "--follow", "--poll",
                              "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=kit.ENV,
                             cwd=kit.ROOT)
    try:
        victim, node = _requeue_one_mid_run(str(tmp_path / "runs"), time.time() + 120)
        slurmkit.wait_until("the requeued run to start again", lambda: len(_starts(victim)) >= 2, 200)
        slurmkit.resume(node)
        out, err = sweep.communicate(timeout=400)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, out[-2000:] + err[-2000:]
    assert "submitted 2 runs: jobs " in out  # dense and level 2, adv, seed 1: one array
    assert _counts(path) == {"done": 2}
    hosts = _starts(victim)
    assert len(hosts) >= 2 and hosts[0] != hosts[1], hosts  # requeued, then resumed on the other node
    on_slurm = kit.results(str(tmp_path / "runs"))
    local = kit.results(request.getfixturevalue("local_two")["root"])  # asked last: made meanwhile elsewhere
    assert len(on_slurm) == 2 and on_slurm == {k: local[k] for k in on_slurm}
    report = kit.sweep_here("report", path, check=True)
    assert "highest double-win sparsity" in report.stdout.lower()


@pytest.mark.slow
def test_sbatch_refusal_is_one_line_naming_the_option(slurm_cluster, inputs, tmp_path):
    path = kit.write_spec(str(tmp_path / "c.toml"), inputs, str(tmp_path / "runs"), seeds=(1,), modes=("std",))
    done = kit.sweep("run", path, "--slurm", "--partition", "nosuchpartition", "--gpus-per-run", "0")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: sbatch refused the jobs (") and "--partition" in done.stderr
    assert _counts(path) == {"pending": 3}


@pytest.mark.slow
def test_slurm_run_ending_with_a_user_error_is_not_retried(slurm_cluster, inputs, tmp_path):
    path = kit.write_spec(str(tmp_path / "c.toml"), inputs, str(tmp_path / "runs"), seeds=(1,), modes=("std",),
                          tickets="", extra='std_overrides = ["--lr", "x"]')
    done = kit.sweep("run", path, "--slurm", "--gpus-per-run", "0", "--cpus-per-run", "1", "--time", "5",
                     "--follow", "--poll", "1", timeout=300)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert _counts(path) == {"failed": 1}
    folder = os.path.join(tmp_path, "runs", "tiny", "folder-1", "dense", "std", "s1")
    with open(os.path.join(folder, "launch.json")) as f:
        record = json.load(f)
    assert record["exit"] == 2 and record["error"].startswith(
        "error: argument --lr/--learning-rate: invalid float value")
    with open(os.path.join(folder, "stdout.txt")) as f:
        assert sum(line.startswith("== ") for line in f) == 1  # launched once: not retried
    plan = kit.sweep_here("plan", path, check=True).stdout
    assert "failed    error: argument --lr/--learning-rate: invalid float value: 'x'" in plan
