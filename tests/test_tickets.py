"""tickets.py / lottery/ticket_stats.py: inspect, compare (IoU against a hand count), export and convert on fabricated files."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch
import torchvision

import models
import pruning_utils
from lottery import ticket_stats
import tickets
from infra import errors
from infra.errors import run_cli
from fakeweights import half_mask, original_imp, robustness, source, state_of


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        run_cli(tickets.main, argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def _hand_masks() -> tuple[dict, dict]:
    """Two tiny masks with overlaps counted by hand: layer x 1 of 3, layer y 3 of 6, together 4 of 9."""
    a = {"x.weight": torch.tensor([1, 1, 0, 0], dtype=torch.bool).view(1, 1, 2, 2),
         "y.weight": torch.ones(6, 1, 1, 1, dtype=torch.bool)}
    b = {"x.weight": torch.tensor([1, 0, 1, 0], dtype=torch.bool).view(1, 1, 2, 2),
         "y.weight": torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.bool).view(6, 1, 1, 1)}
    return a, b


def test_compare_iou_matches_hand_count():
    a, b = _hand_masks()
    c = ticket_stats.compare(a, b)
    assert c["iou"] == pytest.approx(4 / 9)
    assert c["layers"]["x.weight"]["iou"] == pytest.approx(1 / 3)
    assert c["layers"]["y.weight"]["iou"] == pytest.approx(1 / 2)
    assert (c["both"], c["either"], c["total"]) == (4, 9, 10)
    assert c["sparsity_a"] == pytest.approx(2 / 10) and c["sparsity_b"] == pytest.approx(5 / 10)
    # independent masks at densities (1/2, 1/2) on 4 and (1, 1/2) on 6: both 1 + 3, either 3 + 6
    assert c["layers"]["x.weight"]["iou_random"] == pytest.approx(1 / 3)
    assert c["iou_random"] == pytest.approx(4 / 9)
    assert ticket_stats.compare(a, a)["iou"] == 1.0


def test_compare_cli_text_json_and_png(tmp_path, capsys):
    a, b = _hand_masks()
    pruning_utils.save_ticket(str(tmp_path / "imp.pth.tar"), a, {"level": 1})
    pruning_utils.save_ticket(str(tmp_path / "aimp.pth.tar"), b, {"level": 3})
    code, out, _ = _cli(["compare", str(tmp_path / "imp.pth.tar"), str(tmp_path / "aimp.pth.tar"),
                         "--json", str(tmp_path / "c.json"), "--png", str(tmp_path / "c.png")], capsys)
    assert code == 0
    assert "IoU of kept weights  0.4444" in out
    row = next(line for line in out.splitlines() if line.startswith("x.weight"))
    assert row.split() == ["x.weight", "1x1x2x2", "50.00%", "50.00%", "1", "0.3333", "0.3333"]
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["iou"] == pytest.approx(4 / 9) and data["layers"]["y.weight"]["both"] == 3
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_refuses_different_architectures(tmp_path, capsys):
    a, _ = _hand_masks()
    pruning_utils.save_ticket(str(tmp_path / "a.pth.tar"), a, {})
    pruning_utils.save_ticket(str(tmp_path / "b.pth.tar"), {"x.weight": a["x.weight"]}, {})
    code, out, err = _cli(["compare", str(tmp_path / "a.pth.tar"), str(tmp_path / "b.pth.tar")], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "'y.weight'" in err


@pytest.mark.parametrize("layout", ["ticket", "ours", "original"])
def test_inspect_reads_every_layout(tmp_path, capsys, layout):
    src = source()
    mask = half_mask(src)
    path = str(tmp_path / "file.pth.tar")
    if layout == "ticket":
        pruning_utils.save_ticket(path, mask, {"level": 2})
    elif layout == "ours":
        torch.save({"state_dict": pruning_utils.masked_state_dict(src, mask), "level": 2, "epoch": 7}, path)
    else:
        torch.save(original_imp(src, mask), path)
    code, out, _ = _cli(["inspect", path, "--json", str(tmp_path / "i.json")], capsys)
    assert code == 0
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    data = json.loads((tmp_path / "i.json").read_text())
    assert (data["kept"], data["total"], data["level"]) == (kept, total, 2)
    assert data["sparsity"] == pytest.approx(1 - kept / total)
    assert data["layers"]["conv1.weight"]["kept"] == int(mask["conv1.weight"].sum())
    assert f"sparsity  {100 * (1 - kept / total):.2f}% of conv weights" in out
    layer_rows = [line.split()[0] for line in out.splitlines() if line.endswith("%") and ".weight" in line]
    assert layer_rows == list(mask)


def test_export_writes_a_compact_mask_only_ticket(tmp_path, capsys):
    src = source()
    mask = half_mask(src)
    ckpt, out = str(tmp_path / "2-checkpoint.pth.tar"), str(tmp_path / "2-ticket.pth.tar")
    torch.save(original_imp(src, mask), ckpt)
    code, stdout, _ = _cli(["export", ckpt, out], capsys)
    assert code == 0 and stdout.startswith(f"wrote {out}") and "packed" in stdout
    raw = torch.load(out, weights_only=True)
    assert set(raw["state_dict"]) == {k + "_mask" for k in mask} and raw["packed"] is True  # masks only
    assert "init" not in raw and "optimizer" not in raw
    got, meta = pruning_utils.load_ticket(out)
    assert all(torch.equal(got[k], mask[k]) and got[k].dtype == torch.bool for k in mask)
    assert meta["source"] == meta["exported_from"] == ckpt and meta["state_prune"] == 2 and "packed" not in meta
    assert meta["sparsity"] == pytest.approx(pruning_utils.sparsity(mask))
    code, _, err = _cli(["export", ckpt, ckpt], capsys)
    assert code == 2 and "input file itself" in err
    plain = str(tmp_path / "plain.pth.tar")  # --unpacked: bool masks, the original's downstream script reads them
    assert _cli(["export", out, plain, "--unpacked"], capsys)[0] == 0
    raw = torch.load(plain, weights_only=True)
    assert "packed" not in raw and all(torch.equal(raw["state_dict"][k + "_mask"], mask[k]) for k in mask)
    assert pruning_utils.load_ticket(plain)[1]["source"] == ckpt  # a ticket's family (source) is kept


def test_a_packed_resnet50_ticket_is_an_eighth_of_the_bool_one(tmp_path):
    torch.manual_seed(0)
    net = models.resnet50(1000)
    mask = pruning_utils.magnitude_prune(net, pruning_utils.full_mask(net), 0.8)
    bools, packed = str(tmp_path / "bool.pth.tar"), str(tmp_path / "packed.pth.tar")
    pruning_utils.save_ticket(bools, mask, {"level": 8})
    pruning_utils.save_ticket(packed, mask, {"level": 8}, packed=True)
    assert os.path.getsize(packed) < 3.2 * 2 ** 20 < 20 * 2 ** 20 < os.path.getsize(bools)
    got, meta = pruning_utils.load_ticket(packed)
    assert meta["level"] == 8 and all(torch.equal(got[k], mask[k]) for k in mask)
    obj = torch.load(packed, weights_only=True)
    obj["state_dict"]["conv1.weight_mask"]["bits"] = obj["state_dict"]["conv1.weight_mask"]["bits"][:10]
    torch.save(obj, packed)
    with pytest.raises(errors.CheckpointError, match="packed ticket whose masks cannot be unpacked"):
        pruning_utils.load_ticket(packed)


def test_convert_output_loads_strictly_into_torchvision(tmp_path, capsys):
    src = models.resnet18(10)
    ref = state_of(src)
    torch.save(robustness(ref), tmp_path / "robust.ckpt")
    code, out, _ = _cli(["convert", str(tmp_path / "robust.ckpt"), str(tmp_path / "plain.pth")], capsys)
    assert code == 0 and "robustness-library checkpoint" in out and "wrote" in out
    net = torchvision.models.resnet18(num_classes=10)
    net.load_state_dict(torch.load(tmp_path / "plain.pth", weights_only=True), strict=True)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in ref.items())


def test_trust_pickle_flag_reaches_the_loader(tmp_path, capsys):
    mask = half_mask(source())
    path = str(tmp_path / "ticket_with_args.pth.tar")
    torch.save({"state_dict": pruning_utils.mask_to_state_dict(mask), "args": argparse.Namespace(lr=0.1)}, path)
    code, _, err = _cli(["inspect", path], capsys)
    assert code == 2 and "--trust-pickle" in err and err.count("\n") == 1
    code, out, _ = _cli(["inspect", path, "--trust-pickle"], capsys)
    assert code == 0 and "conv1.weight" in out


def test_missing_file_is_one_line_exit_2():
    proc = subprocess.run([sys.executable, "tickets.py", "inspect", "no/such/ticket.pth.tar"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no/such/ticket.pth.tar" in proc.stderr and "not found" in proc.stderr
