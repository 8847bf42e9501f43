"""The report weighs the verdict against its cost: per ticket family, the highest double-win sparsity beside the
device-hours its tickets' ledgers record, the transfer runs' hours, and the mask IoU with a reference family read
from ROOT/ticket_overlap.json, which `tickets.py overlap` writes from real ticket files."""
from __future__ import annotations

import json
import os

import pytest
import torch

import models
import pruning_utils
import report
import tickets
from lottery import ticket_stats
from reporting import analysis
from reporting.costs import family_costs
from reporting.runs import OVERLAP, Options


def _run(root, name, *, mode, sparsity, acc, family, hours, seed=1, ticket=None, run_hours=0.01, ticket_cost=None):
    """A finished transfer run whose ticket cost `hours` device-hours and `hours` PFLOP to find (its ledger in
    ticket_meta; `ticket_cost`: that ledger as given, "none": no ledger), its transfer 0.01 h and 1 TFLOP."""
    cost = {"device_hours": hours, "flop": None if hours is None else hours * 1e15}
    cost = cost if ticket_cost is None else ticket_cost
    meta = {"source": family, **({} if cost == "none" else {"cost": cost})}
    best = {"epoch": 1, "val_sa": acc, "val_ra": acc / 2, "test_sa": acc, "test_ra": acc / 2}
    dense = sparsity == 0
    data = {"complete": True, "dataset": "cifar10", "data_number": 1.0, "mode": mode, "seed": seed,
            "init": "/inits/robust.pth", "sparsity": sparsity, "best_sa": best, "best_ra": best,
            "ticket": None if dense else ticket or f"/t/{family}-{sparsity}.pth.tar",
            "ticket_meta": {} if dense else meta, "cost": {"device_hours": run_hours, "flop": 1e12}}
    folder = os.path.join(str(root), name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(data, f)


def _cells(root, tag, sparsity, acc, family, hours, **kw):
    for mode in ("std", "adv"):
        _run(root, f"{tag}/{mode}", mode=mode, sparsity=sparsity, acc=acc, family=family, hours=hours, **kw)


@pytest.fixture
def tree(tmp_path):
    """Dense 80; aimp tickets at 20/36/48.8% (the last below dense), costing 1, 2, 3 device-hours cumulatively;
    early-bird aimp-eb at 20/36% (both double-win) costing 0.2, 0.4; omp at 20% (not double-win), free."""
    root = tmp_path / "runs"
    _cells(root, "dense", 0.0, 80.0, "dense", None)
    for s, acc, h in ((0.2, 80.0, 1.0), (0.36, 80.0, 2.0), (0.488, 70.0, 3.0)):
        _cells(root, f"aimp-{s}", s, acc, "aimp", h)
    for s, h in ((0.2, 0.2), (0.36, 0.4)):
        _cells(root, f"eb-{s}", s, 80.0, "aimp-eb", h)
    _cells(root, "omp-0.2", 0.2, 60.0, "omp", 0.0)
    _cells(root, "old-0.2", 0.2, 80.0, "old", None, ticket_cost="none")  # a ticket without a ledger
    _cells(root, "moved-0.36", 0.36, 80.0, "moved", None,  # resumed from another folder: levels 1-2 not here
           ticket_cost={"device_hours": 0.0, "flop": 0, "not_recorded_levels": [1, 2]})
    return root


def test_the_cost_table_per_family(tree):
    with open(tree / OVERLAP, "w") as f:
        json.dump({"reference": "aimp", "pairs": [
            {"init": "robust", "family": "aimp-eb", "sparsity": 0.2, "iou": 0.9, "iou_random": 0.6},
            {"init": "robust", "family": "aimp-eb", "sparsity": 0.36, "iou": 0.7, "iou_random": 0.4},
            {"init": "other", "family": "aimp-eb", "sparsity": 0.2, "iou": 0.1, "iou_random": 0.6}]}, f)
    rep = analysis.collect(str(tree), Options(verdict="point"))
    (group,) = rep.groups
    costs = {c.family: c for c in family_costs(group, rep.overlap)}
    assert set(costs) == {"aimp", "aimp-eb", "omp", "old", "moved"}
    aimp, eb, omp = costs["aimp"], costs["aimp-eb"], costs["omp"]
    assert (aimp.highest, aimp.find_hours, aimp.reach_hours, aimp.tickets) == (0.36, 3.0, 2.0, 3)
    assert (aimp.find_flop, aimp.reach_flop, aimp.transfer_flop) == (3e15, 2e15, 6e12)
    assert not aimp.deepest and eb.deepest  # aimp's 48.8% ticket fails; eb wins at its sparsest, 36%
    assert (eb.highest, eb.find_hours, eb.reach_hours, eb.find_flop) == (0.36, 0.4, 0.4, 0.4e15)
    assert eb.iou == pytest.approx(0.8) and eb.iou_n == 2 and aimp.iou is None  # the reference itself: no IoU
    assert omp.highest is None and omp.find_hours == 0.0 and omp.find_flop == 0 and omp.iou is None
    assert aimp.transfer_hours == pytest.approx(6 * 0.01)
    for family in ("old", "moved"):  # not recorded: None, never 0
        assert (costs[family].find_hours, costs[family].find_flop, costs[family].reach_flop) == (None, None, None)
    text = report.report_tables.render_text(rep)
    assert "ticket families, the verdict against what it cost" in text
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln.strip() and ln.split()[0] in costs}
    assert lines["aimp-eb"].split()[:6] == ["aimp-eb", "2", "≥36.00%", "400", "T", "0.4"]
    assert "0.800 (n=2)" in lines["aimp-eb"]
    assert lines["aimp"].split()[:6] == ["aimp", "3", "36.00%", "3", "P", "3"]
    assert lines["omp"].split()[:9] == ["omp", "1", "none", "0", "0", "-", "-", "2", "T"]  # transfer: 2 x 1 TFLOP
    assert lines["old"].split()[:5] == ["old", "1", "≥20.00%", "n/r", "n/r"]
    assert lines["moved"].split()[:5] == ["moved", "1", "≥36.00%", "n/r", "n/r"]


