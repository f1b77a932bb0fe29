"""Which layers a recipe touches, and why the others stay in float."""

from __future__ import annotations

from fnmatch import fnmatch

from torch import nn

from quantwise.recipes import Recipe

_TYPES = {"Linear": nn.Linear, "Conv2d": nn.Conv2d}


def select_layers(model: nn.Module, recipe: Recipe) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    """Eligible layers for ``recipe``, and ``{name: reason}`` for layers left in float.

    Only ``nn.Linear`` and ``nn.Conv2d`` (groups=1, no dilation beyond 1 is required) are
    candidates; other heavy layers are reported as skipped rather than silently ignored.
    """
    check_patterns(model, recipe)
    wanted = tuple(_TYPES[t] for t in (recipe.module_types or tuple(_TYPES)))
    chosen, skipped = [], {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Embedding):
            if not getattr(recipe, "embeddings", False):
                skipped[name] = "embedding table kept in float (recipe embeddings=false or not an integer scheme)"
            continue
        if isinstance(mod, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose2d)):
            skipped[name] = f"{type(mod).__name__} is not supported by quantwise yet"
            continue
        if not isinstance(mod, (nn.Linear, nn.Conv2d)):
            continue
        if not isinstance(mod, wanted):
            skipped[name] = f"{type(mod).__name__} not in recipe module_types {list(recipe.module_types)}"
        elif reason := _pattern_reason(name, recipe):
            skipped[name] = reason
        elif isinstance(mod, nn.Conv2d) and (mod.groups != 1 or mod.padding_mode != "zeros" or isinstance(mod.padding, str)):
            skipped[name] = "Conv2d with groups/padding mode/string padding is not supported yet"
        else:
            chosen.append((name, mod))
    return chosen, skipped


def _pattern_reason(name: str, recipe: Recipe) -> str | None:
    """Why ``recipe``'s include/exclude patterns leave layer ``name`` out, or None."""
    if recipe.include and not any(fnmatch(name, p) for p in recipe.include):
        return "not matched by include patterns"
    if any(fnmatch(name, p) for p in recipe.exclude):
        return "matched an exclude pattern"
    return None


def check_patterns(model: nn.Module, recipe: Recipe) -> None:
    """Every include/exclude pattern must match some module; a typo is named with the nearest names."""
    import difflib

    from quantwise.errors import UserError

    names = [n for n, _ in model.named_modules() if n]
    for flag, patterns in (("--include", recipe.include), ("--exclude", recipe.exclude)):
        for p in patterns:
            if not any(fnmatch(n, p) for n in names):
                near = difflib.get_close_matches(p, names, n=3, cutoff=0.4)
                hint = f"; nearest layer names: {', '.join(near)}" if near else f"; layers look like: {', '.join(names[:3])}"
                raise UserError(f"{flag} pattern {p!r} matches no layer{hint}")


def select_embeddings(model: nn.Module, recipe: Recipe) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    """Embedding tables to store as int8 (recipes with ``embeddings=True``), and the skipped ones."""
    chosen, skipped = [], {}
    if not getattr(recipe, "embeddings", False):
        return chosen, skipped
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Embedding):
            continue
        if reason := _pattern_reason(name, recipe):
            skipped[name] = reason
        elif mod.max_norm is not None or mod.sparse:
            skipped[name] = "Embedding with max_norm or sparse gradients is not supported"
        else:
            chosen.append((name, mod))
    return chosen, skipped
