"""report.py: the double-win verdicts on hand-written results.json trees (known answers), the std and tolerance
rules, checkpoint choice, problem runs listed, outputs written and parsable, CLI errors."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest

import report
from infra import paths
from infra.errors import UserError, run_cli
from reporting import analysis, output
from reporting import tables as report_tables
from reporting.runs import Options, init_label, read_sparsity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = math.sqrt(0.5)  # sample std (ddof=1) of two values one point apart


def write_run(root, name, *, mode, sparsity, sa, ra, seed=1, init="/inits/adv_r50.pth", source="imp",
              best_ra=None, aa=None, **extra):
    """One downstream run folder in the results.json schema of docs/INTERNALS.md."""
    best = {"epoch": 9, "val_sa": sa, "val_ra": ra, "test_sa": sa, "test_ra": ra}
    if aa is not None:
        best["test_aa_ra"] = aa
    data = {"complete": True, "dataset": "cifar10", "data_number": 1.0, "subset": "first", "mode": mode,
            "arch": "resnet50", "seed": seed, "epochs": 150, "init": init, "init_format": "torchvision",
            "ticket": None if sparsity == 0 else f"/imp/{sparsity}-ticket.pth.tar", "sparsity": sparsity,
            "ticket_meta": {} if sparsity == 0 else {"level": 1, "source": source},
            "train_attack": {"kind": "pgd"} if mode == "adv" else None,
            "test_attack": {"kind": "pgd", "eps": 8 / 255, "eps_255": 8, "alpha": 2 / 255, "steps": 20},
            "best_sa": best, "best_ra": best_ra or best, "wall_time_s": 1.0, "versions": {"torch": "2.14.1"}}
    data.update(extra)
    folder = os.path.join(str(root), name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write("{}")
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(data, f)
    return folder


def write_cell(root, prefix, sparsity, std_sa, std_ra, adv_sa, adv_ra, seed=1, **kw):
    write_run(root, f"{prefix}/std_s{seed}", mode="std", sparsity=sparsity, sa=std_sa, ra=std_ra, seed=seed, **kw)
    write_run(root, f"{prefix}/adv_s{seed}", mode="adv", sparsity=sparsity, sa=adv_sa, ra=adv_ra, seed=seed, **kw)


@pytest.fixture
def paper_tree(tmp_path):
    """Dense 90/50/85/55 (std-SA/std-RA/adv-SA/adv-RA) from two seeds one point apart (std sqrt(0.5) ~ 0.71);
    tickets at 20, 48.8, 67.2 (each 0.6 below dense: inside the std, outside a 0.5 tolerance), and 83.2% sparsity
    (adv-RA one point below). Known answer: highest double-win sparsity 67.2%."""
    root = tmp_path / "runs"
    write_cell(root, "dense", 0.0, 89.5, 49.5, 84.5, 54.5, seed=1)
    write_cell(root, "dense", 0.0, 90.5, 50.5, 85.5, 55.5, seed=2)
    write_cell(root, "t20", 0.2, 90.2, 50.1, 85.3, 55.2)
    write_cell(root, "t48", 0.488, 89.6, 49.8, 84.9, 54.7)
    write_cell(root, "t67", 0.672, 89.4, 49.4, 84.4, 54.4)
    write_cell(root, "t83", 0.832, 89.5, 49.5, 84.5, 54.0)
    return root


def rows_by_sparsity(rep):
    (group,) = rep.groups
    return {r.sparsity: r for r in group.rows}


def test_known_double_win(paper_tree):
    rep = analysis.collect(str(paper_tree), Options(verdict="point"))
    (group,) = rep.groups
    assert group.key == ("adv_r50", "cifar10", 1.0) and group.runs == 12 and rep.runs_read == 12
    assert [r.sparsity for r in group.rows] == [0.0, 0.2, 0.488, 0.672, 0.832]
    rows = rows_by_sparsity(rep)
    assert [rows[s].double_win for s in (0.0, 0.2, 0.488, 0.672, 0.832)] == [False, True, True, True, False]
    assert rows[0.832].status == "fails adv-RA"
    assert rows[0.832].match == {("std", "sa"): True, ("std", "ra"): True, ("adv", "sa"): True, ("adv", "ra"): False}
    assert group.highest().sparsity == 0.672
    dense = rows[0.0].cells
    assert dense[("std", "sa")].mean == pytest.approx(90.0) and dense[("std", "sa")].n == 2
    assert dense[("adv", "ra")].std == pytest.approx(S)
    assert all(m == pytest.approx(S) and "std of 2 dense seeds" in why for m, why in group.margins.values())
    text = report_tables.render_text(rep)
    assert "highest double-win sparsity: 67.20% (imp)" in text
    assert "best-SA" in text and "--tolerance 0.5" in text and "--verdict point" in text and "12 runs read" in text


def test_std_rule_overrides_tolerance(tmp_path):
    """With >= 2 dense seeds the margin is their std (0.71), whatever --tolerance says."""
    write_cell(tmp_path, "dense", 0.0, 89.5, 49.5, 84.5, 54.5, seed=1)
    write_cell(tmp_path, "dense", 0.0, 90.5, 50.5, 85.5, 55.5, seed=2)
    write_cell(tmp_path, "inside", 0.5, 89.30, 49.30, 84.30, 54.30)   # 0.70 below
    write_cell(tmp_path, "outside", 0.6, 89.27, 49.27, 84.27, 54.27)  # 0.73 below
    for tol in (0.0, 5.0):
        rows = rows_by_sparsity(analysis.collect(str(tmp_path), Options(verdict="point", tolerance=tol)))
        assert rows[0.5].double_win and not rows[0.6].double_win
        assert rows[0.6].status == "fails std-SA, std-RA, adv-SA, adv-RA"


def test_tolerance_rule_single_seed(tmp_path):
    write_cell(tmp_path, "dense", 0.0, 90.0, 50.0, 85.0, 55.0)
    write_cell(tmp_path, "below", 0.5, 89.6, 49.6, 84.6, 54.6)   # 0.4 below
    write_cell(tmp_path, "above", 0.9, 91.0, 51.0, 86.0, 56.0)   # better counts
    loose = rows_by_sparsity(analysis.collect(str(tmp_path), Options(verdict="point", tolerance=0.5)))
    tight = rows_by_sparsity(analysis.collect(str(tmp_path), Options(verdict="point", tolerance=0.3)))
    assert loose[0.5].double_win and not tight[0.5].double_win
    assert loose[0.9].double_win and tight[0.9].double_win
    assert rows_by_sparsity(analysis.collect(str(tmp_path), Options(verdict="point", tolerance=0.4)))[0.5].double_win
    (group,) = analysis.collect(str(tmp_path), Options(verdict="point", tolerance=0.3)).groups
    assert group.margins[("std", "sa")] == (0.3, "tolerance, 1 dense seed")


def test_threshold_is_inclusive_despite_float_rounding(tmp_path):
    write_cell(tmp_path, "dense", 0.0, 50.1, 55.7, 50.1, 55.7)
    write_cell(tmp_path, "ticket", 0.5, 49.8, 55.3, 49.8, 55.3)  # 50.1 - 0.3 == 49.800000000000004 in floats
    rows = rows_by_sparsity(analysis.collect(str(tmp_path), Options(verdict="point", tolerance=0.3)))
    assert rows[0.5].match == {("std", "sa"): True, ("std", "ra"): False, ("adv", "sa"): True, ("adv", "ra"): False}
    assert rows_by_sparsity(analysis.collect(str(tmp_path), Options(verdict="point", tolerance=0.4)))[0.5].double_win


def test_incomplete_rows_are_not_double_win(tmp_path):
    write_cell(tmp_path, "dense", 0.0, 90.0, 50.0, 85.0, 55.0)
    write_run(tmp_path, "std_only", mode="std", sparsity=0.5, sa=95.0, ra=55.0)
    write_cell(tmp_path, "other/t", 0.5, 95.0, 55.0, 95.0, 55.0, init="/w/other.pth")
    rep = analysis.collect(str(tmp_path), Options(verdict="point"))
    (row,) = [r for r in rep.groups[0].rows if not r.dense]
    assert not row.double_win and row.status == "missing adv-SA, adv-RA"
    assert row.match == {("std", "sa"): True, ("std", "ra"): True, ("adv", "sa"): None, ("adv", "ra"): None}
    other = rep.groups[1]
    assert other.key[0] == "other" and other.highest() is None
    assert other.rows[0].status == "no dense run for std-SA, std-RA, adv-SA, adv-RA"
    assert any("no dense run" in n for n in other.notes)
    assert "missing" in report_tables.render_text(rep)


def test_checkpoint_choice(tmp_path):
    low = {"epoch": 3, "test_sa": 80.0, "test_ra": 60.0}
    write_cell(tmp_path, "dense", 0.0, 90.0, 50.0, 85.0, 55.0,
               best_ra={"epoch": 5, "test_sa": 88.0, "test_ra": 53.0})
    write_cell(tmp_path, "ticket", 0.5, 90.0, 50.0, 85.0, 55.0, best_ra=low)
    by_sa = rows_by_sparsity(analysis.collect(str(tmp_path), Options(verdict="point", checkpoint="sa")))
    rep = analysis.collect(str(tmp_path), Options(verdict="point", checkpoint="ra"))
    by_ra = rows_by_sparsity(rep)
    assert by_sa[0.5].double_win and by_sa[0.0].cells[("std", "sa")].mean == 90.0
    assert by_ra[0.0].cells[("std", "sa")].mean == 88.0 and by_ra[0.0].cells[("adv", "ra")].mean == 53.0
    assert by_ra[0.5].status == "fails std-SA, adv-SA"  # 80 < 88 - 0.5; RA 60 > 53 matches
    text = report_tables.render_text(rep)
    assert "test numbers: SA and RA of the best-val-RA checkpoint (--checkpoint ra)" in text
    assert "== init adv_r50, cifar10, data_number 1 (4 runs; SA, RA of best-RA ckpt)" in text


def test_each_checkpoint_pairs_sa_of_best_sa_with_ra_of_best_ra(tmp_path):
    """--checkpoint each: two of the four numbers the original printed, each from its own best checkpoint; every
    table's header says which pairing it shows."""
    write_cell(tmp_path, "dense", 0.0, 90.0, 50.0, 85.0, 55.0,
               best_ra={"epoch": 5, "test_sa": 88.0, "test_ra": 53.0, "test_aa_ra": 51.0})
    write_cell(tmp_path, "ticket", 0.5, 90.0, 50.0, 85.0, 55.0, best_ra={"epoch": 3, "test_sa": 80.0, "test_ra": 52.6})
    rep = analysis.collect(str(tmp_path), Options(verdict="point", checkpoint="each"))
    rows = rows_by_sparsity(rep)
    assert {c: cell.mean for c, cell in rows[0.0].cells.items()} == {
        ("std", "sa"): 90.0, ("std", "ra"): 53.0, ("std", "aa"): 51.0,
        ("adv", "sa"): 85.0, ("adv", "ra"): 53.0, ("adv", "aa"): 51.0}
    assert rows[0.5].double_win  # SA 90/85 from best-SA; RA 52.6 from best-RA, within 0.5 of 53
    text = report_tables.render_text(rep)
    assert "test numbers: SA of the best-val-SA checkpoint, RA of the best-val-RA checkpoint (--checkpoint each)" \
        in text
    assert "== init adv_r50, cifar10, data_number 1 (4 runs; SA of best-SA, RA of best-RA ckpt)" in text
    md = report_tables.render_markdown(rep, {})
    assert md.count("test numbers: SA of the best-val-SA checkpoint, RA of the best-val-RA checkpoint") == 2
    assert report_tables.summary(rep)["checkpoint"] == "each"
    assert {r["checkpoint"] for r in csv.DictReader(report_tables.render_csv(rep).splitlines())} == {"each"}
    write_run(tmp_path, "old", mode="std", sparsity=0.2, sa=90.0, ra=50.0, best_ra="gone")
    (problem,) = analysis.collect(str(tmp_path), Options(verdict="point", checkpoint="each")).problems
    assert (problem.path, problem.reason) == ("old", "missing or bad keys: best_ra")
    assert not analysis.collect(str(tmp_path), Options(verdict="point", checkpoint="sa")).problems  # best-SA alone needs no best_ra


