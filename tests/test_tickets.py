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
    from safetensors import safe_open
    src = source()
    mask = half_mask(src)
    ckpt, out = str(tmp_path / "2-checkpoint.pth.tar"), str(tmp_path / "2-ticket.safetensors")
    torch.save(original_imp(src, mask), ckpt)
    code, stdout, _ = _cli(["export", ckpt, out], capsys)
    assert code == 0 and stdout.startswith(f"wrote {out}") and "packed" in stdout
    with safe_open(out, framework="numpy") as f:  # pickle-free: safetensors and numpy read it
        assert set(f.keys()) == {k + "_mask" for k in mask}  # masks only
        assert all(f.get_tensor(k).dtype.name == "uint8" for k in f.keys())
        header = {k: json.loads(v) for k, v in f.metadata().items()}
    assert (header["format"], header["version"]) == ("doublewin-packed-ticket", 2)
    assert "row-major" in header["bit_order"] and "most significant" in header["bit_order"]
    assert "init" not in header and "optimizer" not in header
    got, meta = pruning_utils.load_ticket(out)
    assert all(torch.equal(got[k], mask[k]) and got[k].dtype == torch.bool for k in mask)
    # the original's checkpoint: its level, and the digest of the init weights it holds; no local path
    assert meta["family"] == meta["exported_from"] == "2-checkpoint.pth.tar" and meta["state_prune"] == 2
    assert meta["init_digest"] == pruning_utils.weights_digest(state_of(src), mask) and "packed" not in meta
    assert meta["sparsity"] == pytest.approx(pruning_utils.sparsity(mask))
    assert meta["mask_digest"] == pruning_utils.mask_digest(mask)
    assert str(tmp_path).encode() not in open(out, "rb").read()
    code, stdout, _ = _cli(["inspect", out], capsys)  # every reader takes the packed format
    assert code == 0 and "kind      packed ticket (safetensors, version 2; mask digest verified)" in stdout
    code, stdout, _ = _cli(["compare", ckpt, out], capsys)
    assert code == 0 and "IoU of kept weights  1.0000" in stdout
    code, _, err = _cli(["export", ckpt, ckpt], capsys)
    assert code == 2 and "input file itself" in err
    plain = str(tmp_path / "plain.pth.tar")  # --unpacked: bool masks, the original's downstream script reads them
    assert _cli(["export", out, plain, "--unpacked"], capsys)[0] == 0
    raw = torch.load(plain, weights_only=True)
    assert "packed" not in raw and all(torch.equal(raw["state_dict"][k + "_mask"], mask[k]) for k in mask)
    assert (raw["format"], raw["version"]) == ("doublewin-ticket", 1)  # the unpacked format's own version
    assert pruning_utils.load_ticket(plain)[1]["family"] == "2-checkpoint.pth.tar"  # the family is kept


@pytest.mark.slow
def test_a_packed_resnet50_ticket_is_an_eighth_of_the_bool_one(tmp_path):
    torch.manual_seed(0)
    net = models.resnet50(1000)
    mask = pruning_utils.magnitude_prune(net, pruning_utils.full_mask(net), 0.8)
    bools, packed = str(tmp_path / "bool.pth.tar"), str(tmp_path / "packed.safetensors")
    pruning_utils.save_ticket(bools, mask, {"level": 8})
    pruning_utils.save_ticket(packed, mask, {"level": 8}, packed=True)
    assert os.path.getsize(packed) < 3.2 * 2 ** 20 < 20 * 2 ** 20 < os.path.getsize(bools)
    got, meta = pruning_utils.load_ticket(packed)
    assert meta["level"] == 8 and all(torch.equal(got[k], mask[k]) for k in mask)
    data = open(packed, "rb").read()
    open(packed, "wb").write(data[:-10])  # cut short
    with pytest.raises(errors.CheckpointError, match=f"^{packed}: a damaged packed ticket .*: copy or export it"):
        pruning_utils.load_ticket(packed)


def _flip_a_mask_byte(path: str) -> None:
    """XOR one bit of the first byte of the packed masks (the data after the safetensors header)."""
    data = bytearray(open(path, "rb").read())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start] ^= 0x01
    open(path, "wb").write(bytes(data))


