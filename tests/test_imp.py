"""IMP / A-IMP on the pre-training task (lottery/levels.py, lottery/state.py, lottery/cli.py, main_imp_*.py):
levels, masks, rewinding, files, resume, one-shot pruning and the CLI, on a tiny ImageFolder with resnet_tiny at
32 px."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import attacks
from infra import checkpoint
from infra import paths
from lottery import cli as imp_cli
from lottery import config as imp_config
from lottery import levels as imp_levels
from lottery import state as imp_state
import main_imp_adv
from dataset import IMAGENET_MEAN, IMAGENET_STD
import main_imp_std
import pruning_utils
from infra.distributed import DistEnv
from infra.errors import CheckpointError, ConfigError, UserError
from recipes import ROW_KEYS, imp_argv, same_masks, ticket, tiny_model, write_init

RATE = 0.2


def trained_weights(save_dir: str, level: int) -> dict:
    obj = checkpoint.load_file(paths.imp_checkpoint(save_dir, level))
    return pruning_utils.unmask_state_dict(obj["state_dict"])[0]


def torch_global_l1(state: dict, mask: dict | None, amount: float) -> dict:
    """The original's pruning step with torch's own prune module: custom_from_mask, then global L1."""
    net = tiny_model()
    net.load_state_dict(state)
    convs = {name: m for name, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    if mask is not None:
        for name, m in convs.items():
            torch_prune.custom_from_mask(m, "weight", mask[name + ".weight"])
    torch_prune.global_unstructured([(m, "weight") for m in convs.values()],
                                    pruning_method=torch_prune.L1Unstructured, amount=amount)
    return {name + ".weight": m.weight_mask.bool() for name, m in convs.items()}


@pytest.fixture(scope="module")
def tiny(_fake_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("imp")
    return _fake_files("folder"), write_init(str(root / "init.pth"))


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    """Standard IMP, three levels of one epoch each (levels 1-3 trained, ticket 4 computed)."""
    data, init = tiny
    save_dir = str(tmp_path_factory.mktemp("imp_run"))
    assert main_imp_std.main(imp_argv(data, init, save_dir, "--epochs", "3", "--prune_epoch", "1",
                                      "--lr", "0.05")) == 0
    return save_dir


# ---------------------------------------------------------------------------- levels and masks
def test_sparsity_per_level_is_exactly_torch_rounding_of_1_minus_0_8_to_the_k(run):
    total = sum(m.numel() for m in ticket(run, 1).values())
    alive = total
    for level in range(1, 5):
        alive -= round(RATE * alive)  # torch prune: round(amount * alive) per round
        mask = ticket(run, level)
        kept = sum(int(m.sum()) for m in mask.values())
        assert kept == alive
        assert abs(pruning_utils.sparsity(mask) - (1 - 0.8 ** level)) <= level / 2 / total  # half a weight a round
        report = json.load(open(paths.imp_sparsity(run, level)))
        assert (report["level"], report["kept"], report["total"]) == (level, kept, total)
        assert report["sparsity"] == pytest.approx(1 - kept / total)
        assert sum(v["kept"] for v in report["layers"].values()) == kept


def test_masks_only_shrink(run):
    for level in range(1, 4):
        old, new = ticket(run, level), ticket(run, level + 1)
        assert all(not bool((new[k] & ~old[k]).any()) for k in old)
        assert sum(int(m.sum()) for m in new.values()) < sum(int(m.sum()) for m in old.values())


def test_level_1_mask_is_torch_global_l1_of_the_init_and_every_pruned_weight_is_smallest(tiny, run):
    init = torch.load(tiny[1], weights_only=True)
    mask = ticket(run, 1)
    assert same_masks(mask, torch_global_l1(init, None, RATE))
    kept = torch.cat([init[k][m].abs() for k, m in mask.items()])
    pruned = torch.cat([init[k][~m].abs() for k, m in mask.items()])
    assert pruned.max() <= kept.min()


def test_each_new_mask_is_torch_global_l1_of_the_previous_levels_trained_weights(tiny, run):
    init = torch.load(tiny[1], weights_only=True)
    for level in range(1, 4):
        trained = trained_weights(run, level)
        assert not torch.equal(trained["layer1.0.conv1.weight"], init["layer1.0.conv1.weight"])  # it trained
        assert same_masks(ticket(run, level + 1), torch_global_l1(trained, ticket(run, level), RATE))


def test_begin_level_rewinds_survivors_to_the_init(tiny, run, tmp_path):
    data, init_path = tiny
    init = torch.load(init_path, weights_only=True)
    net = tiny_model()
    net.load_state_dict(trained_weights(run, 1))
    cfg = imp_config.IMPConfig(data=data, save_dir=str(tmp_path), init=init_path, arch="resnet_tiny", epochs=3,
                               prune_epoch=1, rate=RATE)
    mask = imp_levels.begin_level(net, init, ticket(run, 1), 2, cfg, DistEnv())
    assert same_masks(mask, ticket(run, 2))  # the loop's ticket 2 is this very step
    state = net.state_dict()
    for key, value in init.items():
        expected = value * mask[key] if key in mask else value
        assert torch.equal(state[key], expected), key
    assert same_masks(ticket(str(tmp_path), 2), mask)


def test_pruned_weights_stay_zero_in_every_checkpoint(run):
    for level in range(1, 4):
        sd = checkpoint.load_file(paths.imp_checkpoint(run, level))["state_dict"]
        origs = [k for k in sd if k.endswith(".weight_orig")]
        assert len(origs) == len(ticket(run, 1))
        for key in origs:
            mask = sd[key.replace("_orig", "_mask")]
            assert mask.dtype == torch.float32 and torch.equal(mask.bool(), ticket(run, level)[key[:-5]])
            assert not bool(sd[key][mask == 0].any())


# ---------------------------------------------------------------------------- files
def test_run_leaves_the_original_files_and_ours(tiny, run):
    init = torch.load(tiny[1], weights_only=True)
    rows = checkpoint.read_jsonl(os.path.join(run, paths.METRICS))
    assert [(r["level"], r["epoch"]) for r in rows] == [(1, 0), (2, 1), (3, 2)]  # epochs count from 0
    for r in rows:
        assert ROW_KEYS | {"sparsity", "val_sa_top5", "best_val_sa"} <= r.keys() and r["val_ra"] is None
        assert r["sparsity"] == pytest.approx(1 - 0.8 ** r["level"], abs=1e-4)
    for level in range(1, 4):
        for path in (paths.imp_checkpoint(run, level), paths.imp_best(run, level)):
            obj = checkpoint.load_file(path)  # weights_only=True
            assert (obj["level"], obj["epoch"], obj["arch"]) == (level, level, "resnet_tiny")
            assert obj["best_acc1"] == pytest.approx(rows[level - 1]["val_sa"])
            assert {"optimizer", "state_dict", "init", "config"} <= obj.keys()
            assert all(torch.equal(obj["init"][k], v) for k, v in init.items())
    for level in range(1, 5):
        meta = pruning_utils.load_ticket(paths.imp_ticket(run, level))[1]
        assert (meta["level"], meta["init"], meta["family"]) == (level, tiny[1], "imp")
        assert meta["config"]["rate"] == RATE and meta["mask_digest"] == pruning_utils.mask_digest(ticket(run, level))
        # the ticket's cost: every epoch of the levels before it (ticket 1 is pruned from the init: nothing)
        made = [r["cost"] for r in rows if r["level"] < level]
        assert meta["cost"]["train_images"] == sum(c["train_images"] for c in made) == 12 * (level - 1)
        assert meta["cost"]["flop"] == sum(c["flop"] for c in made) and (level == 1) == (meta["cost"]["flop"] == 0)
        record = json.load(open(paths.imp_sparsity(run, level)))
        assert record["cost"] == meta["cost"] and record["level_cost"]["train_images"] == 12 * (level > 1)
    for c in (r["cost"] for r in rows):  # clean IMP: one forward per image, one backward per training image
        assert c["eval_images"] > 0 and c["forward_passes"] == c["train_images"] + c["eval_images"]
        assert c["backward_passes"] == c["train_images"] == 12 and c["precision"] == "fp32" and c["devices"] == 1
    assert os.path.getsize(paths.imp_ticket(run, 1)) < os.path.getsize(paths.imp_checkpoint(run, 1)) / 3
    assert not os.path.exists(paths.imp_checkpoint(run, 4))
    config = json.load(open(os.path.join(run, paths.CONFIG)))
    assert (config["lr"], config["epochs"], config["attack"]) == (0.05, 3, None)
    log = open(os.path.join(run, paths.LOG)).read()
    assert "process layout: one process on cpu" in log and "IMP done" in log


def test_rerunning_with_other_hyperparameters_is_refused(tiny, run):
    data, init = tiny
    with pytest.raises(ConfigError, match=r"lr \(0\.05 -> 0\.1\).*--restart"):
        main_imp_std.main(imp_argv(data, init, run, "--epochs", "3", "--prune_epoch", "1", "--lr", "0.1"))


def test_evaluate_reports_the_checkpoints_val_accuracy(tiny, run, tmp_path):
    data, init = tiny
    assert main_imp_std.main(imp_argv(data, init, str(tmp_path), "-e", "--resume",
                                      paths.imp_checkpoint(run, 3))) == 0
    out = json.load(open(tmp_path / paths.EVALUATION))
    row = checkpoint.read_jsonl(os.path.join(run, paths.METRICS))[2]
    assert out["sa_top1"] == pytest.approx(row["val_sa"]) and out["sa_top5"] == pytest.approx(row["val_sa_top5"])
    assert out["sparsity"] == pytest.approx(row["sparsity"])
    assert not os.path.exists(tmp_path / paths.CONFIG)


def test_evaluate_with_the_attack_reports_ra_of_the_dense_init(tiny, tmp_path):
    """-e measures the unpruned init (sparsity 0), not the original's init after its first 20% prune."""
    data, init = tiny
    assert main_imp_adv.main(imp_argv(data, init, str(tmp_path), "-e", "--train_eps", "16/255")) == 0
    out = json.load(open(tmp_path / paths.EVALUATION))
    assert (out["source"], out["sparsity"], out["attack"].split()[0]) == (init, 0.0, "PGD-3")
    assert 0 <= out["ra_top1"] <= out["sa_top1"]


