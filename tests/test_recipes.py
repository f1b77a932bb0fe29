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
        ({"recipe": "static-int8", "calibration": "kl"}, "calibration must be one of minmax, .*got 'kl'"),
        ({"recipe": "weight-int4", "group_size": 48}, "group_size must be"),
        ({"recipe": "weight-int4", "bits": 3}, "bits must be one of 4, 8, got 3"),
        (
            {"recipe": "static-int8", "activation_bits": 4},
            "activation_bits must be one of 8, got 4: ONNX Runtime .* take 8-bit",
        ),
        ({"recipe": "static-int8", "per_channel": "yes"}, "must be true or false"),
        ({"recipe": "weight-int8", "module_types": ["LSTM"]}, "module_types must be one of Linear, Conv2d, got 'LSTM'"),
        ({"recipe": "weight-int8", "gptq_damp": 1.5}, r"gptq_damp must be in \[0, 1\), got 1.5"),
        ({"recipe": "static-int8", "percentile": float("nan")}, "percentile must be a finite number"),
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


def test_every_key_is_declared_and_every_flag_sets_its_key():
    """Help, choices and flags are data on the fields: each flag given on the command line sets its key."""
    import dataclasses

    from quantwise.cli import build_parser
    from quantwise.cli.recipe_flags import recipe_flags, recipe_from_args
    from quantwise.recipes.fields import spec

    for cls, _ in RECIPES.values():
        for f in dataclasses.fields(cls):
            assert spec(f).help, (cls.__name__, f.name)
            assert f"    {f.name}: " in (cls.__doc__ or ""), "docstring Attributes generated from the declaration"
    parser = build_parser()
    tried = 0
    for rf in recipe_flags():
        for cls in rf.classes:
            name = next(n for n, (c, _) in RECIPES.items() if c is cls)
            value = (
                rf.choices[-1] if rf.choices else {int: "3", float: "0.5", str: "x", tuple: "x"}.get(type(rf.default))
            )
            argv = ["quantize", "--recipe", name, rf.flag] + ([] if isinstance(rf.default, bool) else [str(value)])
            if name in ("qat-w8a8", "qat-w4a8") and rf.key == "group_size":
                continue  # group_size needs weight-only QAT (a cross-key rule)
            try:
                recipe = recipe_from_args(parser.parse_args(argv))
            except UserError as e:  # a cross-key rule (e.g. fixed-point's accumulator 16 with 16-bit values)
                assert rf.key in str(e) or "recipe" in str(e), e
                continue
            got = getattr(recipe, rf.key)
            if isinstance(rf.default, bool):
                want = not rf.negate
            elif isinstance(rf.default, tuple):
                want = (value,)
            else:
                want = type(rf.default)(value)
            assert got == want, (argv, got, want)
            tried += 1
    assert tried > 40


def test_a_flag_for_another_recipe_is_refused_naming_its_recipes():
    from quantwise.cli import build_parser
    from quantwise.cli.recipe_flags import recipe_from_args

    args = build_parser().parse_args(["quantize", "--recipe", "fp16", "--calibration", "entropy"])
    with pytest.raises(UserError, match="--calibration does not apply to recipe fp16 .*static-int8"):
        recipe_from_args(args)


def test_docs_recipes_md_is_current():
    from pathlib import Path

    from quantwise.cli.recipe_flags import recipes_markdown

    doc = Path(__file__).parents[1] / "docs" / "recipes.md"
    assert doc.read_text(encoding="utf-8").strip() == recipes_markdown().strip(), (
        "regenerate: .venv/bin/python scripts/recipes_doc.py > docs/recipes.md"
    )
