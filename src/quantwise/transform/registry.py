"""The explicit table from recipe type to the handler that builds its QuantizedModel.

Adding an algorithm is one module with its handler plus one line in :func:`handlers`; nothing
registers itself by being imported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import nn

from quantwise.quantized import QuantizedModel
from quantwise.recipes import (
    CastRecipe,
    DynamicInt8Recipe,
    FixedPointRecipe,
    Recipe,
    StaticInt8Recipe,
    WeightOnlyRecipe,
)

Batch = tuple[torch.Tensor, ...]
Handler = Callable[[nn.Module, Recipe, Sequence[Batch]], QuantizedModel]


def handlers() -> dict[type[Recipe], Handler]:
    """Every ``(model, recipe, calibration) -> QuantizedModel`` handler, by recipe type."""
    from quantwise.fixedpoint.quantize import fixed_point_handler
    from quantwise.transform.schemes import cast_handler, dynamic_handler, weight_only_handler
    from quantwise.transform.static import static_handler

    table = {
        CastRecipe: cast_handler,
        WeightOnlyRecipe: weight_only_handler,
        DynamicInt8Recipe: dynamic_handler,
        StaticInt8Recipe: static_handler,
        FixedPointRecipe: fixed_point_handler,
    }
    return cast(dict[type[Recipe], Handler], table)  # each handler takes its own recipe type


def needs_calibration(recipe: Recipe) -> bool:
    """Whether a recipe reads calibration data."""
    return isinstance(recipe, (StaticInt8Recipe, FixedPointRecipe)) or (
        isinstance(recipe, WeightOnlyRecipe) and recipe.method == "gptq"
    )
