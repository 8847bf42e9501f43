"""The docs name only what exists: every repository path, project module, `module.name` and command that
README.md, BENCHMARKS.md and docs/*.md mention is checked against the tree (read with `ast`, nothing imported),
and no link leaves the repository; the signatures docs/*.md write are compared with the imported objects'."""
from __future__ import annotations

import ast
import functools
import glob
import importlib
import inspect
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", "BENCHMARKS.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]
FILE_EXT = re.compile(r"\.(py|sh|md|toml|txt|cfg|ini|yml|yaml)$")
OUTPUT_EXT = re.compile(r"\.(json|jsonl|csv|png|pdf|svg|tar|pth|log|out|err|mat|npz)$")  # what runs write
DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
# words that stand for a place the user picks or a run writes, not a file of the repository
PLACEHOLDER = re.compile(r"[<>{}*$~]|\.\.\.|^[A-Z][A-Z0-9_]*(/|$)|^(/|https?:|demo_out/|runs/|data/|\.venv|\.stacks/)")
COMMAND = re.compile(r"^(?:\S+/)?(?:python3?(?:\.\d+)?|bash|sh)\s")


# ---------------------------------------------------------------------------- what the tree holds
@functools.lru_cache(maxsize=None)
def module_file(dotted: str) -> str | None:
    """The file of a project module or package, e.g. `training.engine` -> training/engine.py."""
    base = os.path.join(ROOT, *dotted.split("."))
    if os.path.isfile(base + ".py"):
        return base + ".py"
    if os.path.isfile(os.path.join(base, "__init__.py")):
        return os.path.join(base, "__init__.py")
    return None


@functools.lru_cache(maxsize=None)
def definitions(path: str) -> dict[str, ast.AST | None]:
    """Names a module defines at its top level (functions, classes, assignments, imports) -> node (classes, to
    look inside them) or None."""
    tree = ast.parse(open(path).read(), path)
    names: dict[str, ast.AST | None] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node if isinstance(node, ast.ClassDef) else None
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        names[n.id] = None
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                names[(a.asname or a.name).split(".")[0]] = None
    return names


def _class_has(node: ast.ClassDef, name: str) -> bool:
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and item.name == name:
            return True
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.target.id == name:
            return True
        if isinstance(item, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in item.targets):
            return True
    return False


def dotted_problem(word: str) -> str | None:
    """For `a.b.c`: None when a project module a(.b) defines the rest, or when `a` is no project module at all
    (e.g. `torch.load`, `results.json`); otherwise what is missing."""
    parts = word.split(".")
    if module_file(parts[0]) is None:
        return None
    k = max(i for i in range(1, len(parts) + 1) if module_file(".".join(parts[:i])))
    rest, owner = parts[k:], ".".join(parts[:k])
    if not rest:
        return None
    names = definitions(module_file(owner))
    if rest[0] not in names:
        return f"{owner} has no {rest[0]}"
    node = names[rest[0]]
    if len(rest) > 1 and isinstance(node, ast.ClassDef) and not _class_has(node, rest[1]):
        return f"{owner}.{rest[0]} has no {rest[1]}"
    return None


def path_problem(word: str, doc: str, *, link: bool = False) -> str | None:
    """A link is relative to its document; a path in the text is relative to the repository (or the document):
    a bare `engine.py` names a top-level file, so a moved module shows."""
    word = word.rstrip("/")
    here = os.path.dirname(os.path.join(ROOT, doc))
    bases = [here] if link else [ROOT, here]
    targets = [os.path.normpath(os.path.join(b, word)) for b in bases]
    if os.path.relpath(targets[0], ROOT).startswith(".."):
        return f"{word} leaves the repository"
    if any(os.path.exists(t) for t in targets):
        return None
    return f"no file or folder {word}"


# ---------------------------------------------------------------------------- what the docs name
def _clean(word: str) -> str:
    return word.strip("`'\"()[],;:").rstrip(".")


def command_problems(line: str, doc: str) -> list[str]:
    """`python X.py ...`, `python -m pkg.mod ...`, `bash script/x.sh ...`: the program must exist."""
    words = line.split()
    out = []
    for i, w in enumerate(words[1:], 1):
        w = _clean(w)
        if words[i - 1] == "-m":
            if module_file(w) is None:
                out.append(f"`{line}`: no module {w}")
            break
        if w.startswith("-") or "=" in w:
            continue
        if FILE_EXT.search(w) and not PLACEHOLDER.search(w):
            problem = path_problem(w, doc)
            out += [f"`{line}`: {problem}"] if problem else []
        break
    return out


