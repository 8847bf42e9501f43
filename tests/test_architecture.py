"""The architecture's rules, read from the source: which module may import which, no import cycles, and that
only infra/checkpoint.py unpickles. Every module of the project is scanned: the top level and every package."""
from __future__ import annotations

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the stages' recipes: plain data (no torch) that the campaign's estimate reads too
RECIPES = {"lottery", "lottery.recipes", "transfer", "transfer.recipes"}  # the packages' __init__: docstrings
# the dataset table and the recipes, torch-free, which the campaign reads (the packages themselves: docstrings)
CAMPAIGN_READS = {"datafiles", "datafiles.facts"} | RECIPES
# entry points: the bash scripts and users call them; nothing imports them
ENTRY_POINTS = {"main_imp_adv", "main_imp_std", "main_train_downstream", "report", "tickets", "sweep"}
# the double-win report: it reads results.json files, never a model or a checkpoint
REPORT = {"report", "reporting.runs", "reporting.analysis", "reporting.tables", "reporting.plots",
          "reporting.output", "reporting.costs", "reporting.verdict", "reporting.overlap"}


def project_modules() -> dict[str, str]:
    """Dotted module name -> file, for the top-level modules and every package (a folder with __init__.py)."""
    found = {n[:-3]: os.path.join(ROOT, n) for n in os.listdir(ROOT) if n.endswith(".py")}
    for top in sorted(os.listdir(ROOT)):
        if not os.path.isfile(os.path.join(ROOT, top, "__init__.py")):
            continue
        for folder, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = [d for d in dirs if os.path.isfile(os.path.join(folder, d, "__init__.py"))]
            rel = os.path.relpath(folder, ROOT).replace(os.sep, ".")
            for n in files:
                if n.endswith(".py"):
                    found[rel if n == "__init__.py" else f"{rel}.{n[:-3]}"] = os.path.join(folder, n)
    return found


MODULES = project_modules()


def imports_of(name: str) -> set[str]:
    """The project modules `name` imports, at module level or inside functions."""
    tree = ast.parse(open(MODULES[name]).read(), MODULES[name])
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            parts = t.split(".")
            out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in MODULES}
    # a module's own packages (models.resnet -> models) are not imports of it: Python runs them first anyway
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return out - {name} - own


GRAPH = {name: imports_of(name) for name in MODULES}


