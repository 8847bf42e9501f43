"""The campaign tool's fast parts: the spec's checks (one line naming the key or file), runs and their commands,
plan/status counts at each stage from files alone, the SAVE_DIR lease, and the one line for a corrupt image."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

import campaignkit as kit
from infra import checkpoint
from infra import paths
from infra import errors
from campaign import estimate, execute, spec, state, status

ROOT = kit.ROOT


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return kit.make_inputs(str(tmp_path_factory.mktemp("campaign")))


def load(tmp_path, inputs, **kw):
    return spec.load(kit.write_spec(str(tmp_path / "c.toml"), inputs, str(tmp_path / "runs"), **kw))


def test_file_names_agree_with_the_module_that_owns_them():
    assert (state.RESULTS, state.CHECKPOINT, state.METRICS, state.LEASE) == \
        (paths.RESULTS, paths.CHECKPOINT, paths.METRICS, paths.LEASE)


def test_runs_are_the_drivers_commands_with_the_documented_layout(tmp_path, inputs):
    c = load(tmp_path, inputs)
    assert len(c.runs) == 3 * 2 * 2  # (dense + 2 tickets) x 2 modes x 2 seeds
    run = next(r for r in c.runs if r.id == "tiny/folder-1/aimp-2/adv/s2")
    assert run.save_dir == str(tmp_path / "runs" / "tiny" / "folder-1" / "aimp-2" / "adv" / "s2")
    assert run.command[:6] == ("bash", os.path.join(ROOT, "script", "train_downstream", "adv_cifar.sh"), "folder",
                               inputs["init"], run.save_dir, os.path.join(inputs["tickets"], "2-ticket.pth.tar"))
    assert run.command[6:12] == ("--data", inputs["data"], "--data_number", "1", "--seed", "2")
    assert run.command[12:] == tuple(kit.TINY)
    dense = next(r for r in c.runs if r.id == "tiny/folder-1/dense/std/s1")
    assert dense.command[1].endswith("std.sh") and dense.command[5] == ""
    printed = kit.sweep_here("run", str(tmp_path / "c.toml"), "--print", check=True).stdout.splitlines()
    assert [shlex.split(line) for line in printed] == [list(r.command) for r in c.runs]


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.replace("seeds =", "seed ="), "unknown key init[0].'seed'"),
    (lambda s: s.replace('datasets = ["folder"]', 'datasets = ["cifar11"]'), "unknown dataset 'cifar11'"),
    (lambda s: s.replace("init.pth", "missing.pth"), "weights: file"),
    (lambda s: s.replace("levels = [1, 2]", "levels = [1, 7]"), "7-ticket.pth.tar does not exist and no"),
    (lambda s: s.replace('modes = ["std", "adv"]', 'modes = ["fast"]'), "unknown mode 'fast'"),
    (lambda s: s.replace("[[init]]", "rot = 1\n[[init]]"), "unknown key 'rot'"),
    (lambda s: s + "\n[init.tickets.imp]\nkind = \"adv\"\ndata = \"/x\"\ngpu = 2\n",
     "unknown key init[0].tickets[0].imp.'gpu'"),
])
def test_a_bad_spec_gets_one_line_naming_the_key_or_file(tmp_path, inputs, edit, message):
    path = kit.write_spec(str(tmp_path / "c.toml"), inputs, str(tmp_path / "runs"))
    with open(path) as f:
        text = edit(f.read())
    with open(path, "w") as f:
        f.write(text)
    done = kit.sweep_here("plan", path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: {path}: ") and message in done.stderr, \
        done.stderr
    assert not os.path.exists(tmp_path / "runs")


def test_a_ticket_an_imp_stage_will_make_is_waited_for(tmp_path, inputs):
    imp = f'\n[init.tickets.imp]\nkind = "std"\ndata = "{inputs["data"]}"\noverrides = ["--epochs", "2"]\n'
    c = load(tmp_path, inputs, tickets=f'[[init.tickets]]\nname = "imp"\ndir = "{tmp_path}/t"\nlevels = [1, 2]\n{imp}')
    rows = state.states(c)
    assert [r.run.id for r in rows if r.run.kind == "imp"] == ["imp:tiny/imp"]
    assert state.counts(rows) == {**dict.fromkeys(state.STATES, 0), "pending": 1 + 4, "waiting": 8}
    assert {r.detail for r in rows if r.state == "waiting"} == {f"for {tmp_path}/t/{k}-ticket.pth.tar" for k in (1, 2)}
    imp = next(r.run for r in rows if r.run.kind == "imp")
    assert imp.command[1].endswith("imp_std.sh")
    assert imp.command[2:5] == (inputs["init"], f"{tmp_path}/t", inputs["data"])


def _hold(save_dir: str) -> subprocess.Popen:
    """Another process holding SAVE_DIR's lease, as a running entry point does."""
    code = f"import sys, time; sys.path.insert(0, {ROOT!r}); from training import savedir; " \
           f"savedir.hold_save_dir({save_dir!r}); print('held', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=kit.ENV)
    assert proc.stdout.readline() == "held\n"
    return proc