def test_the_report_files_carry_the_costs_and_the_plot(tree, capsys):
    assert report.main([str(tree), "--verdict", "point"]) == 0
    out = tree / "report"
    with open(out / "cost.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    summary = json.load(open(out / "report.json"))
    families = {c["family"]: c for c in summary["groups"][0]["families"]}
    assert families["aimp-eb"]["find_hours"] == 0.4 and families["aimp"]["highest"] == 0.36
    assert "cost.png" in open(out / "report.md").read()
    header = open(out / "report.csv").readline().strip().split(",")
    assert "ticket_device_hours" in header and "transfer_device_hours" in header


def test_tickets_overlap_compares_real_tickets_of_one_sparsity(tmp_path, capsys):
    torch.manual_seed(0)
    net = models.resnet_tiny(10)
    paths = {}
    for family, seed in (("aimp", 0), ("imp", 1), ("omp", 2)):
        torch.manual_seed(seed)
        for p in net.parameters():
            p.data.normal_()
        mask = pruning_utils.magnitude_prune(net, pruning_utils.full_mask(net), 0.5)
        paths[family] = str(tmp_path / f"{family}.pth.tar")
        pruning_utils.save_ticket(paths[family], mask, {"source": family})
    root = tmp_path / "runs"
    _cells(root, "dense", 0.0, 80.0, "dense", None)
    for family, path in paths.items():
        s = round(pruning_utils.sparsity(pruning_utils.load_ticket(path)[0]), 4)
        _cells(root, family, s, 80.0, family, 1.0, ticket=path)
    assert tickets.main(["overlap", str(root)]) == 0
    data = json.load(open(root / OVERLAP))
    assert data["reference"] == "aimp" and [p["family"] for p in data["pairs"]] == ["imp", "omp"]
    a = pruning_utils.load_ticket(paths["aimp"])[0]
    for p in data["pairs"]:
        expected = ticket_stats.compare(pruning_utils.load_ticket(paths[p["family"]])[0], a)
        assert p["iou"] == expected["iou"] and 0 < p["iou"] < 1 and p["reference_ticket"] == paths["aimp"]
    assert tickets.main(["overlap", str(root), "--reference", "omp"]) == 0
    assert json.load(open(root / OVERLAP))["reference"] == "omp"
    with pytest.raises(tickets.UserError, match="--reference nope: no tickets of that family"):
        tickets.main(["overlap", str(root), "--reference", "nope"])


def test_cost_png_draws_one_shot_at_zero_and_leaves_out_what_is_not_recorded(tree):
    from matplotlib.figure import Figure
    from reporting import plots
    rep = analysis.collect(str(tree), Options(verdict="point"))
    points = [(0, c) for c in family_costs(rep.groups[0], rep.overlap)]
    for value in (lambda c: c.find_flop, lambda c: c.find_hours):
        ax = Figure().subplots()
        left = plots._cost_panel(ax, points, value, "x")
        assert sorted(left) == ["moved", "old"]
        drawn = {t.get_text(): tuple(t.xy) for t in ax.texts}
        assert set(drawn) == {"aimp", "≥ aimp-eb", "omp"}
        assert drawn["omp"] == (0.0, 0.0) and ax.get_xscale() == "symlog"  # free, and no double-win ticket
        assert drawn["≥ aimp-eb"][1] == 36.0
    assert plots.plot_costs(list(rep.groups), rep.overlap, str(tree / "cost.png"))