def original_checkpoint(ours: dict, script: str) -> dict:
    """A level checkpoint as the original writes it: main_std.py's keys, or main_adv.py's, whose model starts with
    advertorch's normalisation layer, so `normalize.mean/std` sit in `state_dict` and `init` (ImageNet stats)."""
    state, init = dict(ours["state_dict"]), dict(ours["init"])
    if script == "main_adv":
        stats = {"normalize.mean": torch.tensor(IMAGENET_MEAN), "normalize.std": torch.tensor(IMAGENET_STD)}
        state, init = {**stats, **state}, {**stats, **init}
    return {"epoch": 1, "arch": "resnet50", "state_dict": state, "optimizer": ours["optimizer"],
            "best_acc1": torch.tensor(ours["best_acc1"]), "state_prune": 1, "init": init}


@pytest.mark.parametrize("script", ["main_std", "main_adv"])
def test_resume_from_an_original_format_checkpoint_continues_at_the_next_level(tiny, run, tmp_path, script):
    data, init = tiny
    original = original_checkpoint(checkpoint.load_file(paths.imp_checkpoint(run, 1)), script)
    assert any(k.endswith(".weight_orig") for k in original["state_dict"])  # torch-prune naming
    torch.save(original, tmp_path / "orig.pth.tar")
    save_dir = str(tmp_path / "run")
    main = main_imp_adv.main if script == "main_adv" else main_imp_std.main
    extra = ("--train_step", "1") if script == "main_adv" else ()
    assert main(imp_argv(data, init, save_dir, "--epochs", "2", "--prune_epoch", "1", "--lr", "0.05",
                         "--resume", str(tmp_path / "orig.pth.tar"), *extra)) == 0
    assert not os.path.exists(paths.imp_checkpoint(save_dir, 1))
    assert same_masks(ticket(save_dir, 1), ticket(run, 1)) and same_masks(ticket(save_dir, 2), ticket(run, 2))
    assert [r["level"] for r in checkpoint.read_jsonl(os.path.join(save_dir, paths.METRICS))] == [2]
    assert same_masks(ticket(save_dir, 3), torch_global_l1(trained_weights(save_dir, 2), ticket(run, 2), RATE))