def test_autoattack_column(tmp_path):
    """--ra aa matches on test_aa_ra; with --ra pgd the AA numbers are shown but do not decide."""
    write_cell(tmp_path, "dense", 0.0, 90.0, 50.0, 85.0, 55.0, aa=48.0)
    write_cell(tmp_path, "ticket", 0.5, 90.0, 50.0, 85.0, 55.0, aa=45.0)
    pgd = analysis.collect(str(tmp_path), Options(verdict="point", ra="pgd"))
    aa = analysis.collect(str(tmp_path), Options(verdict="point", ra="aa"))
    assert rows_by_sparsity(pgd)[0.5].double_win
    assert rows_by_sparsity(aa)[0.5].status == "fails std-AA-RA, adv-AA-RA"
    header, _ = report_tables.table(pgd.groups[0], pgd.opts)
    assert header[3:9] == ["std-SA", "std-RA", "std-AA-RA", "adv-SA", "adv-RA", "adv-AA-RA"]


def test_problem_runs_listed(paper_tree, tmp_path):
    root = paper_tree
    os.makedirs(root / "crashed")
    (root / "crashed" / "config.json").write_text("{}")
    (root / "crashed" / "checkpoint.pth.tar").write_bytes(b"\x80not a pickle we ever read")
    os.makedirs(root / "corrupt")
    (root / "corrupt" / "results.json").write_text('{"complete": true, "best_sa": {')
    write_run(root, "unfinished", mode="std", sparsity=0.2, sa=99.0, ra=99.0, seed=7, complete=False)
    write_run(root, "nomode", mode="std", sparsity=0.2, sa=99.0, ra=99.0, seed=8)
    with open(root / "nomode" / "results.json") as f:
        data = json.load(f)
    del data["mode"], data["train_attack"], data["dataset"]
    (root / "nomode" / "results.json").write_text(json.dumps(data))
    write_run(root, "partial", mode="std", sparsity=0.2, sa=90.0, ra=None, seed=9)
    os.makedirs(root / "imp")  # an IMP run folder is not a downstream run
    (root / "imp" / "config.json").write_text("{}")
    (root / "imp" / "0-checkpoint.pth.tar").write_bytes(b"")

    rep = analysis.collect(str(root), Options(verdict="point"))
    reasons = {p.path: p.reason for p in rep.problems}
    assert set(reasons) == {"crashed", "corrupt", "unfinished", "nomode", "partial"}
    assert "no results.json" in reasons["crashed"] and "unfinished" in reasons["crashed"]
    assert "unreadable" in reasons["corrupt"]
    assert "complete: false" in reasons["unfinished"]
    assert "dataset" in reasons["nomode"] and "mode" in reasons["nomode"]
    assert "best_sa.test_ra" in reasons["partial"]
    assert rep.runs_read == 13  # the partial run still gives its SA
    row = rows_by_sparsity(rep)[0.2]
    assert row.cells[("std", "sa")].n == 2 and row.cells[("std", "ra")].n == 1
    assert rows_by_sparsity(rep)[0.672].double_win
    out = tmp_path / "out"
    output.write_report(rep, str(out), plots=False)
    md = (out / "report.md").read_text()
    for path, reason in reasons.items():
        assert f"- `{path}`: {reason}" in md


