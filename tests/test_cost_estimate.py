"""`sweep.py plan`'s estimate: FLOPs per image from the compute ledger's own counter (2 per multiply-add), times
what each IMP stage's settings pass (attack steps, FGSM-RS's one step, the data diet, one-shot pruning's nothing,
early-bird's full schedule, said so), for one-family specs."""
from __future__ import annotations

import contextlib
import io
import json
import os

import pytest

import sweep
from campaign import estimate, spec

STAGES = {  # family -> its IMP stage's kind and overrides (as in campaign/example.toml, 2 levels of 3 epochs)
    "aimp": ("adv", []),
    "aimp-fgsm": ("adv", ["--attack", "fgsm"]),
    "aimp-diet": ("adv", ["--data_number", "0.1"]),
    "aimp-eb": ("adv", ["--early-bird", "0.02"]),
    "imp": ("std", []),
    "omp": ("std", ["--omp-level", "2"]),
}


def _plan(tmp_path, family: str) -> dict:
    """`sweep.py plan --json` of a spec with this one family (its IMP stage on a folder that does not exist:
    ImageNet's split sizes), and the IMP stage's entry."""
    kind, overrides = STAGES[family]
    folder = tmp_path / family
    folder.mkdir()
    weights = tmp_path / "init.pth"
    weights.write_bytes(b"")
    path = folder / "spec.toml"
    path.write_text(f"""root = "{folder / 'sweep'}"
data = "{tmp_path / 'data'}"
[[init]]
name = "robust"
weights = "{weights}"
datasets = ["cifar10"]
modes = ["adv"]
seeds = [1]
[[init.tickets]]
name = "{family}"
dir = "{folder / 'tickets'}"
levels = [2]
[init.tickets.imp]
kind = "{kind}"
data = "{tmp_path / 'imagenet'}"
overrides = {json.dumps(["--epochs", "6", "--prune_epoch", "3", *overrides])}
""")
    out, printed = folder / "plan.json", io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert sweep.main(["plan", str(path), "--json", str(out)]) == 0
    plan = json.loads(out.read_text())
    (stage,) = [s for s in plan["states"] if s["id"].startswith("imp:")]
    return {"plan": plan, "stage": stage, "printed": printed.getvalue()}


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plans")
    return {family: _plan(tmp, family) for family in STAGES}


def test_fgsm_rs_costs_about_0_55_of_pgd_3_a_diet_a_tenth_and_one_shot_nothing(plans):
    flop = {family: p["stage"]["left_flop"] for family, p in plans.items()}
    pgd3 = flop["aimp"]
    assert flop["aimp-fgsm"] / pgd3 == pytest.approx(0.55, abs=0.02)
    assert flop["aimp-diet"] / pgd3 == pytest.approx(0.1, abs=0.01)  # the val split is not dieted: a little over
    assert flop["aimp-diet"] / pgd3 > 0.1
    assert flop["omp"] == 0
    assert flop["imp"] / pgd3 == pytest.approx(0.33, abs=0.02)  # clean training: 3 + 1 forward-equivalents of 9
    assert flop["aimp-eb"] == pgd3  # bounded by its full schedule, and said so
    assert plans["aimp-eb"]["stage"]["estimate_note"].startswith("early-bird: at most its full schedule")
    assert plans["omp"]["stage"]["estimate_note"] == "one-shot pruning: no training"
    assert "estimate_note" not in plans["aimp"]["stage"]
    plan = plans["aimp"]["plan"]
    assert plan["flop_unit"].startswith("FLOP (2 per multiply-add")
    assert plan["left_flop"] == pytest.approx(sum(s["left_flop"] for s in plan["states"]))
    assert plan["left_gpu_hours_bf16"] == pytest.approx(plan["left_flop"] / estimate.RATE["bf16"] / 3600, abs=0.01)
    assert " FLOP (2 per multiply-add, counted as the compute ledger counts)" in plans["aimp"]["printed"]
    assert "note: imp:robust/omp: one-shot pruning: no training" in plans["omp"]["printed"]


def test_the_imp_estimate_is_the_ledgers_count_times_the_images():
    """ResNet-50 at 224 px, per image: forward 8.178 GFLOP (4.089 G multiply-adds, counted independently with
    forward hooks), an attack step forward + input gradient, a training step forward + full backward."""
    run = spec.Run("imp:x/aimp", "imp", "/nowhere", ("bash", os.path.join(spec.REPO, "script", "imp_pretrain",
                                                                            "imp_adv.sh"), "w", "/nowhere", "/no/data",
                                                       "--epochs", "2"), mode="adv")
    per = estimate.per_image(run)
    assert per["eval"] == 8_178_368_512
    assert (per["attack"], per["train"]) == (16_356_737_024, 24_299_077_632)
    expected = 2 * (estimate.IMAGENET_TRAIN * (per["train"] + 3 * per["attack"]) + estimate.IMAGENET_VAL * per["eval"])
    assert estimate.run_flop(run) == expected
    assert estimate.run_flop(run, epochs_done=1) == expected / 2 and estimate.run_flop(run, epochs_done=2) == 0


def test_image_counts_are_read_once_per_process(tmp_path, monkeypatch):
    (tmp_path / "train" / "a").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "train" / "a" / f"{i}.png").write_bytes(b"")
    assert estimate.folder_images(str(tmp_path), "train") == 3
    monkeypatch.setattr(os, "walk", lambda *a, **k: pytest.fail("walked the folder again"))
    assert estimate.folder_images(str(tmp_path), "train") == 3


@pytest.mark.parametrize("classes", [1000, 10])
def test_per_image_counts_are_the_ledgers_counts_on_a_real_model(classes):
    import models
    from models import flops
    from training import ledger
    table = ledger.FlopTable(models.build("resnet_tiny", classes, small_input=True))
    for kind in flops.KINDS:
        per = flops.per_image("resnet_tiny", 32, kind, num_classes=classes, small_input=True)
        assert table.flop(kind, (4, 3, 32, 32)) == 4 * per > 0, kind


READ = ("--epochs", "--train_step", "--test_step", "--eval_from", "--data_number", "--arch", "--image-size", "--attack",
        "--omp-level", "--omp-sparsity", "--early-bird", "--data", "--amp", "--small-input")  # what the estimate reads


def test_the_estimate_reads_every_spelling_the_stages_accept_for_its_flags():
    """An override in any spelling a stage accepts counts (the estimate has no torch, so no parser of its own)."""
    from lottery import cli as imp_cli
    from transfer import cli as transfer_cli
    seen = set()
    for parser in (imp_cli.get_args_parser(True), imp_cli.get_args_parser(False), transfer_cli.get_args_parser()):
        for action in parser._actions:
            keys = {estimate.SAME.get(o, o) for o in action.option_strings}
            if keys & set(READ):
                assert len(keys) == 1, action.option_strings
                seen |= keys
    assert seen == set(READ)


def test_the_estimate_follows_the_recipe_and_the_overrides_in_any_spelling():
    run = spec.Run("imp:x/aimp", "imp", "/nowhere", ("bash", os.path.join(spec.REPO, "script", "imp_pretrain",
                                                                            "imp_adv.sh"), "w", "/nowhere", "/no/data",
                                                       "--arch", "resnet18", "--epochs=60"), mode="adv")
    f = estimate.flags(run)
    assert (f["--arch"], f["--epochs"], f["--train_step"], f["--image-size"]) == ("resnet18", "60", "3", "224")
    assert estimate.passes(run).train == 60 * estimate.IMAGENET_TRAIN
