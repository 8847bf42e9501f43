"""Hand-made transfer results for the verdict's tests: results.json files with test sizes, per-image
correctness and the IMP seed of their ticket."""
from __future__ import annotations

import json
import os


def write_run(root, name, *, mode, sparsity, acc, seed=1, imp_seed=1, images=None, correct=None, family="aimp"):
    """A finished transfer run with SA = RA = `acc` on `images` test images (correct: packed per-image bits)."""
    best = {"epoch": 9, "val_sa": acc, "val_ra": acc, "test_sa": acc, "test_ra": acc}
    if images is not None:
        best["test_images"] = images
    if correct is not None:
        best["test_sa_correct"] = best["test_ra_correct"] = correct
    meta = {} if sparsity == 0 else {"level": 3, "source": family, "config": {"seed": imp_seed}}
    data = {"complete": True, "dataset": "cifar10", "data_number": 1.0, "mode": mode, "arch": "resnet50",
            "seed": seed, "epochs": 150, "init": "/inits/robust.pth", "sparsity": sparsity,
            "ticket": None if sparsity == 0 else f"/imp/s{imp_seed}/3-ticket.pth.tar", "ticket_meta": meta,
            "best_sa": best, "best_ra": best}
    folder = os.path.join(str(root), name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(data, f)


def write_cell(root, tag, sparsity, acc, **kw):
    for mode in ("std", "adv"):
        write_run(root, f"{tag}/{mode}", mode=mode, sparsity=sparsity, acc=acc, **kw)
