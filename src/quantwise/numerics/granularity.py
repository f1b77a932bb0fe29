"""Typed granularity: which elements share one scale and zero point."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class PerTensor:
    """One scale for the whole tensor."""

    def to_dict(self) -> dict[str, Any]:
        return {"type": "per_tensor"}


@dataclass(frozen=True)
class PerChannel:
    """One scale per slice along ``axis`` (output channels of a weight: axis 0)."""

    axis: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"type": "per_channel", "axis": self.axis}


@dataclass(frozen=True)
class PerGroup:
    """One scale per ``size`` consecutive elements along the last axis, per row."""

    size: int

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"group size must be positive, got {self.size}")

    def to_dict(self) -> dict[str, Any]:
        return {"type": "per_group", "size": self.size}


Granularity = PerTensor | PerChannel | PerGroup


def granularity_from_dict(d: dict[str, Any]) -> Granularity:
    """Inverse of ``to_dict``."""
    kind = d.get("type")
    if kind == "per_tensor":
        return PerTensor()
    if kind == "per_channel":
        return PerChannel(int(d.get("axis", 0)))
    if kind == "per_group":
        return PerGroup(int(d["size"]))
    raise ValueError(f"unknown granularity {d!r}")


def reduce_min_max(x: torch.Tensor, g: Granularity) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of ``x`` over each block that shares parameters.

    Returns tensors of shape ``()`` (per tensor), ``(C,)`` (per channel) or
    ``(*leading, K // size)`` (per group).
    """
    if isinstance(g, PerTensor):
        return x.amin(), x.amax()
    if isinstance(g, PerChannel):
        axis = g.axis % x.dim()
        dims = [d for d in range(x.dim()) if d != axis]
        return x.amin(dim=dims), x.amax(dim=dims)
    blocks = _group_view(x, g)  # (*leading, K // size, size)
    return blocks.amin(dim=-1), blocks.amax(dim=-1)


def expand_param(p: torch.Tensor, x: torch.Tensor, g: Granularity) -> torch.Tensor:
    """Broadcast a per-block parameter ``p`` to the shape of ``x``."""
    if isinstance(g, PerTensor):
        return p
    if isinstance(g, PerChannel):
        shape = [1] * x.dim()
        shape[g.axis % x.dim()] = -1
        return p.reshape(shape)
    return p.repeat_interleave(g.size, dim=-1)


def _group_view(x: torch.Tensor, g: PerGroup) -> torch.Tensor:
    k = x.shape[-1]
    if k % g.size:
        raise ValueError(f"last dimension {k} is not a multiple of group size {g.size}")
    return x.reshape(*x.shape[:-1], k // g.size, g.size)
