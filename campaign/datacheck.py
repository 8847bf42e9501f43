"""Check a folder dataset before a long run: every image decodes, every split has the same class folders;
lists the bad files (with a progress bar over the images)."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # ImageFolder's
SPLITS = ("train", "val", "test")


@dataclass
class Report:
    images: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)      # (file, why)
    problems: list[str] = field(default_factory=list)             # layout: missing splits, class mismatch


def _images(split_dir: str) -> tuple[list[str], list[str]]:
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    files = []
    for c in classes:
        for folder, dirs, names in os.walk(os.path.join(split_dir, c), followlinks=True):
            dirs.sort()
            files += [os.path.join(folder, n) for n in sorted(names) if n.lower().endswith(IMG_EXTENSIONS)]
    return classes, files


def decode_error(path: str) -> str | None:
    """None when PIL decodes the whole image (as the training loader does), else why not."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.convert("RGB").load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}".rstrip(": ")
    return None


def check_folder(root: str, progress=None) -> Report:
    """ImageFolder layout root/<split>/<class>/<image> for the splits present (train and val or test)."""
    rep = Report()
    splits = [s for s in SPLITS if os.path.isdir(os.path.join(root, s))]
    if "train" not in splits or len(splits) < 2:
        rep.problems.append(f"{root}: expected train/ and val/ and/or test/ (found {', '.join(splits) or 'none'})")
    found = {s: _images(os.path.join(root, s)) for s in splits}
    if "train" in found:
        for s, (classes, files) in found.items():
            odd = sorted(set(classes) ^ set(found["train"][0]))
            if odd:
                rep.problems.append(f"{os.path.join(root, s)}: class folders differ from train/ (e.g. {odd[0]!r})")
    for s, (classes, files) in found.items():
        empty = [c for c in classes if not any(f.startswith(os.path.join(root, s, c) + os.sep) for f in files)]
        rep.problems += [f"{os.path.join(root, s, c)}: no images" for c in empty]
    every = [f for _, files in found.values() for f in files]
    for path in (progress(every, desc="decoding images", total=len(every)) if progress else every):
        why = decode_error(path)
        if why:
            rep.bad.append((path, why))
    rep.images = len(every)
    return rep


def report_text(root: str, rep: Report) -> str:
    lines = [*rep.problems, *(f"{p}: {why}" for p, why in rep.bad)]
    verdict = "OK" if not lines else f"{len(rep.bad)} unreadable images, {len(rep.problems)} layout problems"
    lines.append(f"{root}: {rep.images} images checked: {verdict}")
    if rep.bad:
        lines.append("fix or remove the files listed (a training run stops at the first one it meets)")
    return "\n".join(lines)


def main_check(roots: list[str]) -> int:
    """check-data: 0 when every folder is clean, 1 otherwise (the lists go to stdout)."""
    from infra import runlog
    bad = 0
    for root in roots:
        rep = check_folder(root, progress=runlog.progress)
        print(report_text(root, rep), flush=True)
        bad += bool(rep.bad or rep.problems)
    sys.stdout.flush()
    return 1 if bad else 0
