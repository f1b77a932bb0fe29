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


def pack_matmul_nbits(
    q: torch.Tensor, zero_point: torch.Tensor, bits: int, signed: bool, block: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """ONNX Runtime ``MatMulNBits``' ``B`` and ``zero_points`` from integer weights ``q`` (N, K).

    MatMulNBits stores unsigned values, so signed ones are offset by ``2**(bits-1)`` (their zero
    point with them). Returns ``packed`` (N, K // block, block * bits // 8) uint8 and the zero
    points, ``(N * ceil(K / block / 2),)`` packed two per byte for 4 bits, ``(N * K // block,)`` for 8.
    """
    n, k = q.shape
    offset = 1 << (bits - 1) if signed else 0
    u = (q.to(torch.int16) + offset).to(torch.uint8)  # (N, K)
    zp = (zero_point.to(torch.int16) + offset).to(torch.uint8).reshape(n, -1)  # (N, K / block)
    nblk = k // block
    if bits == 4:
        packed = pack_int4(u).reshape(n, nblk, block // 2)
        if zp.shape[1] % 2:
            zp = torch.cat([zp, torch.zeros(n, 1, dtype=torch.uint8)], 1)
        zp = pack_int4(zp)
    else:
        packed = u.reshape(n, nblk, block)
    return packed.contiguous(), zp.reshape(-1).contiguous()


def nbits_block_ok(block: int, k: int) -> bool:
    """MatMulNBits needs a power-of-two block of at least 16 that divides K."""
    return block >= 16 and block & (block - 1) == 0 and k % block == 0
