"""Recipes as data: one frozen, validated dataclass per scheme, and the registry of names.

A recipe says *what* to build; :func:`quantwise.quantize` decides *how*, through a
handler registered for the recipe's type. Recipes round-trip through JSON and YAML and
reject unknown keys by name.

Example:
    >>> r = recipe_from_dict({"recipe": "static-int8", "calibration": "entropy"})
    >>> recipe_from_dict(json.loads(recipe_to_json(r))) == r
    True
"""

from quantwise.recipes.registry import (
    RECIPES,
    get_recipe,
    recipe_from_dict,
    recipe_from_text,
    recipe_to_json,
    recipe_to_yaml,
)
from quantwise.recipes.schemes import (
    CALIBRATIONS,
    MODULE_TYPES,
    CastRecipe,
    DynamicInt8Recipe,
    FixedPointRecipe,
    Recipe,
    StaticInt8Recipe,
    TFLiteConverterRecipe,
    WeightOnlyRecipe,
)
from quantwise.recipes.task_recipes import MixedRecipe, QATRecipe

__all__ = [
    "CALIBRATIONS",
    "MODULE_TYPES",
    "RECIPES",
    "CastRecipe",
    "DynamicInt8Recipe",
    "FixedPointRecipe",
    "MixedRecipe",
    "QATRecipe",
    "Recipe",
    "StaticInt8Recipe",
    "TFLiteConverterRecipe",
    "WeightOnlyRecipe",
    "get_recipe",
    "recipe_from_dict",
    "recipe_from_text",
    "recipe_to_json",
    "recipe_to_yaml",
]