def word_problems(word: str, doc: str) -> list[str]:
    word = _clean(word.split("(")[0])
    if not word or PLACEHOLDER.search(word) or OUTPUT_EXT.search(word):
        return []
    if word.startswith("../"):  # `../data` is a default a flag names; a document there is not ours to cite
        return [f"{word} leaves the repository"] if FILE_EXT.search(word) else []
    if "/" in word or FILE_EXT.search(word):
        looks_like_repo_path = "/" in word and (os.path.exists(os.path.join(ROOT, word.split("/")[0]))
                                                or word.startswith(("docs/", "script/", "tests/")))
        if looks_like_repo_path or (FILE_EXT.search(word) and word.endswith((".py", ".sh"))):
            problem = path_problem(word, doc)
            return [problem] if problem else []
        return []
    if DOTTED.match(word):
        problem = dotted_problem(word)
        return [problem] if problem else []
    return []


def _function(module: str, name: str) -> ast.FunctionDef | ast.ClassDef | None:
    """The definition of `name` in `module`, top level or a method of one of its classes."""
    tree = ast.parse(open(module_file(module)).read())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return node
    return None


def _doc_params(text: str) -> list[str]:
    names = [re.split(r"[:=]", p)[0].strip().lstrip("*") for p in _doc_params_raw(text)]
    return [n for n in names if n and n != "..." and n.isidentifier()]


def _implicit(node: ast.FunctionDef) -> tuple[str, ...]:
    """The parameter a call never passes: self, or cls of a classmethod."""
    classmethod_ = any(isinstance(d, ast.Name) and d.id == "classmethod" for d in node.decorator_list)
    return ("self", "cls") if classmethod_ else ("self",)


def _params_problem(node: ast.FunctionDef, params: str) -> bool:
    """True when a documented parameter list names a parameter the function lacks or leaves out a required one."""
    a = node.args
    real = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in _implicit(node)]
    positional = [p.arg for p in a.posonlyargs + a.args if p.arg not in _implicit(node)]
    required = positional[:len(positional) - len(a.defaults)] + [
        p.arg for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is None]
    named = _doc_params(params)
    wrong = [p for p in named if p not in real and not (a.vararg or a.kwarg)]
    missing = [p for p in required if p not in named] if named else []
    return bool(wrong or missing)


def _real(node: ast.FunctionDef) -> str:
    a = node.args
    return ", ".join(p.arg for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in _implicit(node))


def _check_call(module: str, name: str, params: str, where: str) -> list[str]:
    node = _function(module, name)
    if node is None and name in definitions(module_file(module)):
        return []  # imported there from another module (e.g. models' builders): its own page describes it
    if node is None:
        return [f"{where}: {module} defines no {name}"]
    if isinstance(node, ast.ClassDef) or "..." in params or not params.strip():
        return []
    return [f"{where}: {name}({params}) does not match {name}({_real(node)})"] if _params_problem(node, params) else []


def signature_problems(text: str) -> list[str]:
    """Under a `## path/to/module.py` heading, each `name(params)` must be defined in that module (or one of its
    classes) and name real parameters, the required ones included; anywhere, so must `module.name(params)`."""
    out = []
    for heading, body in re.findall(r"^## (\S+\.py)\b[^\n]*\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M):
        module = heading[:-3].replace("/", ".")
        if module_file(module) is None:
            out.append(f"section {heading}: no such module")
            continue
        # qualified names (`attacks.build_attack(...)`) are checked below, wherever they stand
        for name, params in re.findall(r"`([A-Za-z_]\w*)\(([^`]*?)\)(?: -> [^`]*)?`", body):
            out += _check_call(module, name, params, f"section {heading}")
    for dotted, params in re.findall(r"`([A-Za-z_][\w.]*\.[A-Za-z_]\w*)\(([^`]*?)\)(?: -> [^`]*)?`", text):
        parts = dotted.split(".")
        owners = [i for i in range(1, len(parts)) if module_file(".".join(parts[:i]))]
        if owners and dotted_problem(dotted) is None:
            out += _check_call(".".join(parts[:max(owners)]), parts[-1], params, dotted)
    return out


def stale_references(text: str, doc: str) -> list[str]:
    """Every reference in one Markdown text that names something the repository does not have."""
    out: list[str] = signature_problems(text)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "#", "mailto:")):
            continue
        problem = path_problem(target.split("#")[0], doc, link=True) if target.split("#")[0] else None
        out += [f"link {target}: {problem}"] if problem else []
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    for block in fenced:
        for line in block.splitlines():
            line = line.strip()
            if COMMAND.match(line):
                out += command_problems(line.split("#")[0].strip(), doc)
    for span in re.findall(r"`([^`\n]+)`", prose):
        if COMMAND.match(span):
            out += command_problems(span, doc)
        for word in span.split():
            out += word_problems(word, doc)
    return out


