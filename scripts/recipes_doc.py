"""Regenerate docs/recipes.md from the recipes' declared keys.

.venv/bin/python scripts/recipes_doc.py > docs/recipes.md   (tests/test_recipes.py checks it is current)
"""

from __future__ import annotations

from quantwise.cli.recipe_flags import recipes_markdown

print(recipes_markdown())
