"""Quantized number types: integer grids and reduced-precision floats."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantwise.errors import UserError


@dataclass(frozen=True)
class QType:
    """A number type a tensor can be stored in.

    Attributes:
        name: Short name users type (``int8``, ``uint4``, ``fp16`` ...).
        bits: Storage bits per value.
        signed: Whether the integer grid is signed (ignored for floats).
        is_float: True for fp16/bf16 (and, later, fp8 variants).
        torch_dtype: The torch dtype that holds the values (int4 lives in int8/uint8).
    """

    name: str
    bits: int
    signed: bool
    is_float: bool = False
    torch_dtype: torch.dtype | None = None

    @property
    def qmin(self) -> int:
        """Smallest integer on the grid."""
        if self.is_float:
            raise ValueError(f"{self.name} is a float type and has no integer grid")
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        """Largest integer on the grid."""
        if self.is_float:
            raise ValueError(f"{self.name} is a float type and has no integer grid")
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1


INT8 = QType("int8", 8, True, torch_dtype=torch.int8)
UINT8 = QType("uint8", 8, False, torch_dtype=torch.uint8)
INT4 = QType("int4", 4, True, torch_dtype=torch.int8)
UINT4 = QType("uint4", 4, False, torch_dtype=torch.uint8)
INT16 = QType("int16", 16, True, torch_dtype=torch.int16)
UINT16 = QType("uint16", 16, False, torch_dtype=torch.uint16)
INT32 = QType("int32", 32, True, torch_dtype=torch.int32)
FP16 = QType("fp16", 16, True, is_float=True, torch_dtype=torch.float16)
BF16 = QType("bf16", 16, True, is_float=True, torch_dtype=torch.bfloat16)

QTYPES: dict[str, QType] = {t.name: t for t in (INT8, UINT8, INT4, UINT4, INT16, UINT16, INT32, FP16, BF16)}


def get_qtype(name: str) -> QType:
    """Look up a type by name.

    Raises:
        UserError: naming the unknown type and the known ones.
    """
    try:
        return QTYPES[name]
    except KeyError:
        raise UserError(f"unknown quantized type {name!r}: choose one of {', '.join(QTYPES)}") from None