# ---------------------------------------------------------------------------- documented signatures, imported
INTERNALS = "docs/INTERNALS.md"
PARAM = re.compile(r"^(\*{0,2})([A-Za-z_]\w*)[^=]*?(?:=(.*))?$")  # `name`, `name: type`, `name=default`, `*args`


def _documented_object(module: str, name: str) -> object | None:
    """`name` in an imported `module`: defined there, or a method of one of the classes it defines."""
    mod = importlib.import_module(module)
    if hasattr(mod, name):
        return getattr(mod, name)
    owners = [c for c in vars(mod).values() if inspect.isclass(c) and c.__module__ == module and name in vars(c)]
    return getattr(owners[0], name) if owners else None


def signature_mismatch(obj: object, params: str) -> str | None:
    """How a documented parameter list differs from `inspect.signature(obj)`, or None. A list without `...`
    names every parameter in order, a `*` (or `*args`) before the keyword-only ones unless written `name=value`
    as in a call; a written default is the real one (compared where it is a literal); `...` stands for parameters
    left out, the order of the rest still checked."""
    real = list(inspect.signature(obj).parameters.values())
    real = real[1:] if real[:1] and real[0].name == "self" else real  # a method looked up on its class
    stars = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    by_name = {stars.get(p.kind, "") + p.name: p for p in real}
    partial, keyword_only, names = False, False, []
    for part in _doc_params_raw(params):
        if part in ("...", "…"):
            partial = True
            continue
        if part == "*":
            keyword_only = True
            continue
        star, name, default = PARAM.match(part).groups() if PARAM.match(part) else ("", part, None)
        p = by_name.get(star + name)
        if p is None:
            return f"no parameter {star + name}"
        kw = p.kind is inspect.Parameter.KEYWORD_ONLY  # `name=value` without a `*` before it: a call, fine
        if not star and not partial and (keyword_only and not kw or not keyword_only and kw and default is None):
            return f"{name} is {'' if kw else 'not '}keyword-only"
        keyword_only = keyword_only or star == "*"
        if default is not None and p.default is inspect.Parameter.empty:
            return f"{name} has no default"
        if default is not None and _literal(default) is not None and _literal(default)[0] != p.default:
            return f"{name}'s default is {p.default!r}"
        names.append(star + name)
    order = [n for n in by_name if n in names]
    if order != names:
        return f"the order is ({', '.join(order)})"
    if not partial and names != list(by_name):
        return f"leaves out {', '.join(n for n in by_name if n not in names)} (write `...` for left-out ones)"
    return None


def _doc_params_raw(text: str) -> list[str]:
    depth, cur, parts = 0, "", []
    for ch in text:
        depth += ch in "([{" and 1 or 0
        depth -= ch in ")]}" and 1 or 0
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p.strip() for p in parts + [cur] if p.strip()]