@pytest.mark.slow
def test_plan_counts_are_exact_at_each_stage(tmp_path, inputs):
    c = load(tmp_path, inputs)
    ids = [r.id for r in c.runs]
    spec_path = str(tmp_path / "c.toml")

    def counts() -> dict:
        done = kit.sweep_here("plan", spec_path, "--json", str(tmp_path / "plan.json"), check=True)
        assert "left: " in done.stdout and " FLOP (2 per multiply-add, counted as the compute ledger" in done.stdout
        with open(tmp_path / "plan.json") as f:
            return {k: v for k, v in json.load(f)["counts"].items() if v}
    assert counts() == {"pending": 12}
    dirs = [os.path.join(c.root, i) for i in ids]
    for d in dirs[:4]:
        os.makedirs(d)
    with open(os.path.join(dirs[0], "results.json"), "w") as f:
        json.dump({"complete": True}, f)
    with open(os.path.join(dirs[1], "results.json"), "w") as f:
        json.dump({"complete": False}, f)  # an unfinished final test is not done
    open(os.path.join(dirs[1], "checkpoint.pth.tar"), "w").close()
    with open(os.path.join(dirs[2], "launch.json"), "w") as f:
        json.dump({"exit": 2, "error": "error: --lr x: invalid float value"}, f)
    holder = _hold(dirs[3])
    try:
        assert counts() == {"done": 1, "partial": 1, "failed": 1, "running": 1, "pending": 8}
        text = kit.sweep_here("plan", spec_path, check=True).stdout
        line = next(ln for ln in text.splitlines() if ln.startswith(ids[2] + " "))
        assert line.split() == [ids[2], "failed", "error:", "--lr", "x:", "invalid", "float", "value"]
        assert next(ln for ln in text.splitlines() if ln.startswith(ids[3] + " ")).split()[1:4] == \
            ["running", "pid", str(holder.pid)]
        shown = kit.sweep_here("status", spec_path, check=True).stdout
        assert "[###....." in shown and "1/12 done (8%)" in shown
    finally:
        holder.kill()
        holder.wait()
    # a dead holder's lease on this machine is stale at once: the next launch takes it over
    assert counts() == {"done": 1, "partial": 1, "failed": 1, "stale": 1, "pending": 8}


def _contents(folder: str) -> dict:
    """Every file's bytes, every folder's names (the holder's temp folder)."""
    paths = {n: os.path.join(folder, n) for n in os.listdir(folder)}
    return {n: open(p, "rb").read() if os.path.isfile(p) else sorted(os.listdir(p)) for n, p in paths.items()}


@pytest.mark.slow
def test_a_second_process_on_a_locked_save_dir_refuses_and_changes_nothing(tmp_path, inputs):
    save = str(tmp_path / "run")
    os.makedirs(save)
    with open(os.path.join(save, "config.json"), "w") as f:
        f.write("{}")
    holder = _hold(save)
    try:
        before = _contents(save)
        cmd = ["bash", os.path.join(ROOT, "script", "train_downstream", "std.sh"), "folder", inputs["init"], save, "",
               "--data", inputs["data"], *kit.TINY]
        done = subprocess.run(cmd, capture_output=True, text=True, env=kit.ENV, timeout=120)
        after = _contents(save)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: {save} is in use by pid {holder.pid} on ")
    assert after == before


def test_the_estimate_follows_the_readme_table():
    run = spec.Run("x", "transfer", "/nowhere", ("bash", os.path.join(ROOT, "script", "train_downstream",
                                                                        "adv_cifar.sh"), "cifar10", "w", "s", ""),
                   dataset="cifar10", mode="adv")
    hours = estimate.gpu_hours(estimate.run_flop(run))
    assert 1.5 < hours < 2.0  # README: ~1.8 h in bf16 for 100 epochs of PGD-10 on CIFAR (and its tests)
    assert 0 < estimate.run_flop(run, epochs_done=100) < 0.02 * estimate.run_flop(run)  # left: the final tests only
    assert status.bar(3, 12).endswith("3/12 done (25%)")