def reach(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for m in GRAPH[todo.pop()] - seen:
            seen.add(m)
            todo.append(m)
    return seen


def _family(prefix: str, reached: set[str]) -> set[str]:
    return {m for m in reached if m == prefix or m.startswith(prefix + ".")}


def test_the_scan_sees_every_package():
    for expected in ("training.engine", "models.resnet", "lottery.levels", "transfer.run", "reporting.tables",
                     "benchmarks.bench", "demo.run", "training.runner", "training.optimizer", "infra.errors",
                     "datafiles.formats"):
        assert expected in MODULES, expected


@pytest.mark.parametrize("module, forbidden", [
    ("dataset", ("models", "training", "pruning_utils", "attacks")),          # data knows no model
    ("datafiles", ("models", "training", "pruning_utils", "attacks")),
    ("transfer.pipeline", ("models", "training", "pruning_utils", "attacks")),
    ("models", ("training", "dataset", "datafiles", "pruning_utils", "attacks")),  # models know no loop, data, masks
    ("attacks", ("dataset", "datafiles", "pruning_utils", "transfer.pipeline")),   # attacks know no data or masks
    ("pruning_utils", ("training", "dataset", "attacks")),                   # masks know no loop
    ("infra", ("models", "training", "dataset", "datafiles", "pruning_utils", "attacks", "lottery", "transfer")),
    # the campaign runs no training: of the model side it reaches only models.flops (its estimate's FLOP counts)
    # and the dataset table and the stages' recipes (CAMPAIGN_READS)
    ("campaign", ("training", "dataset", "datafiles", "pruning_utils", "attacks", "lottery", "transfer", "report",
                  "reporting")),
    ("datafiles.facts", ("models", "training", "dataset", "datafiles", "pruning_utils", "attacks", "lottery",
                         "transfer")),  # the dataset table: names and numbers, read without torch
])
def test_layer_rules(module, forbidden):
    targets = [m for m in MODULES if m == module or m.startswith(module + ".")]
    for m in targets:
        allowed = CAMPAIGN_READS if module == "campaign" else set()
        bad = sorted(set().union(*(_family(f, reach(m)) for f in forbidden)) - allowed)
        assert not bad, f"{m} imports {bad} (directly or through other modules)"


def test_the_recipes_are_plain_data():
    """What the campaign may read of the stages reaches nothing but the flag types."""
    for m in sorted(RECIPES):
        assert reach(m) <= {"infra", "infra.flags", "infra.errors"}, f"{m} reaches {sorted(reach(m))}"
    assert GRAPH["infra.flags"] <= {"infra.errors"} and GRAPH["infra.errors"] == set()


RESEARCH = ("models", "pruning_utils", "attacks", "dataset", "datafiles", "training", "lottery", "transfer",
            "reporting")
OPERATIONS = ("campaign", "benchmarks", "demo", "infra.lease", "infra.leaseholder")  # infra.watchdog: the
#  loops report progress to it (one call per epoch and test), as they log


def test_the_research_core_reads_alone():
    """Operations (the campaign, benchmarks and GPU check, the demo, the lease) share the top level with the
    research code but not its imports: no research module reaches one, so the research core reads, and could be
    lifted out, alone (the lease reaches a run only through training.savedir's RunFolder and the runner)."""
    allowed = {"training.savedir", "training.runner"}  # where a run takes its lease
    for m in (m for m in MODULES if m.split(".")[0] in RESEARCH or m in RESEARCH):
        if m in allowed:
            continue
        bad = {r for r in GRAPH[m] if any(r == o or r.startswith(o + ".") for o in OPERATIONS)}
        assert not bad, f"{m} imports {sorted(bad)}"


def test_nothing_imports_an_entry_point():
    bad = {m: sorted(GRAPH[m] & ENTRY_POINTS) for m in MODULES if GRAPH[m] & ENTRY_POINTS}
    assert not bad, bad


def test_the_report_reads_files_not_models():
    model_side = ("models", "training", "pruning_utils", "attacks", "dataset", "lottery", "transfer")
    for m in sorted(REPORT & set(MODULES)):
        bad = sorted(set().union(*(_family(f, reach(m)) for f in model_side)))
        assert not bad, f"{m} reaches {bad}"
    loaders = re.compile(r"load_file|load_own|torch\.load|import pickle|pickle\.|read_weights|load_ticket")
    for m in sorted(REPORT & set(MODULES)):
        assert not loaders.search(open(MODULES[m]).read()), m


def test_the_top_level_holds_at_most_12_modules():
    """Entry points, user commands and the research modules (attacks, dataset, pruning_utils); the rest lives in
    packages."""
    top = sorted(m for m in MODULES if "." not in m and not os.path.isdir(os.path.join(ROOT, m)))
    assert len(top) <= 12, top


def test_no_import_cycles():
    cycles = sorted(m for m in MODULES if m in reach(m))
    assert not cycles, f"modules in an import cycle: {cycles}"


def test_only_checkpoint_py_calls_torch_load_or_unpickles():
    unsafe = re.compile(r"torch\.load\(|pickle\.loads?\(|weights_only=False")
    found = [f"{name}: {m.group(0)}" for name in sorted(MODULES) if name != "infra.checkpoint"
             for m in unsafe.finditer(open(MODULES[name]).read())]
    assert found == []


def test_the_rules_catch_a_violation(tmp_path, monkeypatch):
    """The scanner itself: a module that imports models from dataset's side is seen."""
    fake = tmp_path / "fake_data.py"
    fake.write_text("import os\nfrom models import resnet\n")
    monkeypatch.setitem(MODULES, "fake_data", str(fake))
    assert imports_of("fake_data") == {"models", "models.resnet"}


# ---------------------------------------------------------------------------- function size
MAX_LINES, MAX_PARAMS = 60, 8  # every function of every module, with no exceptions


def oversized(tree: ast.AST, module: str) -> dict[str, str]:
    """`module.[Class.]function` -> what is too big, for every function (nested ones too) with more than
    MAX_LINES lines or MAX_PARAMS parameters (self and cls not counted; *args and **kwargs count one each)."""
    found: dict[str, str] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = child.args
                names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                bound = names[:1] in (["self"], ["cls"])
                params = len(names) + (a.vararg is not None) + (a.kwarg is not None) - bound
                lines = child.end_lineno - child.lineno + 1
                if lines > MAX_LINES or params > MAX_PARAMS:
                    found[f"{prefix}.{child.name}"] = f"{lines} lines, {params} parameters"
                visit(child, f"{prefix}.{child.name}")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}.{child.name}")
            else:
                visit(child, prefix)
    visit(tree, module)
    return found


def test_library_functions_are_short_and_take_few_parameters():
    """At most MAX_LINES lines and MAX_PARAMS parameters per function of every module (tests are not modules)."""
    found: dict[str, str] = {}
    for name, path in sorted(MODULES.items()):
        found.update(oversized(ast.parse(open(path).read(), path), name))
    assert found == {}


def test_the_size_check_sees_long_functions_and_long_parameter_lists():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    source = (f"def long():\n{body}\n"
              "def short(a, b):\n    return a\n"
              "class C:\n    def method(self, a, b, c, d, e, f, g, h):\n        return a\n"
              "    def wide(self, a, b, c, d, e, f, g, *rest, **named):\n        def inner(): pass\n")
    assert oversized(ast.parse(source), "m") == {"m.long": f"{MAX_LINES + 1} lines, 0 parameters",
                                                 "m.C.wide": "2 lines, 9 parameters"}


def test_no_test_module_imports_another():
    """Shared helpers live in conftest.py or helper modules (recipes, readers, ...), never in a test_*.py file,
    whose import would also collect its tests twice."""
    tests = os.path.join(ROOT, "tests")
    bad = []
    for name in sorted(n for n in os.listdir(tests) if n.startswith("test_") and n.endswith(".py")):
        tree = ast.parse(open(os.path.join(tests, name)).read())
        for node in ast.walk(tree):
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{name} imports {t}" for t in targets if t.split(".")[-1].startswith("test_")]
    assert bad == []