def test_restore_takes_the_original_a_imp_normalisation_and_keeps_it_out_of_the_init(tiny, run):
    """main_adv.py's `normalize.mean/std` set the model's normalisation layer (they are the model's stats); the
    rewind point holds torchvision keys only, so rewinding loads strictly."""
    ours = checkpoint.load_file(paths.imp_checkpoint(run, 1))
    original = original_checkpoint(ours, "main_adv")
    original["state_dict"]["normalize.mean"] = torch.tensor([0.5, 0.4, 0.3])
    net = tiny_model()
    mask, init_state = imp_state.restore(net, original, "orig.pth.tar", {})
    assert net.normalize.mean.flatten().tolist() == pytest.approx([0.5, 0.4, 0.3])
    assert net.normalize.std.flatten().tolist() == pytest.approx(IMAGENET_STD)
    assert set(init_state) == set(net.state_dict()) and same_masks(mask, ticket(run, 1))
    pruning_utils.rewind(net, init_state, mask)
    original["state_dict"]["normalize.extra"] = torch.zeros(1)  # anything else still does not fit
    with pytest.raises(CheckpointError, match="unexpected normalize.extra"):
        imp_state.restore(tiny_model(), original, "orig.pth.tar", {})


# ---------------------------------------------------------------------------- one-shot and random
def test_one_shot_to_a_level_or_a_sparsity_without_training(tiny, tmp_path):
    data, init = tiny
    state = torch.load(init, weights_only=True)
    out = str(tmp_path / "omp")
    assert main_imp_std.main(imp_argv(data, init, out, "--omp-level", "3")) == 0
    assert same_masks(ticket(out, 3), torch_global_l1(state, None, 1 - 0.8 ** 3))
    assert pruning_utils.load_ticket(paths.imp_ticket(out, 3))[1]["family"] == "omp"
    assert json.load(open(paths.imp_sparsity(out, 3)))["sparsity"] == pytest.approx(1 - 0.8 ** 3, abs=1e-4)
    kept = sorted(n for n in os.listdir(out) if not n.startswith(".tmp-"))  # the lease holder's temp folder
    assert kept == [".lease", ".progress", "3-sparsity.json", "3-ticket.pth.tar", "config.json", "log.txt"]
    rand = str(tmp_path / "random")
    assert main_imp_std.main(imp_argv(data, init, rand, "--omp-sparsity", "0.5", "--prune-method", "random")) == 0
    mask = ticket(rand, 1)
    total = sum(m.numel() for m in mask.values())
    assert sum(int(m.sum()) for m in mask.values()) == total - round(0.5 * total)
    assert not same_masks(mask, torch_global_l1(state, None, 0.5))