@pytest.mark.slow
def test_a_corrupt_image_stops_the_run_with_one_line_and_check_data_lists_it(tmp_path, inputs):
    import shutil
    data = str(tmp_path / "data")
    shutil.copytree(inputs["data"], data)
    bad = os.path.join(data, "train", "bee", "00005.png")
    with open(bad, "rb") as f:
        head = f.read()[:60]
    with open(bad, "wb") as f:
        f.write(head)
    save = str(tmp_path / "run")
    cmd = ["bash", os.path.join(ROOT, "script", "train_downstream", "std.sh"), "folder", inputs["init"], save, "",
           "--data", data, *kit.TINY, "-j", "2"]  # in DataLoader workers: the error crosses a process
    done = subprocess.run(cmd, capture_output=True, text=True, env=kit.ENV, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: image {bad} cannot be decoded")
    assert f"sweep.py check-data {data}" in done.stderr
    check = kit.sweep_here("check-data", data, inputs["data"])
    assert check.returncode == 1
    lines = check.stdout.splitlines()
    assert lines[0].startswith(f"{bad}: ") and f"{data}: 24 images checked: 1 unreadable images" in check.stdout
    assert f"{inputs['data']}: 24 images checked: OK" in check.stdout
    os.remove(os.path.join(data, "val", "cat", "00011.png"))
    os.rename(os.path.join(data, "val", "cat"), os.path.join(data, "val", "cow"))
    assert "class folders differ from train/ (e.g. 'cat')" in kit.sweep_here("check-data", data).stdout


def test_a_worker_error_reaches_run_cli_as_one_line():
    wrapped = errors.DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                               "call last):\n  File \"x.py\", line 1\ninfra.errors.DataError: image a.png cannot be decoded")
    assert errors.one_line(wrapped) == "image a.png cannot be decoded"


def test_slurm_task_checkpoint_stops_the_run_and_requeues_a_fresh_task(tmp_path):
    """What submitit calls on USR2 (time limit, preemption): the driver stops (recorded as interrupted, so the run
    is partial, not failed) and the resubmitted task runs the same command again (it resumes from SAVE_DIR)."""
    import threading

    pytest.importorskip("submitit")
    from campaign import slurm
    save = str(tmp_path / "run")
    run = spec.Run("r", "transfer", save, ("bash", "-c", "echo started; sleep 30"))
    task = slurm.Task(run, threads=1)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("error", _call(task)))
    thread.start()
    deadline = time.time() + 20
    while task.execution is None or "started" not in open(os.path.join(save, "stdout.txt")).read():
        assert time.time() < deadline
        time.sleep(0.05)
    again = task.checkpoint()
    thread.join(20)
    assert isinstance(again.function, slurm.Task) and again.function is not task and again.function.run == run
    assert "exit -15" in str(outcome["error"])  # the job's own call ends; submitit requeues `again`
    with open(os.path.join(save, "launch.json")) as f:
        record = json.load(f)
    assert record["exit"] is None and record["interrupted"] == 15
    assert state.state_of(run).state == "pending"  # no checkpoint.pth.tar in this stand-in: pending, not failed


def _call(task):
    try:
        task()
    except Exception as e:  # RunFailed
        return e