def test_outputs_written_and_deterministic(paper_tree, tmp_path):
    write_cell(paper_tree, "std_init/dense", 0.0, 91.0, 10.0, 80.0, 45.0, init="/inits/std_r50.pth.tar")
    write_cell(paper_tree, "std_init/t20", 0.2, 91.0, 10.0, 80.0, 40.0, init="/inits/std_r50.pth.tar")
    rep = analysis.collect(str(paper_tree), Options(verdict="point"))
    assert [g.key[0] for g in rep.groups] == ["adv_r50", "std_r50"]
    first = output.write_report(rep, str(tmp_path / "a"))
    output.write_report(analysis.collect(str(paper_tree), Options(verdict="point")), str(tmp_path / "b"), plots=False)
    names = sorted(os.path.basename(p) for p in first)
    assert names == ["adv_r50_cifar10_1.png", "overview_cifar10_1.png", "report.csv", "report.json",
                     "report.md", "std_r50_cifar10_1.png"]
    again = analysis.collect(str(paper_tree), Options(verdict="point"))
    assert report_tables.render_text(again) == report_tables.render_text(rep)
    for name in ("report.csv", "report.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    for name in names:
        if name.endswith(".png"):
            blob = (tmp_path / "a" / name).read_bytes()
            assert blob.startswith(b"\x89PNG\r\n\x1a\n") and len(blob) > 10_000
    with open(tmp_path / "a" / "report.csv") as f:
        rows = list(csv.DictReader(f))
    adv = [r for r in rows if r["init"] == "adv_r50"]
    assert [r["sparsity"] for r in adv] == ["0.0000", "0.2000", "0.4880", "0.6720", "0.8320"]
    assert [r["double_win"] for r in adv] == ["0", "1", "1", "1", "0"]
    assert adv[4]["adv_ra_match"] == "0" and adv[4]["adv_sa_match"] == "1" and adv[0]["adv_ra_match"] == ""
    assert float(adv[0]["std_sa_std"]) == pytest.approx(S, abs=1e-4) and adv[0]["std_sa_n"] == "2"
    summary = json.loads((tmp_path / "a" / "report.json").read_text())
    tops = {g["init"]: g["highest_double_win"] for g in summary["groups"]}
    assert tops == {"adv_r50": {"sparsity": 0.672, "family": "imp"}, "std_r50": None}
    md = (tmp_path / "a" / "report.md").read_text()
    assert "| adv_r50 | cifar10 | 1 | 67.20% (imp) |" in md and "| std_r50 | cifar10 | 1 | none |" in md
    assert "(adv_r50_cifar10_1.png)" in md and "(overview_cifar10_1.png)" in md


def test_runs_attacked_with_another_loss_are_flagged(tmp_path):
    """Runs from before --attack-loss (no key: the summed loss) beside runs with the original's mean: a note."""
    write_cell(tmp_path, "dense", 0.0, 90.0, 50.0, 85.0, 55.0, attack_loss="mean")
    write_cell(tmp_path, "ticket", 0.5, 90.0, 50.0, 85.0, 55.0)
    (group,) = analysis.collect(str(tmp_path), Options(verdict="point")).groups
    assert any(n.startswith('runs differ in attack_loss ("mean", null)') for n in group.notes), group.notes


def test_sources_and_group_by(tmp_path):
    write_cell(tmp_path, "dense", 0.0, 90.0, 50.0, 85.0, 55.0)
    write_cell(tmp_path, "imp", 0.5, 90.0, 50.0, 85.0, 55.0, source="imp")
    write_cell(tmp_path, "omp", 0.5, 80.0, 50.0, 85.0, 55.0, source="omp")
    write_cell(tmp_path, "aimp", 0.3, 90.0, 50.0, 85.0, 55.0, ticket_meta={"level": 2, "source": "aimp"})
    write_cell(tmp_path, "bal/dense", 0.0, 90.0, 50.0, 85.0, 55.0, subset="balanced")
    rep = analysis.collect(str(tmp_path), Options(verdict="point"))
    (group,) = rep.groups
    assert [(r.sparsity, r.family) for r in group.rows] == [(0.0, "dense"), (0.3, "aimp"), (0.5, "imp"),
                                                            (0.5, "omp")]
    assert report_tables.headline(group) == "50.00% (imp); by family: aimp 30.00%, imp 50.00%, omp none"
    assert any("runs differ in subset" in n and "--group-by subset" in n for n in group.notes)
    split = analysis.collect(str(tmp_path), Options(verdict="point", group_by=("subset",)))
    assert [g.key[3] for g in split.groups] == ["balanced", "first"] and not split.groups[1].notes
    with pytest.raises(UserError, match="--group-by subsett"):
        analysis.collect(str(tmp_path), Options(verdict="point", group_by=("subsett",)))


def test_duplicate_seed_counted_once(tmp_path):
    write_cell(tmp_path, "dense", 0.0, 90.0, 50.0, 85.0, 55.0)
    write_cell(tmp_path, "dense_again", 0.0, 80.0, 40.0, 75.0, 45.0)
    rep = analysis.collect(str(tmp_path), Options(verdict="point"))
    assert rows_by_sparsity(rep)[0.0].cells[("std", "sa")].values == (90.0,)
    assert {p.path for p in rep.problems} == {"dense_again/std_s1", "dense_again/adv_s1"}


def test_sparsity_and_label():
    assert read_sparsity({"ticket": "t", "sparsity": 0.67234}) == (0.6723, None)
    assert read_sparsity({"ticket": None}) == (0.0, None)
    assert read_sparsity({"ticket": "t"}) == (None, "no sparsity for its ticket")
    assert "outside 0..1" in read_sparsity({"ticket": "t", "sparsity": 67.2})[1]
    assert init_label({"init": "/w/adv_r50.pth.tar"}) == "adv_r50"
    assert init_label({"init": "/w/adv_r50.pth"}) == "adv_r50"


def test_ticket_finding_files_are_told_from_run_files():
    """The scan skips ticket-finding folders by their files' names, which infra.checkpoint spells."""
    assert [paths.imp_file_level(os.path.basename(p)) for p in paths.imp_files("d", 12)] == [12] * 4
    for other in ("12-notes.txt", "x-ticket.pth.tar", paths.RESULTS, paths.CHECKPOINT):
        assert paths.imp_file_level(other) is None


def test_cli(paper_tree, tmp_path, capsys):
    os.makedirs(tmp_path / "empty")
    for root, message in ((tmp_path / "nowhere", "is not a folder"), (tmp_path / "empty", "no runs under")):
        with pytest.raises(SystemExit) as e:
            run_cli(report.main, [str(root)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        run_cli(report.main, [str(paper_tree), "--tolerance", "-1"])
    assert e.value.code == 2 and "--tolerance" in capsys.readouterr().err
    assert report.main([str(paper_tree), "--no-plots", "--verdict", "point"]) == 0
    out = capsys.readouterr().out
    assert "highest double-win sparsity: 67.20% (imp)" in out and os.path.exists(paper_tree / "report" / "report.md")


def test_bash_script(paper_tree):
    script = os.path.join(REPO, "script", "report.sh")
    bare = subprocess.run(["bash", script], capture_output=True, text=True)
    assert bare.returncode == 2 and bare.stderr.startswith("usage: bash script/report.sh ROOT")
    env = dict(os.environ, DOUBLEWIN_PY=sys.executable)
    done = subprocess.run(["bash", script, str(paper_tree), "--checkpoint", "ra", "--no-plots"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "SA and RA of the best-val-RA checkpoint" in done.stdout and "wrote " in done.stdout
