"""Recipes as data: round trips and the errors users see."""

from __future__ import annotations

import json

import pytest

from quantwise.errors import UserError
from quantwise.recipes import RECIPES, get_recipe, recipe_from_dict, recipe_from_text, recipe_to_json, recipe_to_yaml


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_round_trips_json_and_yaml(name):
    r = get_recipe(name)
    assert recipe_from_dict(json.loads(recipe_to_json(r))) == r
    assert recipe_from_text(recipe_to_yaml(r)) == r


def test_overrides_survive_round_trip():
    r = get_recipe("static-int8", calibration="entropy", per_channel=False, exclude=["classifier.*"])
    back = recipe_from_text(recipe_to_json(r))
    assert back == r and back.calibration == "entropy" and back.exclude == ("classifier.*",)


def test_unknown_key_is_named():
    with pytest.raises(UserError, match="unknown key 'calibraton'"):
        recipe_from_dict({"recipe": "static-int8", "calibraton": "entropy"})


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"recipe": "static-int8", "calibration": "kl"}, "unknown calibration 'kl'"),
        ({"recipe": "weight-int4", "group_size": 48}, "group_size must be"),
        ({"recipe": "weight-int4", "bits": 3}, "bits must be 4 or 8"),
        (
            {"recipe": "static-int8", "activation_bits": 4},
            "activation_bits 4 has no integer kernel in ONNX Runtime .* take 8-bit",
        ),
        ({"recipe": "static-int8", "per_channel": "yes"}, "must be true or false"),
        ({"recipe": "weight-int8", "module_types": ["LSTM"]}, "unknown module type 'LSTM'"),
        ({"recipe": "int3"}, "unknown recipe 'int3'"),
        ({"calibration": "minmax"}, "needs a 'recipe' key"),
    ],
)
def test_bad_values_are_named(bad, match):
    with pytest.raises(UserError, match=match):
        recipe_from_dict(bad)


def test_recipes_are_frozen():
    r = get_recipe("weight-int8")
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        r.bits = 4  # type: ignore[misc]


def test_invalid_yaml_is_a_user_error():
    with pytest.raises(UserError, match="not valid JSON or YAML"):
        recipe_from_text("recipe: [unclosed")


@pytest.mark.parametrize("name", ["fp16", "bf16", "fixed-point"])
def test_recipes_that_cannot_honour_include_exclude_refuse_them(name):
    from quantwise.errors import UserError

    with pytest.raises(UserError, match="include/exclude"):
        get_recipe(name, exclude=("classifier.*",))
