"""The campaign's measured cost: device-hours from each run's ledger (results.json's total once done, else its
epochs' rows) beside the FLOP estimate, per init and ticket family, in `plan`/`status`."""
from __future__ import annotations

import json
import os

import pytest

from campaign import estimate, spec, spent, state, status
from campaign.state import RunState

STD = os.path.join(spec.REPO, "script", "train_downstream", "std.sh")


def _run(tmp_path, rid: str) -> spec.Run:
    save = str(tmp_path / rid)
    cmd = ("bash", STD, "cifar10", "/init.pth", save, "", "--data", "/d", "--epochs", "2", "--amp", "bf16")
    return spec.Run(rid, "transfer", save, cmd, dataset="cifar10", mode="std")


def _write(run: spec.Run, rows_s: list[float], total_h: float | None = None, total_flop: float | None = None) -> None:
    os.makedirs(run.save_dir, exist_ok=True)
    with open(os.path.join(run.save_dir, state.METRICS), "w") as f:
        for i, s in enumerate(rows_s):
            f.write(json.dumps({"epoch": i, "cost": {"device_s": s, "flop": 1e15}}) + "\n")
        f.write('{"epoch": 9, "cost": {"devi')  # a torn last line is skipped
    if total_h is not None:
        with open(os.path.join(run.save_dir, state.RESULTS), "w") as f:
            json.dump({"complete": True, "cost": {"device_hours": total_h, "flop": total_flop}}, f)


def test_measured_hours_come_from_the_ledger(tmp_path):
    a, b, c = (_run(tmp_path, f"robust/cifar10-1/{t}/std/s1") for t in ("aimp-1", "aimp-2", "dense"))
    hours = spent.estimated_hours(a)  # bf16 rate: the run passes --amp bf16
    flop = estimate.run_flop(a)  # the whole run's FLOPs, estimated
    _write(a, [1800.0, 1800.0], total_h=1.1, total_flop=0.9 * flop)  # done: results.json's total (epochs, tests)
    _write(b, [3600.0])                        # partial: its epochs so far
    rows = [RunState(a, "done", epochs_done=2), RunState(b, "partial", epochs_done=1), RunState(c, "pending")]
    assert spent.measured_hours(a, True) == 1.1 and spent.measured_hours(b, False) == 1.0
    assert spent.measured_hours(c, False) is None
    assert spent.family(a) == "robust aimp" and spent.family(c) == "robust dense"
    assert spent.family(spec.Run("r0", "transfer", "/x", ("true",))) == "r0"  # ids not made by a spec
    measured = spent.measure(rows)
    assert [(r.run.id, m.hours, m.flop) for r, m in measured] == [(a.id, 1.1, 0.9 * flop), (b.id, 1.0, 1e15)]
    lines = spent.table(measured)  # c above: no epoch, nothing recorded
    (line,) = [ln for ln in lines if ln.startswith("robust aimp")]
    assert hours == pytest.approx(flop / estimate.RATE["bf16"] / 3600)
    assert f"0.90, {1.1 / hours:.2f} (1 done)" in line and " 2 " in line  # FLOPs like with like; then hours
    assert not any(ln.startswith("robust dense") for ln in lines)  # nothing recorded yet
    assert spent.summary(measured) == {"robust aimp": pytest.approx(2.1)}
    assert spent.summary(measured, "flop") == {"robust aimp": pytest.approx(0.9 * flop + 1e15)}
    _write(a, [1800.0], total_h=1.1)  # a ledger without FLOPs (null): its FLOP ratio is not made up
    (line,) = [ln for ln in spent.table(spent.measure(rows)) if ln.startswith("robust aimp")]
    assert f"-, {1.1 / hours:.2f} (1 done)" in line
    campaign = spec.Campaign(str(tmp_path / "c.toml"), str(tmp_path), (a, b, c))
    assert "device-hours measured so far" in status.plan_text(campaign, rows)
    assert "device-hours measured so far" in status.status_text(campaign, rows)
    assert status.summary(campaign, rows)["measured_device_hours"] == {"robust aimp": pytest.approx(2.1)}
    assert status.summary(campaign, rows)["measured_flop"] == {"robust aimp": 1e15}  # a's ledger has no FLOPs now