def test_a_ticket_with_one_flipped_byte_is_refused_in_one_line(tmp_path, capsys):
    src = source()
    mask = half_mask(src)
    packed = str(tmp_path / "t.safetensors")
    pruning_utils.save_ticket(packed, mask, {"level": 2, "source": "aimp"}, packed=True)
    _flip_a_mask_byte(packed)
    with pytest.raises(errors.CheckpointError) as e:
        pruning_utils.load_ticket(packed)
    digest = pruning_utils.mask_digest(mask)
    assert str(e.value).startswith(f"{packed}: its masks do not give the mask_digest it records ({digest}, found ")
    for argv in (["inspect", packed], ["compare", packed, packed], ["export", packed, str(tmp_path / "x")]):
        code, out, err = _cli(argv, capsys)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and packed in err
    assert not os.path.exists(tmp_path / "x")
    intact = str(tmp_path / "intact.safetensors")  # a packed ticket without provenance exports as it is
    pruning_utils.save_ticket(intact, mask, {}, packed=True)
    assert _cli(["export", intact, str(tmp_path / "again.safetensors")], capsys)[0] == 0
    meta = pruning_utils.load_ticket(str(tmp_path / "again.safetensors"))[1]
    assert (meta["family"], meta["exported_from"], "init_digest" in meta) == ("intact.safetensors",) * 2 + (False,)
    # the unpacked format is checked alike: one mask entry changed behind the recorded digest
    plain = str(tmp_path / "t.pth.tar")
    pruning_utils.save_ticket(plain, mask, {"level": 2})
    obj = torch.load(plain, weights_only=True)
    name = next(iter(obj["state_dict"]))
    obj["state_dict"][name].view(-1)[0] ^= True
    torch.save(obj, plain)
    with pytest.raises(errors.CheckpointError, match="its masks do not give the mask_digest it records"):
        pruning_utils.load_ticket(plain)


def test_the_packed_format_reads_with_numpy_and_safetensors_as_documented(tmp_path):
    """The recipe in docs/TICKETS.md, run as written: masks and digest from numpy, hashlib and safetensors."""
    src = source()
    mask = half_mask(src)
    path = str(tmp_path / "t.safetensors")
    pruning_utils.save_ticket(path, mask, {"level": 2, "family": "aimp"}, packed=True)
    text = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "TICKETS.md")).read()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    scope = {"PATH": path}
    exec(compile(code, "docs/TICKETS.md", "exec"), scope)
    assert set(scope["masks"]) == set(mask) and all(
        (scope["masks"][k] == mask[k].numpy()).all() and scope["masks"][k].shape == tuple(mask[k].shape) for k in mask)
    assert scope["meta"]["family"] == "aimp" and scope["digest"] == scope["meta"]["mask_digest"]


def test_an_old_packed_torch_ticket_still_reads_and_is_verified(tmp_path):
    """Packed tickets written before the safetensors format: a torch file with "packed": true."""
    src = source()
    mask = half_mask(src)
    old = str(tmp_path / "old.pth.tar")
    masks = pruning_utils.mask_to_state_dict(mask, dtype=torch.bool)
    obj = {"format": "doublewin-ticket", "version": 1, "packed": True, "state_dict": pruning_utils.pack_masks(masks),
           "level": 2, "mask_digest": pruning_utils.mask_digest(mask)}
    torch.save(obj, old)
    got, meta = pruning_utils.load_ticket(old)
    assert all(torch.equal(got[k], mask[k]) for k in mask) and meta["level"] == 2
    obj["state_dict"][next(iter(masks))]["bits"][0] ^= 0x80
    torch.save(obj, old)
    with pytest.raises(errors.CheckpointError, match="its masks do not give the mask_digest"):
        pruning_utils.load_ticket(old)


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


@pytest.mark.slow
def test_missing_file_is_one_line_exit_2():
    proc = subprocess.run([sys.executable, "tickets.py", "inspect", "no/such/ticket.pth.tar"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no/such/ticket.pth.tar" in proc.stderr and "not found" in proc.stderr
