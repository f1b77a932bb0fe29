"""Which layers a recipe touches, and why the others stay in float."""

from __future__ import annotations

from fnmatch import fnmatch

import torch
from torch import nn

from quantwise.recipes import Recipe

_TYPES = {"Linear": nn.Linear, "Conv2d": nn.Conv2d}
_NOT_HEAVY = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def own_forward(mod: nn.Module) -> str | None:
    """The class name of a Linear/Conv2d subclass that overrides ``forward``, else None.

    Replacing such a layer with a quantized Linear/Conv2d would drop whatever its own
    ``forward`` adds (padding, scaling ...): it is never swapped silently.
    """
    for base in (nn.Linear, nn.Conv2d):
        if isinstance(mod, base) and type(mod).forward is not base.forward:
            return type(mod).__name__
    return None


def unknown_heavy(mod: nn.Module) -> bool:
    """A leaf layer quantwise has no handler for that holds a weight matrix (2-D or more)."""
    if isinstance(mod, (nn.Linear, nn.Conv2d, nn.Embedding, *_NOT_HEAVY)) or any(True for _ in mod.children()):
        return False
    w = getattr(mod, "weight", None)
    return isinstance(w, torch.Tensor) and w.dim() >= 2


def select_layers(model: nn.Module, recipe: Recipe) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    """Eligible layers for ``recipe``, and ``{name: reason}`` for layers left in float.

    Only ``nn.Linear`` and ``nn.Conv2d`` (grouped and depthwise included) are candidates; every
    other layer holding a weight matrix is reported as skipped with its type, never ignored.
    """
    check_patterns(model, recipe)
    wanted = tuple(_TYPES[t] for t in (recipe.module_types or tuple(_TYPES)))
    chosen: list[tuple[str, nn.Module]] = []
    skipped: dict[str, str] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Embedding):
            if not getattr(recipe, "embeddings", False):
                skipped[name] = "embedding table kept in float (recipe embeddings=false or not an integer scheme)"
            continue
        if unknown_heavy(mod):
            skipped[name] = f"{type(mod).__module__}.{type(mod).__name__} has no quantwise handler: kept in float"
            continue
        if not isinstance(mod, (nn.Linear, nn.Conv2d)):
            continue
        if sub := own_forward(mod):
            skipped[name] = (
                f"{sub} subclasses {'Conv2d' if isinstance(mod, nn.Conv2d) else 'Linear'} with its own forward(); "
                "replacing it would change what it computes: kept in float"
            )
            continue
        if not isinstance(mod, wanted):
            skipped[name] = f"{type(mod).__name__} not in recipe module_types {list(recipe.module_types)}"
        elif reason := _pattern_reason(name, recipe):
            skipped[name] = reason
        elif isinstance(mod, nn.Conv2d) and (mod.padding_mode != "zeros" or isinstance(mod.padding, str)):
            skipped[name] = (
                f"Conv2d with padding_mode={mod.padding_mode!r}, padding={mod.padding!r} is not supported yet: kept in float"
            )
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
                hint = (
                    f"; nearest layer names: {', '.join(near)}"
                    if near
                    else f"; layers look like: {', '.join(names[:3])}"
                )
                raise UserError(f"{flag} pattern {p!r} matches no layer{hint}")


def select_embeddings(model: nn.Module, recipe: Recipe) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    """Embedding tables to store as int8 (recipes with ``embeddings=True``), and the skipped ones."""
    chosen: list[tuple[str, nn.Module]] = []
    skipped: dict[str, str] = {}
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