def _literal(text: str) -> tuple | None:
    """(value,) for a literal default (None, numbers, strings, tuples), else None (`...`: a default not shown)."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return None
    return None if value is Ellipsis else (value,)


def documented_signatures(text: str) -> list[tuple[str, str, str]]:
    """(module, name, params) of every `name(params)` under a `## path/to/module.py` heading and of every
    `module.name(params)`, as signature_problems finds them."""
    out = []
    for heading, body in re.findall(r"^## (\S+\.py)\b[^\n]*\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M):
        module = heading[:-3].replace("/", ".")
        out += [(module, name, params) for name, params in
                re.findall(r"`([A-Za-z_]\w*)\(([^`]*?)\)(?: -> [^`]*)?`", body)]
    for dotted, params in re.findall(r"`([A-Za-z_][\w.]*\.[A-Za-z_]\w*)\(([^`]*?)\)(?: -> [^`]*)?`", text):
        parts = dotted.split(".")
        owners = [i for i in range(1, len(parts)) if module_file(".".join(parts[:i]))]
        if owners:
            out.append((".".join(parts[:max(owners)]), ".".join(parts[max(owners):]), params))
    return out


def signature_mismatches(text: str) -> list[str]:
    out = []
    for module, name, params in documented_signatures(text):
        obj = _documented_object(module, name.split(".")[0])
        for attr in name.split(".")[1:]:
            obj = getattr(obj, attr, None)
        problem = "not defined" if obj is None else signature_mismatch(obj, " ".join(params.split()))
        out += [f"{module}.{name}({' '.join(params.split())}): {problem}"] if problem else []
    return out


# ---------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("doc", DOCS)
def test_the_docs_name_only_what_exists(doc):
    stale = stale_references(open(os.path.join(ROOT, doc)).read(), doc)
    assert not stale, f"{doc}: " + "; ".join(stale)


def test_the_checker_sees_stale_references():
    text = ("Run `python bench_accuracy.py` or `python -m benchmarks.nothing`; see `training/engine.py`,\n"
            "`training.engine.train_one_epoch`, `training.engine.no_such_name`, `infra/gone.py`,\n"
            "`attacks.PGD.no_method` and [notes](../elsewhere/NOTES.md).\n"
            "## training/optimizer.py\n- `make_scaler(amp, state=None)`, `make_sgd(model, settings, ...)`, `no_such()`\n"
            "```bash\nbash script/no_such.sh --flag\npython3 -m demo.run --quick   # fine\n```\n"
            "Files a run writes are not the repository's: `SAVE_DIR/results.json`, `<k>-ticket.pth.tar`.\n")
    stale = stale_references(text, "README.md")
    assert stale == [
        "section training/optimizer.py: make_scaler(amp, state=None) does not match make_scaler(amp, device, state)",
        "section training/optimizer.py: training.optimizer defines no no_such",
        "link ../elsewhere/NOTES.md: ../elsewhere/NOTES.md leaves the repository",
        "`bash script/no_such.sh --flag`: no file or folder script/no_such.sh",
        "`python bench_accuracy.py`: no file or folder bench_accuracy.py",
        "no file or folder bench_accuracy.py",
        "`python -m benchmarks.nothing`: no module benchmarks.nothing",
        "benchmarks has no nothing",
        "training.engine has no no_such_name",
        "no file or folder infra/gone.py",
        "attacks.PGD has no no_method",
    ], stale


@pytest.mark.parametrize("doc", [d for d in DOCS if d.startswith("docs/")])
def test_documented_signatures_are_the_real_ones(doc):
    """docs/INTERNALS.md's contracts (and any docs/ page's) compared with `inspect.signature` of the imported
    object: a parameter added, renamed, reordered, made keyword-only or given another default shows."""
    stale = signature_mismatches(open(os.path.join(ROOT, doc)).read())
    assert not stale, f"{doc}: " + "; ".join(stale)


def test_the_signature_check_sees_a_stale_signature():
    text = ("## training/engine.py\n"
            "- `Step(env=DistEnv(), amp=None, channels_last=False, attack=None, mask=None, show_progress=True)`\n"
            "- `Step(env=DistEnv(), amp=None, ..., flops=None)`, `evaluate(model, loader, ...)`: fine\n"
            "- `evaluate(loader, model, ...)`,\n"
            "`evaluate(model, *, loader, run=Step(), desc=\"eval\", per_image=False)`\n"
            "- `train_one_epoch(model, loader, optimizer, run=Step(), *, scaler=None, epoch=0, desc, stats=None)`\n"
            "Elsewhere: `pruning_utils.save_ticket(path, mask, meta, *, packed=True)`, "
            "`infra.flags.built(parts, build, default, group, result=True)`, `infra.distributed.broadcast_(t, env)`\n"
            "and `models.build(arch, num_classes, *, small_input=False, ...)`,\n"
            "`infra.errors.run_cli(main, argv=None)`.")
    assert signature_mismatches(text) == [
        "training.engine.Step(env=DistEnv(), amp=None, channels_last=False, attack=None, mask=None, "
        "show_progress=True): leaves out flops (write `...` for left-out ones)",
        "training.engine.evaluate(loader, model, ...): the order is (model, loader)",
        "training.engine.evaluate(model, *, loader, run=Step(), desc=\"eval\", per_image=False): loader is not "
        "keyword-only",
        "training.engine.train_one_epoch(model, loader, optimizer, run=Step(), *, scaler=None, epoch=0, desc, "
        "stats=None): no parameter stats",
        "pruning_utils.save_ticket(path, mask, meta, *, packed=True): packed's default is False",
        "infra.flags.built(parts, build, default, group, result=True): group is keyword-only",
        "infra.distributed.broadcast_(t, env): leaves out src (write `...` for left-out ones)",
    ]
