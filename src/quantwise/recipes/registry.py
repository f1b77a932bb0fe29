"""The names users type, and recipes from and to dicts, JSON and YAML (unknown keys refused by name)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import yaml

from quantwise.errors import UserError
from quantwise.recipes.schemes import (
    TFLITE_CONVERTER_MODES,
    CastRecipe,
    DynamicInt8Recipe,
    FixedPointRecipe,
    Recipe,
    StaticInt8Recipe,
    TFLiteConverterRecipe,
    WeightOnlyRecipe,
)
from quantwise.recipes.task_recipes import MixedRecipe, QATRecipe

# name users type -> (class, default overrides)
RECIPES: dict[str, tuple[type[Recipe], dict[str, Any]]] = {
    "fp16": (CastRecipe, {"dtype": "fp16"}),
    "bf16": (CastRecipe, {"dtype": "bf16"}),
    "weight-int8": (WeightOnlyRecipe, {"bits": 8}),
    "weight-int4": (WeightOnlyRecipe, {"bits": 4, "group_size": 32}),
    "w8a16": (WeightOnlyRecipe, {"bits": 8, "label": "w8a16"}),
    "w4a16": (WeightOnlyRecipe, {"bits": 4, "group_size": 32, "label": "w4a16"}),
    "dynamic-int8": (DynamicInt8Recipe, {}),
    "static-int8": (StaticInt8Recipe, {}),
    "mixed": (MixedRecipe, {}),
    "fixed-point": (FixedPointRecipe, {}),
    "static-w4a8": (StaticInt8Recipe, {"weight_bits": 4}),
    "qat-w8a8": (QATRecipe, {}),
    "qat-w4a8": (QATRecipe, {"weight_bits": 4}),
    "qat-w4": (QATRecipe, {"weight_bits": 4, "activations": False, "group_size": 32}),
    "qat-w8": (QATRecipe, {"activations": False}),
    "tflite-converter": (TFLiteConverterRecipe, {}),
    **{f"tflite-converter-{m}": (TFLiteConverterRecipe, {"mode": m}) for m in TFLITE_CONVERTER_MODES},
}


def get_recipe(name: str, **overrides: Any) -> Recipe:
    """Build a registered recipe by name, with field overrides.

    Raises:
        UserError: unknown name or key, or an invalid value.
    """
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
    cls, defaults = RECIPES[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in overrides:
        if key not in fields:
            raise UserError(f"recipe {name}: unknown key {key!r}; known keys: {', '.join(fields)}")
    kwargs = {**defaults, **overrides}
    try:
        return cls(**_coerce(cls, kwargs))
    except (TypeError, ValueError) as e:
        raise UserError(f"recipe {name}: {e}") from None


def _coerce(cls: type[Recipe], kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in kwargs:
            continue
        v = kwargs[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, tuple) and isinstance(v, (list, str)):
            v = tuple([v] if isinstance(v, str) else v)
        elif isinstance(default, bool):
            if not isinstance(v, bool):
                raise UserError(f"recipe {cls.kind}: key {f.name!r} must be true or false, got {v!r}")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise UserError(f"recipe {cls.kind}: key {f.name!r} must be a number, got {v!r}")
            if isinstance(default, int) and not float(v).is_integer():
                raise UserError(f"recipe {cls.kind}: key {f.name!r} must be an integer, got {v!r}")
            v = type(default)(v)
        elif isinstance(default, str) and not isinstance(v, str):
            raise UserError(f"recipe {cls.kind}: key {f.name!r} must be a string, got {v!r}")
        out[f.name] = v
    return out


def recipe_from_dict(d: dict[str, Any]) -> Recipe:
    """Inverse of :meth:`Recipe.to_dict`; the ``recipe`` key names the scheme."""
    if not isinstance(d, dict) or "recipe" not in d:
        raise UserError('a recipe file needs a \'recipe\' key naming the scheme, e.g. {"recipe": "static-int8"}')
    d = dict(d)
    return get_recipe(d.pop("recipe"), **d)


def recipe_to_json(r: Recipe) -> str:
    return json.dumps(r.to_dict(), indent=2)


def recipe_to_yaml(r: Recipe) -> str:
    return yaml.safe_dump(r.to_dict(), sort_keys=False)


def recipe_from_text(text: str) -> Recipe:
    """Parse a recipe from JSON or YAML text."""
    try:
        data = yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as e:
        raise UserError(f"recipe file is not valid JSON or YAML: {str(e).splitlines()[0]}") from None
    return recipe_from_dict(data)
