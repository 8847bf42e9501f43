"""A cut or damaged torch file is "truncated or corrupt" wherever it is cut, in both of torch's formats, on every
supported PyTorch; only a whole file holding an object is sent to --trust-pickle (infra/torchfiles.py)."""
from __future__ import annotations

import collections
import os
import pickle

import pytest
import torch

from infra import checkpoint, torchfiles
from infra.errors import CheckpointError


class Trap:
    """Unpickling it would create a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def _content() -> dict:
    """What our tickets and checkpoints hold: tensors of several dtypes in an OrderedDict, plain values."""
    state = collections.OrderedDict(mask=torch.ones(40, 9, dtype=torch.bool), w=torch.randn(64, 3),
                                    n=torch.arange(5))
    return {"format": "x", "version": 1, "state_dict": state, "epoch": 3, "acc": [0.5, 0.25]}


@pytest.fixture(params=["legacy", "zip"])
def whole(request, tmp_path) -> str:
    path = str(tmp_path / f"whole-{request.param}.pth.tar")
    checkpoint.atomic_save(_content(), path, legacy_format=request.param == "legacy")
    return path


def _cuts(size: int) -> list[int]:
    """Every third byte of the first 1.5 KiB (where the pickles are), then 30 cuts spread over the rest."""
    return sorted(set(range(0, min(size, 1536), 3)) | {size * i // 31 for i in range(1, 31)} | {size - 1})


def test_every_cut_of_a_whole_file_is_truncated_or_corrupt(whole, tmp_path):
    assert checkpoint.load_file(whole)["epoch"] == 3 and torchfiles.pickles_whole(whole)
    data = open(whole, "rb").read()
    cut = str(tmp_path / "cut.pth.tar")
    wrong = []
    for n in _cuts(len(data)):
        with open(cut, "wb") as f:
            f.write(data[:n])
        try:
            checkpoint.load_file(cut)
            wrong.append((n, "loaded"))
        except CheckpointError as e:
            line = str(e)
            if not line.startswith(f"{cut} is truncated or corrupt (") or "\n" in line or "--trust-pickle" in line:
                wrong.append((n, line))
    assert wrong == [], wrong[:5]


def test_a_flipped_byte_in_a_zip_member_is_seen_by_its_crc(tmp_path):
    path = str(tmp_path / "z.pth.tar")
    checkpoint.atomic_save(_content(), path)
    data = bytearray(open(path, "rb").read())
    at = data.index(b"data.pkl") + 100  # inside the pickle member's bytes
    data[at] ^= 0x01
    open(path, "wb").write(bytes(data))
    assert not torchfiles.pickles_whole(path)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_a_whole_file_holding_an_object_is_refused_not_unpickled(legacy, tmp_path):
    path, marker = str(tmp_path / "trap.pth"), str(tmp_path / "UNPICKLED")
    torch.save({"w": torch.ones(2), "x": Trap(marker)}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError) as got:
        checkpoint.load_file(path)
    assert str(got.value) == (f"{path} holds Python objects beyond tensors and plain values, so it was not "
                              "unpickled; if you trust this file, pass --trust-pickle to load it fully")
    assert not os.path.exists(marker)


def test_a_refusal_that_torch_made_of_a_short_read_is_not_believed(whole):
    """PyTorch < 2.5 re-raises a short read of tensor data as a weights_only refusal: the error it wraps was not
    raised by the restricted unpickler, so the file is not said to hold objects even though its pickles are whole."""
    def read_storage():
        raise RuntimeError("unexpected EOF, expected 71125 more bytes. The file might be corrupted.")

    try:
        try:
            read_storage()
        except RuntimeError:
            raise pickle.UnpicklingError("Weights only load failed. ... weights_only ...") from None
    except pickle.UnpicklingError as e:
        wrapped = e
    assert torchfiles.pickles_whole(whole) and not torchfiles.refused_an_object(wrapped, whole)


def test_a_refusal_by_the_restricted_unpickler_is_believed_of_a_whole_file(tmp_path):
    path = str(tmp_path / "trap.pth")
    torch.save({"x": Trap(str(tmp_path / "UNPICKLED"))}, path)
    with pytest.raises(pickle.UnpicklingError) as got:
        torch.load(path, weights_only=True)
    assert torchfiles.refused_an_object(got.value, path)
