"""The statistical double-win verdict (reporting/verdict.py through the report): known calls on hand-made
results.json trees, replicated ticket finding counted and never taken for duplicates, and a simulation showing
that false "double-win" calls stay at or under the stated level."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import report
from infra.errors import run_cli
from reporting import analysis, verdict
from reporting import tables as report_tables
from reporting.runs import Options
from verdictkit import write_cell, write_run

COLUMNS = (("std", "sa"), ("std", "ra"), ("adv", "sa"), ("adv", "ra"))


def the_row(root, **opts):
    (group,) = analysis.collect(str(root), Options(**opts)).groups
    (row,) = [r for r in group.rows if not r.dense]
    return row


def test_one_seed_one_image_of_120_below_is_inconclusive(tmp_path):
    dense = np.arange(120) < 108                       # 90.00%
    ticket = dense.copy()
    ticket[0] = False                                   # one image fewer: 89.17%
    write_cell(tmp_path, "dense", 0.0, 90.0, images=120, correct=verdict.pack(dense))
    write_cell(tmp_path, "t", 0.5, 100 * 107 / 120, images=120, correct=verdict.pack(ticket))
    row = the_row(tmp_path)
    assert not row.double_win and row.call == verdict.OPEN
    assert {t.call for t in row.tests.values()} == {verdict.OPEN} and all(t.paired for t in row.tests.values())
    test = row.tests[("std", "sa")]
    assert test.lower < -1 < test.upper and test.diff == pytest.approx(-100 / 120)
    assert test.why == "CI -2.8..+1.1 crosses -1" and test.seeds is None
    assert row.status == ("inconclusive: std-SA CI -2.8..+1.1 crosses -1; std-RA CI -2.8..+1.1 crosses -1; adv-SA CI "
                          "-2.8..+1.1 crosses -1; adv-RA CI -2.8..+1.1 crosses -1; one seed per side: test-set "
                          "sampling only, seed-to-seed variance unknown; more test images narrow it, >= 3 seeds per "
                          "side measure the rest")
    unpaired = tmp_path / "unpaired"
    write_cell(unpaired, "dense", 0.0, 90.0, images=120)
    write_cell(unpaired, "t", 0.5, 100 * 107 / 120, images=120)
    assert the_row(unpaired).call == verdict.OPEN and not the_row(unpaired).tests[("adv", "ra")].paired
    write_cell(tmp_path, "t", 0.5, 100 * 107 / 120, images=None)  # an older results.json: no test size
    assert the_row(tmp_path).tests[("std", "ra")].why == "has no test_images in results.json (the test set's size " \
        "is unknown)" and the_row(tmp_path).status.endswith("; rerun the final tests")
    write_cell(tmp_path, "t", 0.5, 100 * 107 / 120, images=100)  # unpaired: each side's own test size
    assert not the_row(tmp_path).tests[("adv", "sa")].paired and the_row(tmp_path).call == verdict.OPEN
    write_cell(tmp_path, "dense2", 0.0, 90.0, seed=2, images=100)
    assert the_row(tmp_path).tests[("adv", "sa")].why == "mixes runs tested on different numbers of images"
    assert the_row(tmp_path, verdict="point").status == "fails std-SA, std-RA, adv-SA, adv-RA"  # the older rule


@pytest.mark.parametrize("offset, call", [(-8.0, verdict.LOSS), (1.5, verdict.WIN)])
def test_five_seeds_on_10000_images(tmp_path, offset, call):
    spread = (-0.4, -0.2, 0.0, 0.2, 0.4)
    for seed, d in enumerate(spread, 1):
        write_cell(tmp_path, f"dense/s{seed}", 0.0, 90.0 + d, seed=seed, images=10_000)
        write_cell(tmp_path, f"t/s{seed}", 0.5, 90.0 + offset - d, seed=seed, images=10_000)
    row = the_row(tmp_path)
    assert row.call == call and row.double_win == (call == verdict.WIN)
    assert {t.call for t in row.tests.values()} == {call}
    test = row.tests[("adv", "sa")]
    assert test.diff == pytest.approx(offset) and (test.lower > -1 if offset > 0 else test.upper < -1)
    assert row.status == ("double-win" if offset > 0 else
                          f"not double-win: std-SA upper bound {test.upper:+.1f} < -1; std-RA upper bound "
                          f"{test.upper:+.1f} < -1; adv-SA upper bound {test.upper:+.1f} < -1; adv-RA upper bound "
                          f"{test.upper:+.1f} < -1")


def test_a_wider_margin_or_lower_confidence_can_settle_a_cell(tmp_path):
    for seed, d in enumerate((-0.5, 0.0, 0.5), 1):
        write_cell(tmp_path, f"dense/s{seed}", 0.0, 90.0 + d, seed=seed, images=10_000)
        write_cell(tmp_path, f"t/s{seed}", 0.5, 89.0 + d, seed=seed, images=10_000)
    assert the_row(tmp_path).call == verdict.OPEN  # exactly one point below: on the default margin
    assert "no number of seeds" in the_row(tmp_path).tests[("std", "sa")].advice
    assert the_row(tmp_path, margin=3.0).call == verdict.WIN
    assert the_row(tmp_path, margin=0.0).call == verdict.OPEN  # -1 +- ~1.3: could still be 0
    assert the_row(tmp_path, margin=0.0, confidence=0.6).call == verdict.LOSS


def test_two_imp_seeds_are_replicates_not_duplicates(tmp_path):
    write_cell(tmp_path, "dense", 0.0, 90.0, images=10_000)
    for imp_seed in (1, 2):
        write_cell(tmp_path, f"aimp-s{imp_seed}", 0.5, 90.0, imp_seed=imp_seed, images=10_000)
    rep = analysis.collect(str(tmp_path), Options())
    assert rep.problems == ()
    row = [r for r in rep.groups[0].rows if not r.dense][0]
    cell = row.cells[("std", "sa")]
    assert cell.n == 2 and cell.imp_seeds == 2 and cell.replicates == "n=2 (2 IMP seeds x 1 transfer seeds)"
    assert "n=2 (2 IMP seeds x 1 transfer seeds)" in report_tables.render_text(rep)
    write_cell(tmp_path, "aimp-s2-again", 0.5, 80.0, imp_seed=2, images=10_000)  # a real duplicate
    rep = analysis.collect(str(tmp_path), Options())
    assert {p.path for p in rep.problems} == {"aimp-s2-again/std", "aimp-s2-again/adv"}
    assert all("IMP seed 2, transfer seed 1 as aimp-s2/" in p.reason for p in rep.problems)


def test_imp_seeds_by_transfer_seeds_are_counted_and_clustered(tmp_path):
    for seed in (1, 2, 3):
        write_cell(tmp_path, f"dense/s{seed}", 0.0, 90.0 + seed / 10, seed=seed, images=10_000)
        for imp_seed in (1, 2):
            write_cell(tmp_path, f"t{imp_seed}/s{seed}", 0.5, 90.0 + imp_seed + seed / 10, seed=seed,
                       imp_seed=imp_seed, images=10_000)
    row = the_row(tmp_path)
    assert row.cells[("adv", "ra")].replicates == "n=6 (2 IMP seeds x 3 transfer seeds)"
    test = row.tests[("adv", "ra")]
    # the two IMP seeds' means (91.2, 92.2) are the ticket's units: their spread, on one degree of freedom
    assert test.diff == pytest.approx(1.5) and test.df < 3


def test_report_flags(tmp_path, capsys):
    write_cell(tmp_path, "dense", 0.0, 90.0, images=10_000)
    write_cell(tmp_path, "t", 0.5, 95.0, images=10_000)
    assert report.main([str(tmp_path), "--no-plots", "--margin", "2", "--confidence", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "one-sided 90% bounds" in out and "lower bound > -2 (--margin" in out and "95.00 n=1 yes" in out
    summary = json.load(open(tmp_path / "report" / "report.json"))
    assert (summary["verdict"], summary["margin"], summary["confidence"]) == ("stat", 2.0, 0.9)
    cell = summary["groups"][0]["rows"][1]["cells"]["std-SA"]
    assert cell["test"]["call"] == "double-win" and cell["test"]["lower"] > -2
    for flag, value in (("--confidence", "1.5"), ("--margin", "-1"), ("--verdict", "vote")):
        with pytest.raises(SystemExit) as e:
            run_cli(report.main, [str(tmp_path), flag, value])
        err = capsys.readouterr().err
        assert e.value.code == 2 and flag in err and err.count("\n") == 1


def test_pack_round_trip_and_bit_order():
    bits = np.array([1, 0, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    text = verdict.pack(bits)
    assert list(np.frombuffer(__import__("base64").b64decode(text), np.uint8)) == [128, 128]  # big-endian
    assert (verdict.unpack(text, 9) == bits).all()
    assert verdict.unpack(text, 17) is None and verdict.unpack("not base64!", 9) is None


def _false_win_rate(rng, *, reps, images, dense_seeds, imp_seeds, transfer_seeds, seed_sd, imp_sd, paired,
                    shared_sd=0.0, own_seed=False, margin=1.0, confidence=0.95):
    """Tickets whose true accuracy is exactly `margin` points below dense: how often is it called double-win?
    Each repetition draws a fresh test set (per-image difficulty u) and fresh seeds (accuracy offsets; a
    transfer seed's `shared_sd` part is the same for the ticket and the dense run with that seed). `own_seed`:
    IMP seed i's ticket is transferred with transfer seed i only (the paired design)."""
    wins = 0
    p_dense, p_ticket = 0.80, 0.80 - margin / 100
    for _ in range(reps):
        u = rng.random(images)
        shared = rng.normal(0, shared_sd / 100, size=max(dense_seeds, imp_seeds, transfer_seeds))

        def run(p, **ids):
            correct = u < p + shared[ids["seed"]] + rng.normal(0, seed_sd / 100)
            return verdict.Sample(100 * correct.mean(), images=images,
                                  bits=verdict.pack(correct) if paired else None, **ids)
        dense = [run(p_dense, seed=s) for s in range(dense_seeds)]
        ticket = []
        for i in range(imp_seeds):
            p_imp = p_ticket + rng.normal(0, imp_sd / 100)
            ticket += [run(p_imp, imp_seed=i, seed=s) for s in ((i,) if own_seed else range(transfer_seeds))]
        wins += verdict.compare(ticket, dense, margin, confidence).call == verdict.WIN
    return wins / reps


@pytest.mark.parametrize("design", [
    dict(images=1000, dense_seeds=1, imp_seeds=1, transfer_seeds=1, seed_sd=0.0, imp_sd=0.0, paired=True),
    dict(images=1000, dense_seeds=1, imp_seeds=1, transfer_seeds=1, seed_sd=0.0, imp_sd=0.0, paired=False),
    dict(images=2000, dense_seeds=3, imp_seeds=1, transfer_seeds=3, seed_sd=0.8, imp_sd=0.0, paired=True),
    dict(images=2000, dense_seeds=5, imp_seeds=1, transfer_seeds=5, seed_sd=0.5, imp_sd=0.0, paired=False),
    dict(images=2000, dense_seeds=3, imp_seeds=3, transfer_seeds=2, seed_sd=0.3, imp_sd=0.8, paired=True),
    dict(images=1000, dense_seeds=5, imp_seeds=5, transfer_seeds=1, seed_sd=0.6, imp_sd=0.8, paired=True,
         shared_sd=2.0, own_seed=True),
    dict(images=1000, dense_seeds=3, imp_seeds=1, transfer_seeds=3, seed_sd=0.3, imp_sd=0.0, paired=True,
         shared_sd=2.0),
], ids=["1v1-paired", "1v1-binomial", "3v3-paired", "5v5-binomial", "3imp-x2-paired", "5imp-own-seed-shared",
        "3v3-shared-seed-effect"])
def test_false_double_win_rate_stays_at_the_stated_level(design):
    """At confidence 0.95 at most 5% false calls are allowed; 600 repetitions estimate the rate to about +-0.9%,
    so the bound checked is 5% plus two and a half standard errors of that estimate."""
    rate = _false_win_rate(np.random.default_rng(0), reps=600, **design)
    assert rate <= 0.05 + 2.5 * (0.05 * 0.95 / 600) ** 0.5, rate


def test_overlap_is_judged_against_its_noise_floors(tmp_path, capsys):
    """A-IMP from two IMP seeds, an early-bird family as close to A-IMP as its seeds are to each other, a family
    no closer than OMP, and OMP: ticket_overlap.json holds the floors and the report words the judgement."""
    import models
    import pruning_utils
    import tickets
    import torch
    from reporting.runs import OVERLAP, read_overlap

    torch.manual_seed(0)
    net = models.resnet_tiny(10)
    base = {n: p.detach().clone() for n, p in net.named_parameters()}
    made = {}
    for name, family, imp_seed, noise in (("a1", "aimp", 1, 0.02), ("a2", "aimp", 2, 0.02), ("eb", "aimp-eb", 1, 0.02),
                                          ("mid", "mid", 1, 0.15), ("far", "far", 1, 3.0),
                                          ("omp", "omp", 1, 0.5)):
        gen = torch.Generator().manual_seed(len(made))
        for n, p in net.named_parameters():
            p.data = base[n] + noise * torch.randn(p.shape, generator=gen) * base[n].std()
        mask = pruning_utils.magnitude_prune(net, pruning_utils.full_mask(net), 0.5)
        path = str(tmp_path / f"{name}.pth.tar")
        pruning_utils.save_ticket(path, mask, {"source": family, "config": {"seed": imp_seed}})
        made[name] = (path, family, imp_seed, round(pruning_utils.sparsity(mask), 4))
    root = tmp_path / "runs"
    write_cell(root, "dense", 0.0, 80.0, images=1000)
    for name, (path, family, imp_seed, s) in made.items():
        for mode in ("std", "adv"):
            write_run(root, f"{name}/{mode}", mode=mode, sparsity=s, acc=80.0, imp_seed=imp_seed, images=1000,
                      family=family)
            res = root / name / mode / "results.json"
            data = json.loads(res.read_text())
            data["ticket"] = path
            res.write_text(json.dumps(data))
    assert tickets.main(["overlap", str(root)]) == 0
    data = json.load(open(root / OVERLAP))
    assert data["reference"] == "aimp" and [r["family"] for r in data["replicates"]] == ["aimp"]
    rep = data["replicates"][0]
    assert rep["comparisons"] == 1 and 0.8 < rep["iou"] == rep["iou_min"] < 1
    pairs = {p["family"]: p for p in data["pairs"]}
    assert set(pairs) == {"aimp-eb", "mid", "far", "omp"} and pairs["aimp-eb"]["comparisons"] == 2
    assert pairs["omp"]["iou_omp"] is None and pairs["far"]["iou_omp"] == pytest.approx(pairs["omp"]["iou"])
    assert pairs["far"]["iou"] < pairs["omp"]["iou"] < rep["iou"] and 0.3 < pairs["far"]["iou_random"] < 0.4
    overlap = read_overlap(str(root))
    s = [made["a1"][3]]
    eb = overlap.judged("robust", "aimp-eb", s)
    assert eb.startswith(f"{pairs['aimp-eb']['iou']:.3f} (n=1); seed-to-seed {rep['iou']:.3f} (1 pair, lowest "
                         f"{rep['iou_min']:.3f}), OMP ")
    assert eb.endswith("indistinguishable from another IMP seed of aimp")
    assert pairs["omp"]["iou"] < pairs["mid"]["iou"] < rep["iou_min"]
    assert overlap.judged("robust", "mid", s).endswith(  # two IMP seeds: one pair, too few to call it different
        "below the seed-to-seed floor, but 1 seed pair cannot tell a different mask from seed noise (>= 3 pairs: 3 "
        "IMP seeds)")
    assert overlap.judged("robust", "far", s).endswith("no closer to aimp than OMP")
    assert overlap.judged("robust", "aimp", s) == f"seed-to-seed {rep['iou']:.3f} (1 pair, lowest {rep['iou']:.3f})"
    rep = analysis.collect(str(root), Options())
    text = report_tables.render_text(rep)
    assert "no closer to aimp than OMP" in text and "n=2 (2 IMP seeds x 1 transfer seeds)" in text
    assert report_tables.summary(rep)["groups"][0]["overlap"]["aimp-eb"] == eb


def _seeds(root, n, sd, dense_mean, ticket_mean):
    z = np.arange(n) - (n - 1) / 2
    z = z / z.std(ddof=1)
    for seed in range(1, n + 1):
        write_cell(root, f"dense/s{seed}", 0.0, dense_mean + sd * z[seed - 1], seed=seed, images=10_000)
        write_cell(root, f"t/s{seed}", 0.5, ticket_mean - sd * z[seed - 1], seed=seed, images=10_000)


def test_the_seeds_it_asks_for_settle_the_cell_when_the_variance_stays(tmp_path):
    _seeds(tmp_path / "few", 3, 1.5, 90.0, 90.3)
    row = the_row(tmp_path / "few")
    (n,) = {t.seeds for t in row.tests.values()}
    assert row.call == verdict.OPEN and n > 3 and row.status.endswith(f"~{n} seeds per side would settle it")
    _seeds(tmp_path / "enough", n, 1.5, 90.0, 90.3)
    assert the_row(tmp_path / "enough").call == verdict.WIN
    _seeds(tmp_path / "one_less", n - 1, 1.5, 90.0, 90.3)
    assert the_row(tmp_path / "one_less").call == verdict.OPEN


def test_one_ticket_seed_borrows_the_dense_seeds_variance(tmp_path):
    for seed, d in enumerate((-0.5, 0.0, 0.5), 1):
        write_cell(tmp_path, f"dense/s{seed}", 0.0, 90.0 + d, seed=seed, images=10_000)
    write_cell(tmp_path, "t", 0.5, 89.5, images=10_000)
    test = the_row(tmp_path).tests[("std", "sa")]
    # seed part 0.25 * (1/1 + 1/3) on the dense side's 2 degrees of freedom; test part binomial on 10,000 images
    p_t, p_d = (0.895 * 10_000 + 1) / 10_002, (0.90 * 10_000 + 1) / 10_002
    se = (0.25 * 4 / 3 + 1e4 * (p_t * (1 - p_t) + p_d * (1 - p_d)) / 10_002) ** 0.5
    assert test.df == 2 and test.se == pytest.approx(se) and test.call == verdict.OPEN
    assert test.lower == pytest.approx(-0.5 - 2.919986 * se, abs=1e-4)
    assert "one side has one seed: the other side's seed variance stands for both" in test.advice


def test_overlap_wording_on_hand_made_floors():
    from reporting.overlap import Overlap

    def pair(family, iou, omp=0.96):
        return {"init": "r", "family": family, "sparsity": 0.75, "iou": iou, "iou_random": 0.15, "iou_omp": omp}
    seeds = {"init": "r", "family": "aimp", "sparsity": 0.75, "iou": 0.99, "iou_min": 0.985, "comparisons": 10,
             "tickets": 5}
    own = {"init": "r", "family": "eb", "sparsity": 0.75, "iou": 0.97, "iou_min": 0.97}
    ov = Overlap("aimp", (pair("eb", 0.986), pair("mid", 0.97), pair("low", 0.95)), (seeds, own))
    assert ov.judged("r", "eb", [0.75]) == ("0.986 (n=1); seed-to-seed 0.990 (10 pairs, lowest 0.985), its own seeds "
                                           "0.970, OMP 0.960, random 0.150: indistinguishable from another IMP seed "
                                           "of aimp")
    assert ov.judged("r", "mid", [0.75]).endswith("OMP 0.960, random 0.150: below all 10 seed-to-seed pairs: a "
                                                  "different mask (another IMP seed would land there about 1 time in "
                                                  "11), closer than OMP")
    assert ov.judged("r", "low", [0.75]).endswith(": no closer to aimp than OMP")
    assert ov.judged("r", "aimp", [0.75]) == "seed-to-seed 0.990 (10 pairs, lowest 0.985)"
    assert ov.judged("r", "eb", [0.5]) == "-" and ov.judged("other", "eb", [0.75]) == "-"
    lone = Overlap("aimp", (pair("eb", 0.986, None),))
    assert ov.iou("r", "eb", [0.75]) == (0.986, 1)
    assert lone.judged("r", "eb", [0.75]) == "0.986 (n=1); random 0.150: one IMP seed of aimp: no seed-to-seed floor"
    one_pair = Overlap("aimp", (pair("mid", 0.97),), ({**seeds, "comparisons": 1, "tickets": 2},))
    assert one_pair.judged("r", "mid", [0.75]).endswith(
        "below the seed-to-seed floor, but 1 seed pair cannot tell a different mask from seed noise (>= 3 pairs: 3 "
        "IMP seeds)")


@pytest.mark.slow
def test_a_campaign_with_two_imp_seeds_reports_them_as_replicates(tmp_path):
    """Real IMP stages, one per seed, through the campaign's local queue: the report pools their tickets at one
    sparsity (n=2, 2 IMP seeds), lists no duplicate, and the overlap holds the seeds' IoU."""
    import campaignkit as kit
    from reporting.runs import OVERLAP

    inputs = kit.make_inputs(str(tmp_path))
    flags = ["-a", "resnet_tiny", "--small-input", "--image-size", "16", "--resize-size", "16", "-b", "8", "-j", "0",
             "--epochs", "1", "--prune_epoch", "1", "-p", "0", "--deterministic"]
    imp = (f'[[init.tickets]]\nname = "imp"\ndir = "{tmp_path / "imp"}"\nlevels = [2]\n[init.tickets.imp]\n'
           f'kind = "std"\ndata = "{inputs["data"]}"\nseeds = [1, 2]\noverrides = {kit.toml_list(flags)}\n')
    root = tmp_path / "runs"
    path = kit.write_spec(str(tmp_path / "c.toml"), {**inputs, "init": inputs["init3"]}, str(root), seeds=(1,),
                          modes=("std",), tickets=imp)  # the pooling is per cell: one mode shows it
    kit.sweep("run", path, "--local", "--jobs", "2", check=True)
    assert sorted(os.listdir(root / "tiny" / "folder-1")) == ["dense", "imp-seed1-2", "imp-seed2-2"]
    done = kit.sweep_here("report", path, check=True)  # tickets.py overlap and report.py in this process
    rep = json.load(open(root / "report" / "report.json"))
    (group,) = rep["groups"]
    (row,) = [r for r in group["rows"] if r["sparsity"] > 0]
    assert row["family"] == "imp" and row["cells"]["std-SA"]["replicates"] == "n=2 (2 IMP seeds x 1 transfer seeds)"
    assert rep["problems"] == [] and "counted once" not in done.stdout
    (seeds,) = json.load(open(root / OVERLAP))["replicates"]
    assert seeds["family"] == "imp" and seeds["tickets"] == 2 and 0 < seeds["iou"] <= 1


def test_runs_with_a_shared_seed_effect_are_compared_seed_by_seed(tmp_path):
    """Each transfer seed moves the ticket and the dense run with that seed alike (same data order and head):
    pairing by seed removes that part, so a ticket 0.5 points below dense in every seed is double-win where the
    unpaired spread (a few points) leaves it open; IMP seed k transferred with seed k is the paired design."""
    effect = (-3.0, 2.0, -1.0, 3.5, -1.5)
    for k, e in enumerate(effect, 1):
        write_cell(tmp_path, f"dense/s{k}", 0.0, 90.0 + e, seed=k, images=10_000)
        write_cell(tmp_path, f"t{k}/s{k}", 0.5, 89.5 + e + 0.1 * (-1) ** k, seed=k, imp_seed=k, images=10_000)
    row = the_row(tmp_path, margin=2.0)  # 10,000 test images without per-image bits: about +-0.9 from the images
    test = row.tests[("std", "sa")]
    assert test.by_seed and test.df == 4 and row.call == verdict.WIN, row.status
    assert test.diff == pytest.approx(-0.5 - 0.02)
    ticket, dense = row.cells[("std", "sa")].samples, the_dense(tmp_path)[("std", "sa")].samples
    assert verdict.seed_pairs(ticket, dense) is not None
    crossed = [verdict.Sample(s.value, s.imp_seed, 1, s.images) for s in ticket]  # every IMP seed with seed 1
    assert verdict.seed_pairs(crossed, dense) is None
    unpaired = verdict.compare(crossed, dense, 2.0, 0.95)
    assert not unpaired.by_seed and unpaired.call == verdict.OPEN  # the seed spread, unpaired, is too wide


def the_dense(root):
    (group,) = analysis.collect(str(root), Options()).groups
    (row,) = [r for r in group.rows if r.dense]
    return row.cells


def test_a_paired_imp_stage_transfers_seed_k_with_seed_k_only(tmp_path):
    """`imp.paired = true`: IMP seed k's tickets get transfer seed k only (the dense model gets every seed), so the
    report can compare each with its dense partner; a seed missing from the init's seeds is named."""
    import campaignkit as kit
    from campaign import spec
    inputs = kit.make_inputs(str(tmp_path))

    def load(seeds, paired="true"):
        imp = (f'[[init.tickets]]\nname = "imp"\ndir = "{tmp_path / "imp"}"\nlevels = [2]\n[init.tickets.imp]\n'
               f'kind = "std"\ndata = "{inputs["data"]}"\nseeds = [1, 2, 3]\npaired = {paired}\n')
        return spec.load(kit.write_spec(str(tmp_path / "c.toml"), inputs, str(tmp_path / "runs"), seeds=seeds,
                                        modes=("std",), tickets=imp))
    ids = sorted(r.id for r in load((1, 2, 3)).runs if r.kind == "transfer")
    assert ids == ["tiny/folder-1/dense/std/s1", "tiny/folder-1/dense/std/s2", "tiny/folder-1/dense/std/s3",
                   "tiny/folder-1/imp-seed1-2/std/s1", "tiny/folder-1/imp-seed2-2/std/s2",
                   "tiny/folder-1/imp-seed3-2/std/s3"]
    assert len([r for r in load((1, 2, 3), "false").runs if r.kind == "transfer"]) == 3 + 9  # crossed
    with pytest.raises(spec.SpecError, match=r"seeds = \[1, 2\]: the paired tickets imp-seed3-2 need "
                                                       r"transfer seed 3"):
        load((1, 2))


def test_checkpoint_last_reads_the_weights_after_the_last_epoch(tmp_path):
    """--checkpoint last takes each run's `last` block (no choice on the validation set), not best_sa's."""
    for tag, sparsity, acc, last in (("dense", 0.0, 90.0, 80.0), ("t", 0.5, 90.0, 70.0)):
        write_cell(tmp_path, tag, sparsity, acc, images=10_000)
        for mode in ("std", "adv"):
            path = tmp_path / tag / mode / "results.json"
            data = json.loads(path.read_text())
            data["last"] = {"epoch": 9, "test_sa": last, "test_ra": last, "test_images": 10_000}
            path.write_text(json.dumps(data))
    assert the_row(tmp_path).cells[("std", "sa")].mean == 90.0
    row = the_row(tmp_path, checkpoint="last")
    assert row.cells[("std", "sa")].mean == 70.0 and row.call == verdict.LOSS
    assert "SA, RA after the last epoch" in report_tables.render_text(
        analysis.collect(str(tmp_path), Options(checkpoint="last")))
