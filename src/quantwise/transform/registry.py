"""The explicit registry from recipe type to the handler that builds its QuantizedModel."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import nn

from quantwise.quantized import QuantizedModel
from quantwise.recipes import Recipe

Batch = tuple[torch.Tensor, ...]
Handler = Callable[[nn.Module, Recipe, Sequence[Batch]], QuantizedModel]
H = TypeVar("H", bound=Handler)

HANDLERS: dict[type[Recipe], Handler] = {}


def register_handler(recipe_type: type[Recipe]) -> Callable[[H], H]:
    """Decorator: ``@register_handler(StaticInt8Recipe)`` on ``def handler(model, recipe, calib)``."""

    def deco(fn: H) -> H:
        HANDLERS[recipe_type] = fn
        return fn

    return deco


def needs_calibration(recipe: Recipe) -> bool:
    """Whether a recipe reads calibration data."""
    from quantwise.recipes import FixedPointRecipe, StaticInt8Recipe, WeightOnlyRecipe

    return isinstance(recipe, (StaticInt8Recipe, FixedPointRecipe)) or (isinstance(recipe, WeightOnlyRecipe) and recipe.method == "gptq")
