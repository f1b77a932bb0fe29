"""Recipe keys as declarations: each field's help, choices, range and command-line flag are data.

A recipe field is declared with :func:`knob`; from that one declaration come the field's check
(:func:`check_field`, run by every recipe on construction), its line in ``quantwise recipes`` and
``docs/recipes.md`` (:func:`describe`), the ``Attributes:`` section of the recipe's docstring
(:func:`declared`) and its command-line flag (``quantwise.cli.args``). Help therefore cannot drift
from the code that validates it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, TypeVar

from quantwise.errors import UserError


@dataclass(frozen=True)
class Spec:
    """What one recipe key is.

    Attributes:
        help: one sentence for the docs, ``quantwise recipes`` and the flag's help.
        choices: the only values allowed (each element of a tuple field); None: any of its type.
        low, high: the allowed range of a number (None: unbounded); ``low_open``/``high_open``
            exclude the bound itself.
        flag: the command-line flag; None derives ``--key-name``; "" means no flag (the recipe's
            name already chooses it, or a recipe file is the place for it).
        negate: a boolean whose default is true: the flag sets it false (``--per-tensor``).
        implies: other keys the flag also sets (``--distill-on`` turns distillation on).
        cli_positive: 0 means "the task's default", so the flag takes only positive values.
        hint: what to do instead, appended to the error when the value is refused.
    """

    help: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    flag: str | None = None
    negate: bool = False
    implies: tuple[tuple[str, Any], ...] = ()
    cli_positive: bool = False
    hint: str = ""

    def range_text(self) -> str:
        if self.low is None and self.high is None:
            return ""
        lo = "-inf" if self.low is None else _num(self.low)
        hi = "inf" if self.high is None else _num(self.high)
        return f"{'(' if self.low_open or self.low is None else '['}{lo}, {hi}{')' if self.high_open or self.high is None else ']'}"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def knob(default: Any, help: str, **kw: Any) -> Any:
    """A recipe field with its declaration (see :class:`Spec`)."""
    return dataclasses.field(default=default, metadata={"spec": Spec(help=help, **kw)})


def spec(f: dataclasses.Field[Any]) -> Spec:
    s = f.metadata.get("spec")
    if s is None:
        raise TypeError(f"recipe field {f.name} is not declared with knob()")
    return s  # type: ignore[no-any-return]


def check_field(recipe: str, f: dataclasses.Field[Any], value: Any) -> None:
    """Refuse a value outside the field's declaration: one line naming the recipe, key and allowed values."""
    s = spec(f)
    hint = f": {s.hint}" if s.hint else ""
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise UserError(f"recipe {recipe}: {f.name} must be a finite number, got {v}{hint}")
        if s.choices is not None and v not in s.choices:
            allowed = ", ".join(str(c) for c in s.choices)
            raise UserError(f"recipe {recipe}: {f.name} must be one of {allowed}, got {v!r}{hint}")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            too_low = s.low is not None and (v <= s.low if s.low_open else v < s.low)
            too_high = s.high is not None and (v >= s.high if s.high_open else v > s.high)
            if too_low or too_high:
                raise UserError(f"recipe {recipe}: {f.name} must be in {s.range_text()}, got {v}{hint}")


def describe(f: dataclasses.Field[Any]) -> str:
    """``int, one of 4, 8``-style summary of what a key takes."""
    s = spec(f)
    typ = {bool: "true/false", int: "integer", float: "number", str: "text", tuple: "list"}[type(f.default)]
    parts = [typ]
    if s.choices is not None:
        parts.append("one of " + ", ".join(str(c) for c in s.choices))
    if s.range_text():
        parts.append("in " + s.range_text())
    return ", ".join(parts)


T = TypeVar("T")


def declared(cls: T) -> T:
    """Check every field is declared, and write the ``Attributes:`` section of the docstring from the declarations."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    lines = [f"    {f.name}: {spec(f).help}" for f in fields]
    doc = (cls.__doc__ or "").rstrip()
    cls.__doc__ = f"{doc}\n\nAttributes:\n" + "\n".join(lines) + "\n"
    return cls
