"""The shortened demo (`python -m demo.run --quick`): same code path as the Quick start, through the real bash scripts."""
from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _demo(out: str, capfd) -> str:
    """`python -m demo.run --quick --out OUT`, its main() in this process (no second torch import): what it and
    the scripts it starts print (their stdout)."""
    from demo import run as demo
    assert demo.main(["--quick", "--out", out]) == 0  # a failed step raises SystemExit, naming it
    return capfd.readouterr().out


def test_the_early_bird_summary_tells_a_detection_from_a_shorter_level(tmp_path):
    from demo import run as demo
    from infra import checkpoint
    from infra import paths

    class Long(demo.DemoConfig):
        epochs_per_level = 6
    cfg = Long(out=str(tmp_path))
    fam = demo.Family("robust", "aimp-eb", "eb", ("--early-bird", "0.01", "--early-bird-window", "2"), (2, 3, 4), "EB")
    levels = {1: [None, 0.004], 2: [None, 0.03, 0.02, 0.005], 3: [None, 0.05, 0.04, 0.03, 0.02, 0.02]}
    os.makedirs(tmp_path / "tickets" / "eb")
    for level, distances in levels.items():
        for i, d in enumerate(distances):
            stop = level < 3 and i == len(distances) - 1
            checkpoint.append_jsonl(str(tmp_path / "tickets" / "eb" / paths.METRICS),
                                    {"level": level, "epoch": 6 * (level - 1) + i, "mask_distance": d,
                                     "early_bird_stop": stop})
    text = demo.early_bird_summary(cfg, fam)
    assert "level 1: distances 0.0040; stopped after 2 of 6 epochs, as early as a window of 2 allows" in text
    assert "level 2: distances 0.0300, 0.0200, 0.0050; stopped after 4 of 6 epochs: detected" in text
    assert "level 3: distances 0.0500, 0.0400, 0.0300, 0.0200, 0.0200; trained all 6 epochs" in text
    assert text.endswith("early-bird detected in 1 of 3 levels, saving 6 of 18 epochs")
    with open(tmp_path / "tickets" / "eb" / paths.METRICS, "w") as f:  # only the window's stop
        f.write(json.dumps({"level": 1, "epoch": 0, "mask_distance": None}) + "\n" +
                json.dumps({"level": 1, "epoch": 1, "mask_distance": 0.002, "early_bird_stop": True}) + "\n")
    assert "early-bird detected nothing: where it stopped, the distances were under 0.01 from the start, so it saved " \
        "4 of 6 epochs only as shorter levels (--prune_epoch 2) do" in demo.early_bird_summary(cfg, fam)


COST = "ticket families, the verdict against what it cost"  # its device-hours are measured: they differ per run


def _table(stdout: str) -> str:
    """The report the demo prints, less the cost tables' measured hours (every verdict and number else)."""
    start = stdout.index("[5/5]")
    lines, cost = [], False
    for line in stdout[start:stdout.index("Done in", start)].splitlines():
        cost = line.startswith(COST) or (cost and line.startswith("  "))
        lines.append(" ".join(line.split()[:3]) if cost else line)  # family, tickets, highest double-win
    return "\n".join(lines)