def test_restart_clears_the_earlier_runs_files(tiny, tmp_path):
    data, init = tiny
    out = str(tmp_path)
    assert main_imp_std.main(imp_argv(data, init, out, "--omp-level", "3")) == 0
    with pytest.raises(ConfigError, match="omp_level"):
        main_imp_std.main(imp_argv(data, init, out, "--omp-level", "2"))
    assert os.path.exists(paths.imp_ticket(out, 3))
    assert main_imp_std.main(imp_argv(data, init, out, "--omp-level", "2", "--restart")) == 0
    assert sorted(f for f in os.listdir(out) if f[0].isdigit()) == ["2-sparsity.json", "2-ticket.pth.tar"]
    assert json.load(open(os.path.join(out, paths.CONFIG)))["omp_level"] == 2


def test_random_pruning_is_a_pure_function_of_seed_and_level():
    net = tiny_model()
    cfg = imp_config.IMPConfig(data="d", save_dir="s", prune_method="random", seed=3)
    full = pruning_utils.full_mask(net)
    a, b, c = (imp_levels.prune(net, full, RATE, cfg, level) for level in (2, 2, 3))
    assert same_masks(a, b) and not same_masks(a, c)


# ---------------------------------------------------------------------------- bad input
def test_init_key_mismatch_and_head_mismatch_are_errors_naming_them(tiny, tmp_path):
    data, init = tiny
    state = torch.load(init, weights_only=True)
    state["extra.weight"] = torch.zeros(1)
    del state["layer1.0.bn1.bias"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"layer1\.0\.bn1\.bias.*extra\.weight"):
        main_imp_std.main(imp_argv(data, str(tmp_path / "bad.pth"), str(tmp_path / "a")))
    write_init(str(tmp_path / "ten.pth"), num_classes=10)
    with pytest.raises(CheckpointError, match="10 classes and the data 3"):
        main_imp_std.main(imp_argv(data, str(tmp_path / "ten.pth"), str(tmp_path / "b")))