def test_the_campaign_reads_files_and_imports_no_torch_entry_point_or_model():
    code = ("import sys, sweep, campaign.slurm, campaign.local, campaign.datacheck; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'models', 'engine', 'transfer', "
            "'lottery', 'runner', 'dataset', 'report', 'reporting') and m not in ('lottery', 'lottery.recipes', "
            "'transfer', 'transfer.recipes') or m.startswith('main_')); print(bad)")  # the recipes: plain data
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=kit.ENV)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.slow
def test_the_example_spec_is_the_papers_campaign(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths are relative to where sweep.py runs
    open("robust_linf_eps4.ckpt", "w").close()
    c = spec.load(os.path.join(ROOT, "campaign", "example.toml"))
    cells = 3 * 3 * 2 * 3  # 3 datasets x 3 fractions x 2 modes x 3 seeds
    tickets = {"aimp": 12, "imp": 12, "aimp-eb": 5, "aimp-short": 5, "aimp-diet": 5, "aimp-fgsm": 5, "omp": 1}
    assert len(c.runs) == len(tickets) + cells * (1 + sum(tickets.values()))  # an IMP stage per family; dense too
    paper = [r for r in c.runs if r.kind == "transfer" and r.id.split("/")[2].rsplit("-", 1)[0] in ("dense", "aimp")]
    assert len(paper) == cells * 13  # the paper's campaign: dense + A-IMP tickets 1-12
    assert c.root == str(tmp_path / "sweep")
    rows = state.states(c)
    assert state.counts(rows)["waiting"] == cells * sum(tickets.values())
    assert 1800 < status.summary(c, rows)["left_gpu_hours_bf16"] < 2300


def test_the_paper_spec_plans_dense_aimp_and_imp_tickets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    open("robust_linf_eps4.ckpt", "w").close()
    c = spec.load(os.path.join(ROOT, "campaign", "paper.toml"))
    cells = 3 * 3 * 2 * 3  # 3 datasets x 3 fractions x 2 modes x 3 seeds
    assert sorted(r.id for r in c.runs if r.kind == "imp") == ["imp:robust/aimp", "imp:robust/imp"]
    families = {r.id.split("/")[2].rsplit("-", 1)[0] for r in c.runs if r.kind == "transfer"}
    assert families == {"dense", "aimp", "imp"}
    assert len(c.runs) == 2 + cells * (1 + 12 + 12)  # two IMP stages; dense + tickets 1-12 of each family
    rows = state.states(c)
    assert state.counts(rows)["waiting"] == cells * 24 and state.counts(rows)["pending"] == 2 + cells
    assert 1000 < status.summary(c, rows)["left_gpu_hours_bf16"] < 1200


@pytest.mark.slow
def test_a_corrupt_test_image_keeps_the_last_checkpoint_and_a_fixed_file_resumes_to_the_same_results(tmp_path,
                                                                                                     inputs):
    from datafiles import fabricate
    data = fabricate.make_image_folder(str(tmp_path / "data"), n_per_class=4, size=16, splits=("train", "val", "test"))
    bad = os.path.join(data, "test", "cat", "00010.png")
    with open(bad, "rb") as f:
        good = f.read()

    def command(save: str) -> list[str]:
        return ["bash", os.path.join(ROOT, "script", "train_downstream", "std.sh"), "folder", inputs["init"], save, "",
                "--data", data, *kit.TINY, "--epochs", "2"]

    def transfer_here(save: str) -> int:
        """The driver's command as it runs its entry point, in this process (no torch import of its own)."""
        import main_train_downstream
        argv = _recorded_argv(command(save), tmp_path)
        assert argv[:2] == ["-u", os.path.join(ROOT, "main_train_downstream.py")], argv
        return kit.exit_status(main_train_downstream.main, argv[2:])
    reference = str(tmp_path / "reference")
    assert transfer_here(reference) == 0
    with open(bad, "wb") as f:
        f.write(good[:50])  # truncated: read only by the final test, after both epochs
    save = str(tmp_path / "run")
    done = subprocess.run(command(save), capture_output=True, text=True, env=kit.ENV, timeout=300)  # the driver
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and f"image {bad} cannot be decoded" in done.stderr
    assert len(checkpoint.read_jsonl(os.path.join(save, "metrics.jsonl"))) == 2
    assert checkpoint.load_own(os.path.join(save, "checkpoint.pth.tar"))["epoch"] == 2  # the last one, intact
    assert not os.path.exists(os.path.join(save, "results.json"))
    with open(bad, "wb") as f:
        f.write(good)
    assert transfer_here(save) == 0  # resumes: only the final test is left
    assert len(checkpoint.read_jsonl(os.path.join(save, "metrics.jsonl"))) == 2  # no epoch trained again
    assert kit.results(save) == kit.results(reference)


@pytest.mark.parametrize("sig, state_name, cause", [
    (signal.SIGKILL, "failed", "killed by SIGKILL (out of memory?"),   # an OOM kill never reads as a preemption
    (signal.SIGSEGV, "failed", "killed by SIGSEGV (a crash in native code)"),
    (signal.SIGABRT, "failed", "killed by SIGABRT (an abort in native code"),
    (signal.SIGTERM, "pending", None),                                  # stopped from outside: resumes
])
def test_a_run_killed_by_a_signal_nobody_sent_to_stop_it_is_failed_with_the_cause(tmp_path, sig, state_name, cause):
    save = str(tmp_path / "run")
    run = spec.Run("r", "transfer", save, ("bash", "-c", f"echo started; kill -{int(sig)} $$"))
    code = execute.execute(run)
    assert code == -sig
    record = json.load(open(os.path.join(save, "launch.json")))
    row = state.state_of(run)
    assert row.state == state_name
    if cause:
        assert record["exit"] == 128 + sig and row.detail.startswith(cause) and row.exit == 128 + sig
    else:
        assert record["exit"] is None and record["interrupted"] == sig


def test_our_own_stop_is_an_interruption_even_when_it_ends_in_sigkill(tmp_path):
    """terminate(): SIGTERM, then SIGKILL after the grace period; either way the run was stopped, not failed."""
    save = str(tmp_path / "run")
    ignore_term = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('started', flush=True); "
                   "time.sleep(30)")
    run = spec.Run("r", "transfer", save, (sys.executable, "-c", ignore_term))
    ex = execute.Execution(run, execute.child_env())
    deadline = time.time() + 20
    while "started\n" not in open(os.path.join(save, "stdout.txt")).read().splitlines(keepends=True):
        assert time.time() < deadline
        time.sleep(0.05)
    ex.terminate(grace=0.5)
    assert ex.wait() == -signal.SIGKILL
    record = json.load(open(os.path.join(save, "launch.json")))
    assert record["exit"] is None and record["interrupted"] == signal.SIGKILL
    assert state.state_of(run).state == "pending"


