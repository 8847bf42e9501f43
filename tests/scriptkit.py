"""A throwaway repository copy with what the shell scripts read (script/ and the requirements files), for tests of
script/env.sh and script/stack.sh that change it or its environment without touching the checkout."""
from __future__ import annotations

import os
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def copy_scripts(tmp_path) -> object:
    """tmp_path/repo holding script/ and requirements*.txt; returns that folder (a pathlib.Path)."""
    repo = tmp_path / "repo"
    shutil.copytree(os.path.join(ROOT, "script"), repo / "script")
    for name in ("requirements.txt", "requirements-test.txt"):
        shutil.copy(os.path.join(ROOT, name), repo / name)
    return repo