@pytest.mark.parametrize("extra, message", [
    (["--epochs", "5", "--prune_epoch", "2"], "multiple of --prune_epoch"),
    (["--rate", "1.5"], "--rate"),
    (["--amp", "bf16"], "--amp bf16 needs a GPU"),
    (["--train_eps", "8"], "--train_eps 8 is above 1"),
    (["--omp-level", "2", "-e"], "drop -e"),
])
def test_bad_flags_are_one_line_errors(tiny, tmp_path, extra, message):
    data, init = tiny
    with pytest.raises(UserError, match=message):
        main_imp_adv.main(imp_argv(data, init, str(tmp_path), *extra))


def test_attack_flags_convert_once_from_fractions():
    parse = main_imp_adv.get_args_parser().parse_args
    cfg = imp_cli.config_from_args(parse(["d", "--save_dir", "s", "--train_eps", "4/255", "--train_gamma", "0.01"]))
    assert cfg.attack == attacks.AttackConfig("pgd", 4 / 255, 0.01, 3, True)
    cfg = imp_cli.config_from_args(parse(["d", "--save_dir", "s", "--attack", "fgsm", "--train_randinit"]))
    assert cfg.attack == attacks.AttackConfig("fgsm", 8 / 255, None, 1, False)
    # the script's pgd values (--train_step 3 --train_gamma 16/765) do not apply to fgsm: one step of 1.25 * eps
    cfg = imp_cli.config_from_args(parse(["d", "--save_dir", "s", "--train_step", "3", "--attack", "fgsm"]))
    assert cfg.attack.step_size == attacks.FGSM_STEP * 8 / 255 and cfg.attack.steps == 1
    assert "random start is on by default" in main_imp_adv.get_args_parser().format_help().replace("\n", " ").replace("  ", " ")
    std = main_imp_std.get_args_parser()
    assert imp_cli.config_from_args(std.parse_args(["d", "--save_dir", "s"])).attack is None
    with pytest.raises(SystemExit):
        std.parse_args(["d", "--train_eps", "8/255"])  # clean IMP takes no attack flags


# ---------------------------------------------------------------------------- the bash scripts
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"imp_adv.sh": (main_imp_adv, True), "imp_std.sh": (main_imp_std, False)}


def run_script(name: str, tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, list[str] | None]:
    """Run the real script with DOUBLEWIN_PY pointing at a recorder that dumps its argv instead of training."""
    record = tmp_path / "argv.json"
    recorder = tmp_path / "python"
    recorder.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    recorder.chmod(0o755)
    done = subprocess.run(["bash", os.path.join(ROOT, "script", "imp_pretrain", name), *args], text=True,
                          capture_output=True, env={**os.environ, "DOUBLEWIN_PY": str(recorder)}, timeout=60)
    return done, json.load(open(record)) if record.exists() else None


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_argument_line_parses_with_its_entry_point(name, tmp_path):
    module, adversarial = SCRIPTS[name]
    done, argv = run_script(name, tmp_path, "W.pth", "SAVE", "DATA")
    assert done.returncode == 0, done.stderr
    assert argv[:2] == ["-u", os.path.join(ROOT, module.__name__ + ".py")]
    args = module.get_args_parser().parse_args(argv[2:])
    assert (args.init, args.save_dir, args.data, args.arch) == ("W.pth", "SAVE", "DATA", "resnet50")
    assert (args.lr, args.weight_decay, args.batch_size, args.rate) == (0.0005, 1e-4, 2048, 0.2)
    assert (args.prune_epoch, args.epochs, args.seed, args.multiprocessing_distributed) == (30, 570, 1, True)
    assert (args.dist_url, args.dist_backend, args.world_size, args.rank) == ("auto", "nccl", 1, 0)
    cfg = imp_cli.config_from_args(args)
    assert cfg.levels == 19
    if adversarial:
        assert cfg.attack == attacks.AttackConfig("pgd", 8 / 255, 16 / (3 * 255), 3, True)
    else:
        assert cfg.attack is None
    done, argv = run_script(name, tmp_path, "W.pth", "SAVE", "DATA", "--epochs", "60", "-b", "256")
    args = module.get_args_parser().parse_args(argv[2:])
    assert (args.epochs, args.batch_size, args.lr) == (60, 256, 0.0005)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
@pytest.mark.parametrize("args", [("W.pth", "SAVE"), ("W.pth", "", "DATA")])
def test_script_without_its_three_positionals_prints_usage(name, args, tmp_path):
    done, argv = run_script(name, tmp_path, *args)
    assert done.returncode == 2 and argv is None
    assert done.stderr.startswith(f"usage: bash script/imp_pretrain/{name} INIT_WEIGHTS SAVE_DIR DATA_DIR")