# ---------------------------------------------------------------------------- IMP stages: sizing, flags, inputs
def _imp_spec(tmp_path, inputs, stage: str = "", extra: str = "") -> spec.Campaign:
    imp = f'\n[init.tickets.imp]\nkind = "adv"\ndata = "{inputs["data"]}"\ngpus = 4\n{stage}'
    return load(tmp_path, inputs, extra=extra,
                tickets=f'[[init.tickets]]\nname = "aimp"\ndir = "{tmp_path}/t"\nlevels = [1, 2]\n{imp}')


def test_an_imp_stage_carries_its_sizing_its_inputs_and_the_campaigns_imp_flags(tmp_path, inputs):
    c = _imp_spec(tmp_path, inputs, 'cpus_per_gpu = 8\nmem_gb_per_gpu = 60\ntime = "1-12:00:00"\n'
                  'partition = "big"\noverrides = ["--epochs", "30"]\n', extra='imp_overrides = ["--amp", "bf16"]')
    imp = next(r for r in c.runs if r.kind == "imp")
    assert imp.resources == spec.Resources(8, 60, 36 * 60, "big") and imp.gpus == 4
    assert (imp.resources.cpus(imp.gpus), imp.resources.mem_gb(imp.gpus)) == (32, 240)
    # the drivers' defaults, the campaign's imp_overrides, then the stage's own (argparse keeps the last value)
    assert imp.command[5:] == ("--amp", "bf16", "--epochs", "30")
    assert imp.inputs == (inputs["init"], inputs["data"])
    transfer = next(r for r in c.runs if r.id == "tiny/folder-1/aimp-2/adv/s1")
    assert transfer.resources is None and "bf16" not in transfer.command  # imp_overrides reach IMP stages only
    assert transfer.inputs == (inputs["init"], inputs["data"], f"{tmp_path}/t/2-ticket.pth.tar")
    assert next(r for r in c.runs if r.id == "tiny/folder-1/dense/std/s1").inputs == (inputs["init"], inputs["data"])
    default = next(r for r in _imp_spec(tmp_path, inputs).runs if r.kind == "imp")
    assert default.resources == spec.Resources() and default.resources.cpus(4) == 4 * spec.Resources.cpus_per_gpu


def test_init_imp_overrides_come_after_the_campaigns(tmp_path, inputs):
    imp = f'\n[init.tickets.imp]\nkind = "std"\ndata = "{inputs["data"]}"\noverrides = ["--lr", "0.1"]\n'
    path = kit.write_spec(str(tmp_path / "c.toml"), inputs, str(tmp_path / "runs"), extra='imp_overrides = ["-b", "64"]',
                          tickets=f'imp_overrides = ["-b", "32"]\n[[init.tickets]]\nname = "imp"\n'
                                  f'dir = "{tmp_path}/t"\nlevels = [1]\n{imp}')
    run = next(r for r in spec.load(path).runs if r.kind == "imp")
    assert run.command[5:] == ("-b", "64", "-b", "32", "--lr", "0.1")


