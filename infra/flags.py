"""Settings declared once: a dataclass field carries its command-line flag (spelling, default, help, converter,
help group, and whether it can change a run's result); the parser and the parsed settings are generated from
the fields, as open_lth generates its flags from its hparams.

    prune_epoch: int = flag("--prune_epoch", 30, "epochs per level", group="training")
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import MISSING, dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from infra.errors import ConfigError

KEY = "flag"  # the dataclass field metadata key that holds a field's `Spec`
REQUIRED = MISSING  # the default of a field with no default: its flag is required
_PLAIN = object()  # a Flag's default when it is no part of a built field


@dataclass(frozen=True)
class Flag:
    """One argparse argument. `type` converts the command-line text (an error names the flag); `default` is
    given only for the parts of a built field (the parts' values when not passed). `help` may be a function,
    called each time a parser is made (help that lists a registry), and `choices` a live view (a dict's keys)."""
    names: tuple[str, ...]
    help: str | Callable[[], str] = ""
    type: Callable[[str], Any] | None = None
    choices: Sequence | None = None
    action: Any = None           # None: "store", or for a bool field store_true / --x/--no-x (default True/None)
    metavar: str | None = None
    dest: str | None = None      # None: the field's name
    default: Any = _PLAIN
    required: bool = False


@dataclass(frozen=True)
class Spec:
    """How a field is set from the command line: its flags (an alias spelling, or the parts that `build`
    combines into the value), its help group, and whether it can change what the run computes."""
    flags: tuple[Flag, ...]
    group: str
    result: bool = True          # False: may differ between runs of one experiment (progress display, workers...)
    build: Callable[[Mapping[str, Any]], Any] | None = None  # the parsed values -> the field's value
    show: str | None = None      # the default as the flag would be written, where str(default) reads badly


def flag(names: str, default: Any, help: str, *, group: str, result: bool = True, show: str | None = None,
         also: Iterable[Flag] = (), **argparse_options) -> Any:
    """A dataclass field set by one flag (`names`: its spellings, space-separated), plus aliases in `also`."""
    main = Flag(tuple(names.split()), help, **argparse_options)
    return _field(default, Spec((main, *also), group, result, show=show))


def built(parts: Iterable[Flag], build: Callable[[Mapping[str, Any]], Any], default: Any, *, group: str,
          result: bool = True) -> Any:
    """A dataclass field whose value `build` makes from several flags (`parts`, each with its own dest and
    default), e.g. an attack from --attack, --train_eps, --train_step and --train_gamma."""
    return _field(default, Spec(tuple(parts), group, result, build=build))


def _field(default: Any, spec: Spec) -> Any:
    return dataclasses.field(default=default, metadata={KEY: spec})


def spec(f: dataclasses.Field) -> Spec | None:
    return f.metadata.get(KEY)


def add_flags(parser: argparse.ArgumentParser, cls: type, *, skip: Iterable[str] = ()) -> None:
    """Add every field's flags of the dataclass `cls` (less the fields in `skip`), in argument groups named by
    the fields' groups: the class's own fields first, then inherited ones."""
    groups = {g.title: g for g in parser._action_groups}
    own = set(vars(cls).get("__annotations__", {}))
    ordered = sorted(dataclasses.fields(cls), key=lambda f: f.name not in own)
    for f in ordered:
        s = spec(f)
        if s is None or f.name in skip:
            continue
        group = groups.get(s.group) or groups.setdefault(s.group, parser.add_argument_group(s.group))
        for part in s.flags:
            group.add_argument(*part.names, **_argparse_options(f, s, part))


def _argparse_options(f: dataclasses.Field, s: Spec, part: Flag) -> dict:
    positional = not part.names[0].startswith("-")
    out: dict[str, Any] = {"help": _help(f, s, part).replace("%", "%%")}
    # a required field with two spellings (DIR or --data DIR) needs either one: from_args checks that
    alone = (f.default is MISSING and f.default_factory is MISSING) and len(s.flags) == 1
    if positional and not alone and s.build is None:
        out.update(nargs="?", default=argparse.SUPPRESS)
    if not positional:
        out["dest"] = part.dest or f.name
        # a plain flag not given leaves the field's default (declared once, in the dataclass)
        out["default"] = part.default if part.default is not _PLAIN else argparse.SUPPRESS
        out["required"] = part.required or alone
    action = part.action
    switch = isinstance(f.default, bool) or f.type in ("bool | None", bool | None)  # on/off, or None: automatic
    if action is None and part.type is None and s.build is None and switch:
        action = "store_true" if f.default is False else argparse.BooleanOptionalAction
    if action is not None:
        out["action"] = action
    for key in ("type", "choices", "metavar"):
        if getattr(part, key) is not None:
            out[key] = getattr(part, key)
    return out


def _help(f: dataclasses.Field, s: Spec, part: Flag) -> str:
    text = part.help() if callable(part.help) else part.help
    if part is not s.flags[0] or s.build is not None:
        return text
    default = s.show if s.show is not None else f.default
    if default is MISSING or default is None or default is False or default in ("", ()):
        return text
    if default is True:
        default = "on"
    return f"{text} (default: {default})" if text else f"default: {default}"


def from_args(cls: type, args: argparse.Namespace) -> Any:
    """The `cls` the parsed flags describe: given flags set their fields, built fields are built from their
    parts (when the parser has them), the rest keep the dataclass defaults; `cls` validates itself."""
    given = vars(args)
    values = {**{f.name: f.default for f in dataclasses.fields(cls) if f.default is not MISSING}, **given}
    kwargs = {}
    for f in dataclasses.fields(cls):
        s = spec(f)
        if s is None:
            continue
        if s.build is not None:
            if all((p.dest or f.name) in given for p in s.flags):
                kwargs[f.name] = s.build(values)
        elif f.name in given:
            kwargs[f.name] = given[f.name]
        elif f.default is MISSING and f.default_factory is MISSING:  # every spelling optional, none given
            names = [" ".join(filter(None, (p.names[0], p.metavar))) if p.names[0].startswith("-")
                     else p.metavar or p.names[0] for p in s.flags]  # DIR or --data DIR
            raise ConfigError(f"{' or '.join(names)} is required")
    return cls(**kwargs)


def result_free(cls: type) -> set[str]:
    """The fields of `cls` that cannot change what a run computes, so may differ when it continues."""
    return {f.name for f in dataclasses.fields(cls) if spec(f) is not None and not spec(f).result}


# ---------------------------------------------------------------------------- recipes
@dataclass(frozen=True)
class Recipe:
    """A named set of flag values (the paper's settings for a stage), declared as data so that tools without torch
    read it too. `--recipe NAME` puts them before the command's own flags: an explicit flag overrides them
    (argparse keeps the last value), and the run's config.json holds the resolved settings."""
    name: str
    about: str
    flags: tuple[tuple[str, str | None], ...]  # (flag, value as typed on a command line); None: a switch

    def argv(self) -> list[str]:
        return [t for f, v in self.flags for t in ((f,) if v is None else (f, v))]

    def text(self) -> str:
        return " ".join(self.argv())


def recipe_help(recipes: Mapping[str, Recipe]) -> str:
    return ("the flags of a named recipe, before the command's own (which override them): " +
            "; ".join(f"{r.name}: {r.about} = {r.text()}" for r in recipes.values()))


def with_recipe(argv: Sequence[str], recipes: Mapping[str, Recipe]) -> list[str]:
    """`argv` with the flags of its `--recipe NAME` (or `--recipe=NAME`) in front; unchanged without one. A
    recipe that is not in `recipes`, or two different ones, is a ValueError naming them."""
    names = [b for a, b in zip(argv, argv[1:]) if a == "--recipe"]
    names += [a.split("=", 1)[1] for a in argv if a.startswith("--recipe=")]
    if not names:
        return list(argv)
    unknown = [n for n in names if n not in recipes]
    if unknown:
        raise ValueError(f"--recipe {unknown[0]!r}: not a recipe of this command (its recipes: "
                         f"{', '.join(recipes) or 'none'})")
    if len(set(names)) > 1:
        raise ValueError(f"--recipe given twice ({', '.join(names)}): pass one")
    return [*recipes[names[0]].argv(), *argv]