# ---------------------------------------------------------------------------- speed switches
@pytest.mark.slow
def test_compile_flag_compiles_in_place_and_checkpoints_keep_the_plain_names(tiny, tmp_path, eager_compile):
    """--compile reaches nn.Module.compile (dynamo with its eager backend here: the real tracing of our model,
    attack and masks without inductor's minutes of C++ builds); files keep the names of the plain model."""
    data, init = tiny
    save_dir = str(tmp_path / "c")
    assert main_imp_adv.main(imp_argv(data, init, save_dir, "--epochs", "1", "--prune_epoch", "1", "--compile",
                                      "--train_step", "1")) == 0
    assert eager_compile == ["ResNet"]
    names = set(pruning_utils.unmask_state_dict(checkpoint.load_file(paths.imp_checkpoint(save_dir, 1))
                                                ["state_dict"])[0])
    assert names == set(tiny_model().state_dict())
    assert json.load(open(os.path.join(save_dir, "config.json")))["compile"] is True


def test_a_run_continues_only_with_its_settings_but_may_grow_and_report_differently(tiny, tmp_path):
    data, init = tiny
    save_dir = str(tmp_path / "run")
    args = imp_argv(data, init, save_dir, "--prune_epoch", "1", "--lr", "0.05", "--no-fused-sgd")
    assert main_imp_std.main(args + ["--epochs", "1"]) == 0
    with pytest.raises(ConfigError, match=r"fused_sgd \(False -> True\).*--restart"):
        main_imp_std.main([a for a in args if a != "--no-fused-sgd"] + ["--epochs", "1"])
    # --epochs may grow (one more level), and progress display and workers may differ: they change no number
    assert main_imp_std.main(args + ["--epochs", "2", "--progress", "-j", "1"]) == 0
    assert len(list(checkpoint.read_jsonl(os.path.join(save_dir, paths.METRICS)))) == 2


def test_no_tf32_turns_cudnn_tf32_off_and_is_recorded(tiny, tmp_path, monkeypatch):
    """TF32 in fp32 convolutions is cuDNN's default (ours); --no-tf32 computes them in full fp32, as PyTorch 1.5."""
    data, init = tiny
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    seen, train = [], imp_levels.engine.train_one_epoch
    monkeypatch.setattr(imp_levels.engine, "train_one_epoch",
                        lambda *a, **k: seen.append(torch.backends.cudnn.allow_tf32) or train(*a, **k))
    save_dir = str(tmp_path / "fp32")
    assert main_imp_std.main(imp_argv(data, init, save_dir, "--epochs", "1", "--prune_epoch", "1", "--no-tf32")) == 0
    assert seen == [False] and torch.backends.cudnn.allow_tf32 is True  # for the run only
    assert json.load(open(os.path.join(save_dir, "config.json")))["tf32"] is False
    assert imp_config.IMPConfig(data=data, save_dir=save_dir).tf32 is True


def test_an_a_imp_run_with_the_summed_attack_loss_continues_only_with_it(tiny, tmp_path, monkeypatch):
    """--attack-loss sum (advertorch's default; the original: the mean) reaches the attack and is recorded."""
    data, init = tiny
    save_dir = str(tmp_path / "sum")
    args = imp_argv(data, init, save_dir, "--epochs", "2", "--prune_epoch", "1", "--train_step", "1")
    calls, summed = [], attacks.LOSSES["sum"]
    monkeypatch.setitem(attacks.LOSSES, "sum", lambda out, y: calls.append(len(y)) or summed(out, y))
    assert main_imp_adv.main(args + ["--attack-loss", "sum", "--epochs", "1"]) == 0
    assert calls, "--attack-loss sum must reach the training attack"
    path = os.path.join(save_dir, "config.json")
    assert json.load(open(path))["attack_loss"] == "sum"
    with pytest.raises(ConfigError, match=r"attack_loss \('sum' -> 'mean'\)"):
        main_imp_adv.main(args)
    assert imp_config.IMPConfig(data=data, save_dir=save_dir).attack_loss == "mean"
    assert main_imp_adv.main(args + ["--attack-loss", "sum"]) == 0  # continues with level 2
    assert json.load(open(path))["attack_loss"] == "sum"
    assert len(list(checkpoint.read_jsonl(os.path.join(save_dir, paths.METRICS)))) == 2