@pytest.mark.parametrize("text, minutes", [("90", 90), (90, 90), ("1:30", 2), ("02:00:00", 120), ("1-12", 36 * 60),
                                           ("1-0:30", 24 * 60 + 30), ("2-00:00:01", 2 * 1440 + 1)])
def test_slurm_time_formats_are_read_as_whole_minutes(text, minutes):
    assert spec.parse_time_min(text, "--time") == minutes


@pytest.mark.parametrize("text", ["soon", "0", "0:30", "1:2:3:4", "", "-5", True])
def test_a_bad_time_is_one_line_naming_where(text):
    with pytest.raises(errors.UserError, match=r"^x\.time ="):
        spec.parse_time_min(text, "x.time =")


@pytest.mark.parametrize("stage, message", [
    ('time = "soon"\n', "init[0].tickets[0].imp.time = 'soon': expected minutes, HH:MM:SS or D-HH:MM:SS"),
    ("cpus_per_gpu = 0\n", "init[0].tickets[0].imp.cpus_per_gpu = 0: at least 1"),
    ('mem_gb_per_gpu = "lots"\n', "init[0].tickets[0].imp.mem_gb_per_gpu = 'lots': expected int"),
    ('partition = ""\n', "init[0].tickets[0].imp.partition = '': a partition name"),
    ("partition = 3\n", "init[0].tickets[0].imp.partition = 3: expected str"),
    ('cpus = 4\n', "unknown key init[0].tickets[0].imp.'cpus'"),
])
def test_a_bad_imp_sizing_key_is_one_line_naming_it(tmp_path, inputs, stage, message):
    with pytest.raises(spec.SpecError) as info:
        _imp_spec(tmp_path, inputs, stage)
    assert str(info.value) == f"{tmp_path / 'c.toml'}: {message}" or \
        str(info.value).startswith(f"{tmp_path / 'c.toml'}: {message}"), str(info.value)
    assert "\n" not in str(info.value)


def test_a_family_with_several_imp_seeds_gets_a_stage_and_a_ticket_folder_per_seed(tmp_path, inputs):
    c = _imp_spec(tmp_path, inputs, 'seeds = [1, 2]\noverrides = ["--epochs", "30"]\n')
    stages = [r for r in c.runs if r.kind == "imp"]
    assert [r.id for r in stages] == ["imp:tiny/aimp/seed1", "imp:tiny/aimp/seed2"]
    for k, stage in enumerate(stages, 1):
        assert stage.save_dir == f"{tmp_path}/t/seed{k}"
        assert stage.command[5:] == ("--epochs", "30", "--seed", str(k))  # the seed last: argparse keeps it
        assert stage.makes == (f"{tmp_path}/t/seed{k}/1-ticket.pth.tar", f"{tmp_path}/t/seed{k}/2-ticket.pth.tar")
    transfer = next(r for r in c.runs if r.id == "tiny/folder-1/aimp-seed2-1/std/s2")
    assert transfer.needs == f"{tmp_path}/t/seed2/1-ticket.pth.tar"
    assert len([r for r in c.runs if r.kind == "transfer"]) == (1 + 2 * 2) * 2 * 2  # dense + 2 seeds x 2 levels
    assert "--seed" not in next(r for r in _imp_spec(tmp_path, inputs).runs if r.kind == "imp").command


@pytest.mark.parametrize("stage, message", [
    ("seeds = []\n", "init[0].tickets[0].imp.seeds = []: expected a non-empty list of int"),
    ("seeds = [1, 1]\n", "init[0].tickets[0].imp.seeds = [1, 1]: distinct IMP seeds >= 0"),
    ('seeds = [1, 2]\noverrides = ["--seed", "3"]\n', "init[0].tickets[0].imp.overrides: --seed and seeds"),
])
def test_bad_imp_seeds_are_one_line_naming_the_key(tmp_path, inputs, stage, message):
    with pytest.raises(spec.SpecError) as info:
        _imp_spec(tmp_path, inputs, stage)
    assert str(info.value).startswith(f"{tmp_path / 'c.toml'}: {message}") and "\n" not in str(info.value)


