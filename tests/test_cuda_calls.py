"""The CUDA tests only run on a GPU, so a signature change would break them unseen: on CPU, every call they make to
a project function or class (also in code strings they run in subprocesses) is bound to its real signature, and
every project module they import must import."""
from __future__ import annotations

import ast
import importlib
import inspect
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_TESTS = os.path.join(ROOT, "tests", "test_cuda.py")
SPAWNERS = ("torch.multiprocessing.spawn", "mp.spawn")  # fn(i, *args): the args tuple is bound with the index


def _project(obj) -> bool:
    """Defined in this repository (tests/ included), not in an installed package."""
    module = obj if inspect.ismodule(obj) else inspect.getmodule(obj)
    path = os.path.realpath(getattr(module, "__file__", None) or "/")
    return path.startswith(os.path.realpath(ROOT) + os.sep) and "site-packages" not in path


def _namespace(tree: ast.AST) -> tuple[dict, list[str]]:
    """The names the imports anywhere in `tree` bind (function-level ones too), and the imports that fail."""
    names, bad = {}, []
    for node in ast.walk(tree):
        try:
            if isinstance(node, ast.Import):
                for a in node.names:
                    module = importlib.import_module(a.name)
                    names[a.asname or a.name.split(".")[0]] = module if a.asname else \
                        importlib.import_module(a.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                module = importlib.import_module(node.module)
                for a in node.names:
                    names[a.asname or a.name] = getattr(module, a.name, None) or \
                        importlib.import_module(f"{node.module}.{a.name}")
        except ImportError as e:
            bad.append(f"line {node.lineno}: {ast.unparse(node)}: {e}")
    return names, bad


def _resolve(expr: ast.AST, names: dict):
    """(object, None) for a name or dotted attribute rooted in an imported project name; (None, why) when an
    attribute is missing from a project module or class; (None, None) when the expression is not ours."""
    chain = []
    while isinstance(expr, ast.Attribute):
        chain.insert(0, expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name) or expr.id not in names:
        return None, None
    obj = names[expr.id]
    for attr in chain:
        if not (inspect.ismodule(obj) or inspect.isclass(obj)) or not _project(obj):
            return None, None
        if not hasattr(obj, attr):
            return None, f"{getattr(obj, '__name__', obj)} has no attribute {attr!r}"
        obj = getattr(obj, attr)
    return (obj, None) if callable(obj) and not inspect.ismodule(obj) and _project(obj) else (None, None)


def _bind(obj, call: ast.Call, positional: int) -> str | None:
    """Why `obj` cannot take this call's arguments (`positional` of them, plus its keywords), else None."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        return None  # *args / **kwargs at the call site: the counts are unknown
    try:
        sig.bind(*[object()] * positional, **{k.arg: object() for k in call.keywords})
    except TypeError as e:
        return f"{getattr(obj, '__qualname__', obj)}{sig}: {e}"
    return None


def _check_call(call: ast.Call, names: dict) -> str | None:
    obj, why = _resolve(call.func, names)
    if why:
        return why
    if obj is not None:
        return _bind(obj, call, len(call.args))
    if ast.unparse(call.func) in SPAWNERS and call.args:
        fn, why = _resolve(call.args[0], names)
        spawned = next((k.value for k in call.keywords if k.arg == "args"), None)
        if why or (fn is not None and isinstance(spawned, ast.Tuple)):
            return why or _bind(fn, ast.Call(func=call.args[0], args=spawned.elts, keywords=[]),
                                1 + len(spawned.elts))
    return None


def _code_strings(tree: ast.AST) -> list[tuple[int, ast.AST]]:
    """String constants that parse as Python holding an import: the code given to `python -c`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "import" in node.value:
            try:
                code = ast.parse(node.value)
            except SyntaxError:
                continue
            if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(code)):
                found.append((node.lineno, code))
    return found


def problems(source: str, where: str) -> list[str]:
    """Every call of `source` (and of its code strings) that its project callee's signature refuses, and every
    import that fails, one line each."""
    tree = ast.parse(source)
    out = []
    for label, t in [(where, tree)] + [(f"{where}, code string at line {n}", c) for n, c in _code_strings(tree)]:
        names, bad = _namespace(t)
        out += [f"{label}: {b}" for b in bad]
        for call in (n for n in ast.walk(t) if isinstance(n, ast.Call)):
            why = _check_call(call, names)
            if why:
                out.append(f"{label} line {call.lineno}: {ast.unparse(call)[:120]}: {why}")
    return out


# ---------------------------------------------------------------------------- the check and its self-test
def test_every_project_call_of_the_cuda_tests_binds():
    with open(CUDA_TESTS) as f:
        assert problems(f.read(), "tests/test_cuda.py") == []


BAD = '''
import subprocess, sys
import torch
from infra import distributed, reproducibility
from training import optimizer

def test_x():
    reproducibility.seed_all(0, deterministic=True)
    optimizer.make_sgd(None)
    distributed.no_such_function()
    torch.multiprocessing.spawn(distributed._spawned, nprocs=1, args=(None, None, 1))
    code = "import torch, reproducibility; reproducibility.seed_all(0)"
    code2 = "from infra import reproducibility\\nreproducibility.kernel_mode(True)"
    subprocess.run([sys.executable, "-c", code])
'''

GOOD = '''
import torch
from infra import distributed, reproducibility
from training import optimizer
from infra.reproducibility import seed_all

def test_x():
    seed_all(0)
    reproducibility.kernel_mode(deterministic=True)
    optimizer.make_sgd(None, None, path="x")
    torch.multiprocessing.spawn(distributed._spawned, nprocs=1, args=(None, None, 1, 1, 0, None))
    torch.rand(3, out=None)
    code = "from infra import reproducibility\\nreproducibility.seed_all(1)"
'''


def test_the_check_catches_bad_calls_moved_modules_and_code_strings():
    found = problems(BAD, "bad.py")
    assert len(found) == 6, "\n".join(found)
    assert "line 8: reproducibility.seed_all(0, deterministic=True): seed_all(seed: 'int') -> 'None': got an " \
           "unexpected keyword argument 'deterministic'" in found[0]
    assert "make_sgd" in found[1] and "missing a required argument: 's'" in found[1]
    assert "has no attribute 'no_such_function'" in found[2]
    assert "_spawned" in found[3] and "missing a required argument" in found[3]
    assert "code string at line 12: line 1: import torch, reproducibility: No module named 'reproducibility'" \
        in found[4]
    assert "code string at line 13 line 2: reproducibility.kernel_mode(True)" in found[5] and \
        "too many positional arguments" in found[5]
    assert problems(GOOD, "good.py") == []
