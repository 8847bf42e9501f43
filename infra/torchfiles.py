"""Telling a torch file that holds Python objects from a broken one, without unpickling it: what torch's
weights_only loader refused is believed only if the file's pickles are whole (read as opcodes, never run)."""
from __future__ import annotations

import os
import pickletools
import struct
import traceback
import zipfile

LEGACY_PICKLES = 5  # torch's pre-1.6 format: magic number, protocol, sys info, the object, its storage keys


def refused_an_object(e: BaseException, path: str) -> bool:
    """Whether `e`, raised when torch loads `path` with weights_only=True, means that the file holds an object
    beyond tensors and plain values rather than that it is truncated or corrupt. Torch words both alike at times:
    a file cut inside its pickle ends in a partial GLOBAL name, which is refused; PyTorch 2.4 reports a short read
    of the tensor data as a refusal too. So the refusal must come from torch's restricted unpickler itself, and
    the file's pickles must run whole to their STOP opcode."""
    source = e.__context__ if e.__context__ is not None else e  # torch re-raises the refusal in its own words
    frames = traceback.extract_tb(source.__traceback__) if source.__traceback__ is not None else []
    if frames and "weights_only_unpickler" not in os.path.basename(frames[-1].filename):
        return False
    return pickles_whole(path)


def pickles_whole(path: str) -> bool:
    """A zip-format file: every member matches its CRC and each .pkl member parses to STOP; any other file:
    the legacy format's pickles, one after another, each parse to STOP."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                for name in z.namelist():
                    data = z.read(name)  # raises BadZipFile on a CRC mismatch
                    if name.endswith(".pkl"):
                        _parse(data)
            return True
        with open(path, "rb") as f:
            for _ in range(LEGACY_PICKLES):
                _parse(f)
        return True
    except (OSError, ValueError, EOFError, struct.error, zipfile.BadZipFile, zipfile.LargeZipFile, KeyError,
            IndexError):
        return False


def _parse(data) -> None:
    """Walk one pickle's opcodes to its STOP (pickletools decodes arguments; it calls nothing the file names)."""
    for _ in pickletools.genops(data):
        pass
