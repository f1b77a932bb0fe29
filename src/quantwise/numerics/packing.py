"""Bit packing for 4-bit values: two per byte, low nibble first (ONNX and MatMulNBits order)."""

from __future__ import annotations

import torch


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit integers (signed in [-8, 7] or unsigned in [0, 15]) two per uint8.

    The last dimension must be even. Element ``2i`` goes to the low nibble of byte ``i``.
    """
    if q.shape[-1] % 2:
        raise ValueError(f"last dimension must be even to pack int4, got {q.shape[-1]}")
    u = (q.to(torch.int16) & 0x0F).to(torch.uint8)  # two's complement nibble
    return (u[..., 0::2] | (u[..., 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor, signed: bool) -> torch.Tensor:
    """Inverse of :func:`pack_int4`; returns int8 (signed) or uint8 values."""
    lo = (packed & 0x0F).to(torch.int16)
    hi = ((packed >> 4) & 0x0F).to(torch.int16)
    out = torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)
    if signed:
        out = torch.where(out > 7, out - 16, out)
        return out.to(torch.int8)
    return out.to(torch.uint8)