def test_imp_overrides_must_be_a_list_of_flags(tmp_path, inputs):
    with pytest.raises(spec.SpecError, match=r"imp_overrides = '--amp bf16': expected a list of flags"):
        _imp_spec(tmp_path, inputs, extra='imp_overrides = "--amp bf16"')


def _recorded_argv(command: tuple[str, ...], tmp_path) -> list[str]:
    """The argv an IMP stage's driver hands its entry point (DOUBLEWIN_PY is a recorder that trains nothing)."""
    record, recorder = tmp_path / "argv.json", tmp_path / "python"
    recorder.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    recorder.chmod(0o755)
    done = subprocess.run(list(command), env={**kit.ENV, "DOUBLEWIN_PY": str(recorder)}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    with open(record) as f:
        return json.load(f)


def _stage_levels(stage, tmp_path) -> tuple[set[int], object]:
    """The tickets an example IMP stage's flags make (as its driver passes them to its entry point), and its
    parsed config."""
    import main_imp_adv
    import main_imp_std
    from lottery import cli as imp_cli
    argv = _recorded_argv(stage.command, tmp_path)
    entry = main_imp_adv if stage.mode == "adv" else main_imp_std
    args = entry.get_args_parser().parse_args(argv[2:])
    assert args.amp == "bf16"  # the campaign's imp_overrides reach every stage
    args.amp = None  # a CPU machine runs no bf16; the number of levels does not depend on it
    cfg = imp_cli.config_from_args(args)
    return ({cfg.omp_level} if cfg.omp_sparsity is not None else set(range(1, cfg.levels + 2))), cfg


@pytest.mark.slow
def test_the_example_imp_stages_make_every_ticket_they_transfer(tmp_path, monkeypatch, inputs):
    """Each IMP stage's flags, as its driver passes them, parsed by its entry point: the deepest ticket it makes is
    the deepest its family transfers (no level trained for a ticket nobody uses); the families are the seven of
    the question. Then A-IMP's levels loop for real at tiny scale with the same number of levels (--prune_epoch 1):
    the tickets it writes are exactly the levels the spec transfers."""
    import main_imp_adv
    monkeypatch.chdir(tmp_path)
    open("robust_linf_eps4.ckpt", "w").close()
    c = spec.load(os.path.join(ROOT, "campaign", "example.toml"))
    families = {}
    for stage in (r for r in c.runs if r.kind == "imp"):
        made, cfg = _stage_levels(stage, tmp_path)
        wanted = {int(os.path.basename(f).split("-")[0]) for f in stage.makes}
        transferred = {int(os.path.basename(r.needs).split("-")[0]) for r in c.runs
                       if r.kind == "transfer" and r.needs and os.path.dirname(r.needs) == stage.save_dir}
        assert wanted == transferred and transferred <= made and max(made) == max(transferred), stage.id
        families[cfg.ticket_family] = made
    assert set(families) == {"aimp", "imp", "aimp-eb", "aimp-short", "aimp-diet0.1", "aimp-fgsm", "omp"}
    levels = max(families["aimp"]) - 1
    save = str(tmp_path / "aimp")
    init = os.path.join(str(tmp_path), "init3.pth")
    import shutil
    shutil.copy(inputs["init3"], init)
    argv = [inputs["data"], "--init", init, "--save_dir", save, "-a", "resnet_tiny", "--small-input", "--image-size",
            "16", "--resize-size", "16", "-b", "12", "-j", "0", "--no-progress", "--train_step", "1", "--epochs",
            str(levels), "--prune_epoch", "1"]
    assert kit.exit_status(main_imp_adv.main, argv) == 0  # in this process: torch is imported here already
    made = {int(n.split("-")[0]) for n in os.listdir(save) if n.endswith("-ticket.pth.tar")}
    assert made == families["aimp"] == set(range(1, 13))  # every ticket it transfers, and no more


def test_the_slurm_defaults_are_declared_once():
    """`sweep.py run --slurm` without other flags runs with SlurmOptions' own defaults; a flag changes its field."""
    from campaign import slurm
    import sweep
    parse = sweep.get_args_parser().parse_args
    assert sweep.slurm_options(parse(["run", "c.toml", "--slurm"])) == slurm.SlurmOptions()
    opts = sweep.slurm_options(parse(["run", "c.toml", "--slurm", "--time", "1-00:30", "--max-requeue", "3"]))
    assert (opts.time_min, opts.max_requeue) == (24 * 60 + 30, 3)
