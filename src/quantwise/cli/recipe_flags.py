"""Recipe flags generated from the recipes' declared keys (``recipes.fields``), and the key listings.

``quantwise recipes``, docs/recipes.md and every ``--flag`` that sets a recipe key come from the same
declarations the recipes validate with, so the help cannot drift from the code.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from quantwise.errors import UserError


@dataclass(frozen=True)
class RecipeFlag:
    """One command-line flag, generated from the recipe keys that share it (see ``recipes.fields``)."""

    flag: str
    key: str
    default: Any  # the type of the value, from the first declaration
    negate: bool
    choices: tuple[Any, ...] | None
    help: str
    implies: tuple[tuple[str, Any], ...]
    cli_positive: bool
    families: tuple[str, ...]
    classes: tuple[type, ...]  # the recipe classes that take this flag

    @property
    def dest(self) -> str:
        return "recipe_" + self.flag.lstrip("-").replace("-", "_")


def recipe_flags() -> list[RecipeFlag]:
    """Every recipe key that has a flag, one entry per flag; help names the recipes each meaning belongs to."""
    import dataclasses

    from quantwise.recipes import RECIPES
    from quantwise.recipes.fields import spec

    by_flag: dict[str, list[tuple[str, dataclasses.Field[Any]]]] = {}
    owners: dict[str, list[tuple[type, str]]] = {}
    seen: set[type] = set()
    for cls, _defaults in RECIPES.values():
        if cls in seen:
            continue
        seen.add(cls)
        for f in dataclasses.fields(cls):
            s = spec(f)
            if s.flag == "":
                continue
            owner = next(c for c in cls.__mro__ if f.name in getattr(c, "__annotations__", {}))
            family = getattr(owner, "family", cls.family)  # type: ignore[attr-defined]
            flag = s.flag or "--" + f.name.replace("_", "-")
            by_flag.setdefault(flag, []).append((family, f))
            owners.setdefault(flag, []).append((cls, family))
    out = []
    for flag, decls in by_flag.items():
        first = spec(decls[0][1])
        keys = {f.name for _, f in decls}
        if len(keys) > 1 or len({type(f.default) for _, f in decls}) > 1 or len({spec(f).negate for _, f in decls}) > 1:
            raise TypeError(f"flag {flag} is declared with different keys or types: {sorted(keys)}")
        helps: dict[str, list[str]] = {}
        for family, f in decls:
            families = helps.setdefault(spec(f).help, [])
            if family not in families:
                families.append(family)
        text = "; ".join((h if fams == ["every recipe"] else f"{', '.join(fams)}: {h}") for h, fams in helps.items())
        choices: list[Any] = []
        for _, f in decls:
            choices += [c for c in (spec(f).choices or ()) if c not in choices]
        out.append(
            RecipeFlag(
                flag=flag,
                key=decls[0][1].name,
                default=decls[0][1].default,
                negate=first.negate,
                choices=tuple(choices) if all(spec(f).choices for _, f in decls) else None,
                help=text.replace("%", "%%"),
                implies=first.implies,
                cli_positive=first.cli_positive,
                families=tuple(dict.fromkeys(fam for fam, _ in decls)),
                classes=tuple(dict.fromkeys(cls for cls, _ in owners[flag])),
            )
        )
    return out


def recipe_args(p: argparse.ArgumentParser) -> None:
    from quantwise.recipes import RECIPES

    p.add_argument("--recipe", help=f"{', '.join(RECIPES)} (see `quantwise recipes`)")
    p.add_argument("--recipe-file", help="a recipe as JSON or YAML (keys as in `quantwise recipes`)")
    for rf in recipe_flags():
        if isinstance(rf.default, bool):
            text = f"sets {rf.key} false ({rf.help})" if rf.negate else rf.help
            p.add_argument(rf.flag, dest=rf.dest, action="store_true", help=text)
        elif isinstance(rf.default, tuple):
            p.add_argument(
                rf.flag, dest=rf.dest, action="append", choices=rf.choices, metavar=_metavar(rf), help=rf.help
            )
        else:
            kind = type(rf.default)
            p.add_argument(rf.flag, dest=rf.dest, type=kind, choices=rf.choices, metavar=_metavar(rf), help=rf.help)


def _metavar(rf: RecipeFlag) -> str:
    return "{" + ",".join(str(c) for c in rf.choices) + "}" if rf.choices else rf.key.upper()


def recipe_from_args(args: argparse.Namespace) -> Any:
    from pathlib import Path

    from quantwise.recipes import RECIPES, get_recipe, recipe_from_text

    given = [(rf, v) for rf in recipe_flags() if (v := getattr(args, rf.dest)) is not None and v is not False]
    if args.recipe_file:
        if given:
            raise UserError(
                f"{given[0][0].flag} and --recipe-file both set recipe keys: put {given[0][0].key} in the recipe file"
            )
        path = Path(args.recipe_file)
        if not path.is_file():
            raise UserError(f"recipe file {path} not found")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"recipe file {path} is not UTF-8 text: save it as UTF-8") from None
        return recipe_from_text(text)
    if not args.recipe:
        raise UserError("quantize needs --recipe NAME or --recipe-file FILE (see `quantwise recipes`)")
    if args.recipe not in RECIPES:
        raise UserError(f"unknown recipe {args.recipe!r}: choose one of {', '.join(RECIPES)}")
    cls = RECIPES[args.recipe][0]
    over: dict[str, Any] = {}
    for rf, v in given:
        if cls not in rf.classes:
            raise UserError(
                f"{rf.flag} does not apply to recipe {args.recipe} (it is a key of {', '.join(rf.families)})"
            )
        if rf.cli_positive and not v > 0:
            raise UserError(f"{rf.flag} must be a positive number, got {v}")
        over[rf.key] = (not rf.negate) if isinstance(rf.default, bool) else tuple(v) if isinstance(v, list) else v
        for k, implied in rf.implies:
            over.setdefault(k, implied)
    return get_recipe(args.recipe, **over)


@dataclass(frozen=True)
class RecipeKey:
    """One key of one named recipe, as ``quantwise recipes`` and docs/recipes.md show it."""

    key: str
    default: Any
    takes: str
    flag: str  # "" when only a recipe file sets it
    help: str


def recipe_keys(name: str) -> list[RecipeKey]:
    """The keys of a registered recipe with their defaults, what they take, their flag and help."""
    import dataclasses

    from quantwise.recipes import RECIPES
    from quantwise.recipes.fields import describe, spec

    cls, defaults = RECIPES[name]
    flags = {rf.key: rf.flag for rf in recipe_flags() if cls in rf.classes}
    out = []
    for f in dataclasses.fields(cls):
        default = defaults.get(f.name, f.default)
        out.append(RecipeKey(f.name, default, describe(f), flags.get(f.name, ""), spec(f).help))
    return out


def recipes_markdown() -> str:
    """docs/recipes.md: every recipe, its keys, what they take, their flags and help (generated)."""
    from quantwise.recipes import RECIPES

    lines = [
        "# Recipes and their keys",
        "",
        "Generated from the recipes' declarations by `scripts/recipes_doc.py` (a test checks it is current);",
        "`quantwise recipes` prints the same. Set a key with its flag, or in a recipe file",
        "(`--recipe-file r.yaml`: `recipe: NAME` plus any of the keys).",
        "",
    ]
    for name, (cls, _defaults) in RECIPES.items():
        doc = " ".join((cls.__doc__ or "").split("\n\nAttributes:")[0].split())
        lines += [
            f"## `{name}`",
            "",
            doc,
            "",
            "| key | default | takes | flag | what it does |",
            "|---|---|---|---|---|",
        ]
        for k in recipe_keys(name):
            flag = f"`{k.flag}`" if k.flag else "recipe file"
            lines.append(f"| `{k.key}` | `{k.default!r}` | {k.takes} | {flag} | {k.help.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)