@pytest.mark.slow
def test_quick_demo_runs_end_to_end_and_replays_a_run_exactly(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # each run the demo starts: one thread, as on a busy 2-core box
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # the pre-training sets it: restored after
    out = str(tmp_path / "demo")
    first = _demo(out, capfd)
    for stage in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert stage in first
    assert "highest double-win sparsity" in first.lower() and COST in first
    assert f"{out}/report/report.md" in first  # the last lines say where the files are
    report = os.path.join(out, "report")
    for name in ("report.md", "report.csv", "report.json"):
        assert os.path.getsize(os.path.join(report, name)) > 0
    assert any(f.endswith(".png") for f in os.listdir(report))
    with open(os.path.join(report, "report.json")) as f:
        summary = json.load(f)
    assert summary  # machine-readable report

    tickets = sorted(f for f in os.listdir(os.path.join(out, "tickets", "robust")) if f.endswith("-ticket.pth.tar"))
    assert len(tickets) >= 3  # A-IMP for at least 3 levels
    runs = os.path.join(out, "transfer", "robust", "folder-1")  # the campaign's layout (the transfer stage is one)
    last = tickets[-1].split("-")[0]  # early-bird A-IMP and OMP: their deepest ticket
    assert sorted(os.listdir(runs)) == sorted(["dense", f"aimp-eb-{last}", f"omp-{last}"] +
                                              [f"aimp-{t.split('-')[0]}" for t in tickets])
    costs = first[first.index("ticket finding, measured on this CPU"):].splitlines()
    eb, omp = (next(ln.split() for ln in costs if ln.split()[1:2] == [name]) for name in ("aimp-eb", "omp"))
    assert int(eb[2]) > 0 and float(eb[4]) > 0 and (omp[2], omp[3], omp[4]) == ("0", "0.0", "0.0")  # OMP: no training
    assert "--slurm" in first  # the SLURM command of the same campaign at paper scale
    assert "early-bird saved no epoch" in first  # 2-epoch levels, a window of 2: nothing to save, and said

    # Determinism: remove one finished run, re-run the demo: finished stages are skipped, the removed run is
    # redone with the same seed, and the same numbers and the same table come out.
    victim = os.path.join(runs, "aimp-2", "adv", "s1")
    with open(os.path.join(victim, "results.json")) as f:
        before = json.load(f)
    shutil.rmtree(victim)
    second = _demo(out, capfd)
    assert second.count("start  ") == 1  # the campaign launched only what was not done
    assert second.count("exists, skipped") == 1 and second.count("holds its tickets, skipped") == 3  # each family
    with open(os.path.join(victim, "results.json")) as f:
        after = json.load(f)
    for key in ("best_sa", "best_ra", "sparsity"):
        assert after[key] == before[key], key
    assert _table(second) == _table(first)


def test_the_demo_prints_each_ticket_cells_call_with_its_reason(tmp_path):
    """The demo's verdict lines come from the report's own machinery (its report.json), one per ticket cell."""
    sys.path.insert(0, ROOT)
    from demo.run import verdict_lines
    from reporting import analysis, tables
    from reporting.runs import Options
    from verdictkit import write_cell

    write_cell(tmp_path, "dense", 0.0, 90.0, images=120)
    write_cell(tmp_path, "close", 0.5, 89.5, images=120)
    rep = analysis.collect(str(tmp_path), Options())
    path = tmp_path / "report.json"
    path.write_text(json.dumps(tables.summary(rep)))
    lines = verdict_lines(str(path)).splitlines()
    assert lines[0].startswith("the verdict per ticket (report.py --checkpoint sa --verdict stat: one-sided 95% bounds")
    assert lines[0].endswith("margin 1 accuracy point; see docs/VERDICT.md):")
    assert lines[1].startswith("  (one run per ticket and per dense model: every bound, a 'not double-win' one too, "
                               "covers only the test set's sampling")  # one seed: the caveat of every call
    assert len(lines) == 3 and lines[2].split()[:4] == ["robust", "aimp", "50.00%", "inconclusive:"]
    assert "std-SA CI " in lines[2] and "crosses -1" in lines[2] and "seeds per side" in lines[2]


def test_the_study_replicates_ticket_finding_and_transfer_on_a_large_test_set(tmp_path):
    """`--study`'s campaign, written by the demo's own code and read by the campaign tool (nothing run): every
    trained family has 5 IMP stages (one per IMP seed), each seed's tickets transferred with that transfer seed
    only (paired with the dense run of that seed), dense and OMP with all 5 seeds, the test set 1000 images."""
    sys.path.insert(0, ROOT)
    from campaign import spec
    from demo import data as demo_data
    from demo import run as demo
    from infra import paths

    cfg = demo.DemoConfig(out=str(tmp_path), study=True)
    os.makedirs(tmp_path / "pretrained")
    for kind in cfg.kinds:
        (tmp_path / "pretrained" / f"{kind}.pth").touch()
    for fam in (f for f in demo.families(cfg) if f.name == "omp"):  # OMP is run by the demo itself: its file
        os.makedirs(tmp_path / "tickets" / fam.folder)
        (tmp_path / "tickets" / fam.folder / os.path.basename(paths.imp_ticket("", fam.levels[0]))).touch()
    campaign = spec.load(demo.write_campaign(cfg))
    imp = [r for r in campaign.runs if r.kind == "imp"]
    assert sorted(r.id for r in imp) == [f"imp:{k}/{f}/seed{s}" for k, f in (("robust", "aimp"), ("standard", "imp"))
                                         for s in (1, 2, 3, 4, 5)]
    for r in imp:  # the demo's IMP flags, and the stage's own seed
        assert r.command[-2:] == ("--seed", r.id[-1]) and "--rate" in r.command
    transfer = campaign.transfer_runs()
    seeds = {}
    for r in transfer:
        cell, seed = r.id.rsplit("/s", 1)
        seeds.setdefault(cell, set()).add(int(seed))
    assert len(seeds) == 2 * (1 + 5 + 1) * 2  # inits x (dense, 5 IMP seeds' tickets, OMP) x modes
    for cell, s in seeds.items():
        paired = "-seed" in cell
        assert s == ({int(cell.split("-seed")[1].split("-")[0])} if paired else {1, 2, 3, 4, 5}), (cell, s)
    assert len(transfer) == 60
    assert cfg.margin == 3.0 and cfg.test_per_class * len(demo_data.DOWNSTREAM) == 1000
    assert cfg.checkpoint == "last" and demo.DemoConfig(out="x").checkpoint == "sa"  # the main demo: the paper's
    assert demo.DemoConfig(out="x").test_per_class * len(demo_data.DOWNSTREAM) == 120  # the main demo's is unchanged
    assert cfg.out in demo.ticket_dirs(cfg, demo.families(cfg)[0])[0]


def test_study_data_has_the_larger_test_set_only(tmp_path, monkeypatch):
    from demo import data as demo_data
    sizes = {}
    monkeypatch.setattr(demo_data, "write_task", lambda root, classes, counts, seed: sizes.setdefault(
        os.path.basename(root), counts) and root)
    demo_data.make_demo_data(str(tmp_path), seed=0, test=250)
    assert sizes["downstream"] == {"train": 60, "val": 20, "test": 250} and sizes["pretrain"] == {"train": 80, "val": 24}


def test_quick_and_study_are_refused_together():
    from demo import run as demo
    with pytest.raises(SystemExit, match="--quick and --study"):
        demo.DemoConfig(out="x", quick=True, study=True)


def test_the_one_seed_caveat_is_left_out_where_seeds_were_replicated(tmp_path):
    sys.path.insert(0, ROOT)
    from demo.run import verdict_lines
    from reporting import analysis, tables
    from reporting.runs import Options
    from verdictkit import write_cell

    for seed in (1, 2, 3):
        write_cell(tmp_path, f"dense-s{seed}", 0.0, 90.0 + seed / 10, images=1000, seed=seed)
        write_cell(tmp_path, f"close-s{seed}", 0.5, 89.5 + seed / 10, images=1000, seed=seed)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(tables.summary(analysis.collect(str(tmp_path), Options(margin=3.0)))))
    lines = verdict_lines(str(path)).splitlines()
    assert "margin 3 accuracy points;" in lines[0] and len(lines) == 2 and "one run per ticket" not in lines[1]
