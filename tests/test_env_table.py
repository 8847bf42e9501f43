"""Every environment variable the code, the tests and the scripts read is in docs/REFERENCE.md's table "Environment
variables", and every name in the table is read somewhere: found in the Python source (os.environ / environ / env
lookups, getenv, env_seconds, module constants they name) and the bash scripts (${NAME} and $NAME not set by the
script)."""
from __future__ import annotations

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {".venv", ".stacks", ".git", "runs", "node_modules", "__pycache__"}
OWN = {"BASH_SOURCE", "PATH", "HOME", "LD_PRELOAD"}  # the shell's and the system's own (tests set them), no setting
ENV_NAMES = re.compile(r"^[A-Z][A-Z0-9_]*$")


def python_files() -> list[str]:
    out = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        out += [os.path.join(folder, n) for n in sorted(files) if n.endswith(".py")]
    return out


def script_files() -> list[str]:
    scripts = os.path.join(ROOT, "script")
    out = [os.path.join(folder, n) for folder, _, files in os.walk(scripts) for n in sorted(files) if n.endswith(".sh")]
    return sorted(out) + [os.path.join(ROOT, ".ci", "run")]


def _is_env(node: ast.AST) -> bool:
    """os.environ, environ, or a name `env` (a mapping of the environment, or the one a child gets)."""
    text = ast.unparse(node)
    return text.endswith("environ") or text == "env"


def names_in_python(source: str) -> set[str]:
    tree = ast.parse(source)
    consts: dict[str, str] = {}  # module constants holding a string: what a lookup may name
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                pairs = zip(target.elts, node.value.elts) if isinstance(target, ast.Tuple) and isinstance(
                    node.value, ast.Tuple) else [(target, node.value)]
                consts.update({t.id: v.value for t, v in pairs if isinstance(t, ast.Name)
                               and isinstance(v, ast.Constant) and isinstance(v.value, str)})

    def value(node: ast.AST) -> str | None:
        v = node.value if isinstance(node, ast.Constant) else consts.get(getattr(node, "id", ""))
        return v if isinstance(v, str) and ENV_NAMES.match(v) else None

    found: set[str] = set()
    for node in ast.walk(tree):
        keys: list[ast.AST] = []
        if isinstance(node, ast.Call) and node.args:
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr in ("get", "pop", "setdefault") and _is_env(f.value):
                keys = [node.args[0]]
            elif ast.unparse(f).split(".")[-1] in ("getenv", "env_seconds"):
                keys = [node.args[0]]
        elif isinstance(node, ast.Subscript) and _is_env(node.value):
            keys = [node.slice]
        elif isinstance(node, ast.Compare) and any(_is_env(c) for c in node.comparators):
            keys = [node.left]
        found |= {v for v in map(value, keys) if v}
    return found


def names_in_bash(text: str) -> set[str]:
    """$NAME and ${NAME...} that the script itself never sets (by assignment, read or for)."""
    code = "\n".join(line.split(" #")[0] for line in text.splitlines() if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", code))
    set_here = set(re.findall(r"(?m)(?:^\s*|[;&|(]\s*)(?:export\s+|local\s+)?([A-Z_][A-Z0-9_]*)=", code))
    for names in re.findall(r"\bread\s+(?:-\w+\s+)*([A-Z_][A-Z0-9_ ]*)", code):
        set_here |= set(names.split())
    set_here |= set(re.findall(r"\bfor\s+([A-Z_][A-Z0-9_]*)\s+in\b", code))
    return used - set_here - OWN


def read_by_the_project() -> dict[str, set[str]]:
    """Variable name -> the files (relative to the repository) that read it."""
    out: dict[str, set[str]] = {}
    for path in python_files():
        for name in names_in_python(open(path).read()) - OWN:
            out.setdefault(name, set()).add(os.path.relpath(path, ROOT))
    for path in script_files():
        for name in names_in_bash(open(path).read()):
            out.setdefault(name, set()).add(os.path.relpath(path, ROOT))
    return out


def documented() -> set[str]:
    """The names in the first column of docs/REFERENCE.md's "## Environment variables" table."""
    text = open(os.path.join(ROOT, "docs", "REFERENCE.md")).read()
    section = text.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {n for cell in rows for n in re.findall(r"`([A-Z][A-Z0-9_]*)`", cell)}


def test_every_variable_the_project_reads_is_in_the_table_and_every_row_is_read():
    read = read_by_the_project()
    missing = {name: sorted(files) for name, files in read.items() if name not in documented()}
    assert not missing, f"add these to docs/REFERENCE.md, Environment variables: {missing}"
    assert documented() - set(read) == set(), "rows for variables nothing reads"


def test_the_scan_sees_each_kind_of_lookup():
    source = ('import os\nNAME = "DOUBLEWIN_A"\nB_ENV, C_ENV = "DOUBLEWIN_B", "DOUBLEWIN_C"\n'
              'os.environ.get(NAME)\nos.environ[B_ENV] = "1"\nenv_seconds(C_ENV, 1.0)\n'
              'if "DOUBLEWIN_D" in os.environ: pass\nos.getenv("DOUBLEWIN_E")\nenviron["DOUBLEWIN_F"]\n'
              'env.get("DOUBLEWIN_G")\nother.get("NOT_ENV")\n')
    assert names_in_python(source) == {f"DOUBLEWIN_{c}" for c in "ABCDEFG"}
    bash = ('ROOT=x\nexport MINE=1\nread -r A B <<<"$ROW"\nfor C in 1; do :; done\n'
            'echo "$ROOT $MINE $A $B $C ${THEIRS:-} $OTHER ${BASH_SOURCE[0]}"  # $IN_A_COMMENT\n')
    assert names_in_bash(bash) == {"ROW", "THEIRS", "OTHER"}
