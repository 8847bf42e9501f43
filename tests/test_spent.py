"""The campaign's measured cost: device-hours from each run's ledger (results.json's total once done, else its
epochs' rows) beside the FLOP estimate, per init and ticket family, in `plan`/`status`."""
from __future__ import annotations

import json
import os

import pytest

from campaign import spec, spent, state, status
from campaign.state import RunState

STD = os.path.join(spec.REPO, "script", "train_downstream", "std.sh")


def _run(tmp_path, rid: str) -> spec.Run:
    save = str(tmp_path / rid)
    cmd = ("bash", STD, "cifar10", "/init.pth", save, "", "--data", "/d", "--epochs", "2", "--amp", "bf16")
    return spec.Run(rid, "transfer", save, cmd, dataset="cifar10", mode="std")


def _write(run: spec.Run, rows_s: list[float], total_h: float | None = None) -> None:
    os.makedirs(run.save_dir, exist_ok=True)
    with open(os.path.join(run.save_dir, state.METRICS), "w") as f:
        for i, s in enumerate(rows_s):
            f.write(json.dumps({"epoch": i, "cost": {"device_s": s}}) + "\n")
        f.write('{"epoch": 9, "cost": {"devi')  # a torn last line is skipped
    if total_h is not None:
        with open(os.path.join(run.save_dir, state.RESULTS), "w") as f:
            json.dump({"complete": True, "cost": {"device_hours": total_h}}, f)


def test_measured_hours_come_from_the_ledger(tmp_path):
    a, b, c = (_run(tmp_path, f"robust/cifar10-1/{t}/std/s1") for t in ("aimp-1", "aimp-2", "dense"))
    _write(a, [1800.0, 1800.0], total_h=1.1)  # done: results.json's total (epochs and final tests)
    _write(b, [3600.0])                        # partial: its epochs so far
    rows = [RunState(a, "done", epochs_done=2), RunState(b, "partial", epochs_done=1), RunState(c, "pending")]
    assert spent.measured_hours(a, True) == 1.1 and spent.measured_hours(b, False) == 1.0
    assert spent.measured_hours(c, False) is None
    assert spent.family(a) == "robust aimp" and spent.family(c) == "robust dense"
    assert spent.family(spec.Run("r0", "transfer", "/x", ("true",))) == "r0"  # ids not made by a spec
    measured = spent.measure(rows)
    assert [(r.run.id, h) for r, h in measured] == [(a.id, 1.1), (b.id, 1.0)]  # c: no epoch, nothing recorded
    lines = spent.table(measured)
    (line,) = [ln for ln in lines if ln.startswith("robust aimp")]
    estimate = spent.estimated_hours(a)  # bf16 rate: the run passes --amp bf16
    assert estimate > 0 and f"{1.1 / estimate:.2f} (1 done)" in line and " 2 " in line
    assert not any(ln.startswith("robust dense") for ln in lines)  # nothing recorded yet
    assert spent.summary(measured) == {"robust aimp": pytest.approx(2.1)}
    campaign = spec.Campaign(str(tmp_path / "c.toml"), str(tmp_path), (a, b, c))
    assert "device-hours measured so far" in status.plan_text(campaign, rows)
    assert "device-hours measured so far" in status.status_text(campaign, rows)
    assert status.summary(campaign, rows)["measured_device_hours"] == {"robust aimp": pytest.approx(2.1)}
