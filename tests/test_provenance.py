"""A ticket carries where it came from: the digest of the init weights it was found in (transfer refuses it, in
one line, on other weights unless --any-ticket-init), its family and cost; an exported (bit-packed) ticket gives
the transfer numbers of the file it was exported from."""
from __future__ import annotations

import json
import os

import pytest
import torch

import main_imp_std
import main_train_downstream
import pruning_utils
import tickets
from infra import checkpoint, errors
from infra import paths
from infra.errors import MaskError
from recipes import TINY, argv, untimed, write_init
from transfer import cli


@pytest.fixture(scope="module")
def found(_fake_files, tmp_path_factory):
    """Ticket 2 of a one-shot prune (OMP) of init A (a 3-class head, as IMP on the folder data), and init B."""
    d, image_folder_root = tmp_path_factory.mktemp("provenance"), _fake_files("folder")
    init_a, init_b = write_init(str(d / "a.pth"), seed=0), write_init(str(d / "b.pth"), seed=1)
    save = str(d / "omp")
    assert main_imp_std.main([image_folder_root, "--init", init_a, "--save_dir", save, *TINY,
                              "--omp-level", "2"]) == 0
    return init_a, init_b, paths.imp_ticket(save, 2)


def test_a_ticket_records_its_init_family_and_cost(found):
    init_a, _, ticket = found
    mask, meta = pruning_utils.load_ticket(ticket)
    assert (meta["init"], meta["family"], meta["level"]) == (init_a, "omp", 2)
    assert meta["init_digest"] == pruning_utils.weights_digest(checkpoint.load_file(init_a), mask)
    assert meta["cost"]["flop"] == 0 and meta["cost"]["train_images"] == 0  # one-shot: no training


def test_a_ticket_on_other_weights_is_refused_in_one_line(found, image_folder_root, tmp_path, capsys):
    init_a, init_b, ticket = found
    with pytest.raises(MaskError) as e:
        cli.main(argv(tmp_path / "b", image_folder_root, "folder", init_b, ticket=ticket, epochs=1))
    assert f"ticket {ticket} was found in other weights ({init_a}), not in --init {init_b}" in str(e.value)
    assert "--any-ticket-init" in str(e.value) and "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "b" / paths.CHECKPOINT)  # refused before any training
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:  # as the entry point reports it: exit 2, one line
        errors.run_cli(main_train_downstream.main,
                       argv(tmp_path / "b2", image_folder_root, "folder", init_b, ticket=ticket, epochs=1))
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith("error: ticket ") and err.count("\n") == 1, err
    cli.main(argv(tmp_path / "any", image_folder_root, "folder", init_b, ticket=ticket, epochs=1,
                  extra=("--any-ticket-init",)))
    assert "found in other init weights" in open(tmp_path / "any" / paths.LOG).read()


def test_an_exported_ticket_transfers_to_the_same_numbers(found, image_folder_root, tmp_path, capsys):
    init_a, _, ticket = found
    shared = str(tmp_path / "shared.pth.tar")
    assert tickets.main(["export", ticket, shared]) == 0
    assert os.path.getsize(shared) < os.path.getsize(ticket)
    for name, t in (("file", ticket), ("exported", shared)):
        cli.main(argv(tmp_path / name, image_folder_root, "folder", init_a, ticket=t, epochs=1))
    a, b = (untimed(json.load(open(tmp_path / n / paths.RESULTS))) for n in ("file", "exported"))
    assert (a["best_sa"], a["best_ra"], a["last"], a["sparsity"]) == (b["best_sa"], b["best_ra"], b["last"],
                                                                     b["sparsity"])
    assert b["ticket_meta"]["exported_from"] == os.path.basename(ticket) and b["ticket_meta"]["init_digest"] == \
        a["ticket_meta"]["init_digest"]
    rows = [untimed(checkpoint.read_jsonl(str(tmp_path / n / paths.METRICS))) for n in ("file", "exported")]
    assert rows[0] == rows[1]


def test_an_export_of_an_imp_checkpoint_keeps_its_provenance_and_no_local_path(_fake_files, image_folder_root,
                                                                             tmp_path, capsys):
    """Two IMP levels of one epoch: 2-checkpoint.pth.tar exported alone (no ticket or metrics beside it), with its
    metrics.jsonl, and beside its own ticket; each export is refused on other init weights."""
    init_a, init_b = write_init(str(tmp_path / "a.pth"), seed=0), write_init(str(tmp_path / "b.pth"), seed=1)
    save = str(tmp_path / "imp")
    assert main_imp_std.main([image_folder_root, "--init", init_a, "--save_dir", save, *TINY, "--epochs", "2",
                              "--prune_epoch", "1", "--family", "imp-test"]) == 0
    mask, meta = pruning_utils.load_ticket(paths.imp_ticket(save, 2))
    alone, with_rows = tmp_path / "alone", tmp_path / "rows"
    for folder, files in ((alone, ()), (with_rows, (paths.METRICS,))):
        folder.mkdir()
        for name in ("2-checkpoint.pth.tar", *files):
            (folder / name).write_bytes(open(os.path.join(save, name), "rb").read())
    for src, cost in ((str(alone / "2-checkpoint.pth.tar"), None),
                      (str(with_rows / "2-checkpoint.pth.tar"), meta["cost"]),
                      (paths.imp_checkpoint(save, 2), meta["cost"])):
        out = str(tmp_path / "shared.safetensors")
        assert tickets.main(["export", src, out]) == 0
        got, shared = pruning_utils.load_ticket(out)
        assert all(torch.equal(got[k], mask[k]) for k in mask)
        assert (shared["family"], shared["init_digest"], shared["level"]) == ("imp-test", meta["init_digest"], 2)
        assert shared.get("cost") == cost  # not recorded: left out, not 0
        assert shared["init"] == "a.pth" and shared["config"]["save_dir"] == "imp"
        raw = open(out, "rb").read()
        assert not any(p.encode() in raw for p in (str(tmp_path), image_folder_root, os.path.dirname(init_a)))
        with pytest.raises(MaskError, match=r"was found in other weights \(a.pth\), not in --init"):
            cli.main(argv(tmp_path / "b", image_folder_root, "folder", init_b, ticket=out, epochs=1))
        os.remove(out)
    capsys.readouterr()
