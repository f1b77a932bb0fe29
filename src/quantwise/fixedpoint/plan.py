"""What a fixed-point model is, beyond its integer weights: tensor formats and integer rescaling.

The :class:`FixedPointPlan` rides on a :class:`~quantwise.quantized.QuantizedModel`; every
runtime (integer executor, PyTorch, ONNX Runtime, C) reads its numbers and none recomputes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from quantwise.fixedpoint.graph import Program
from quantwise.numerics.fixedpoint import int_range, qformat


@dataclass(frozen=True)
class TensorFormat:
    """An integer tensor with zero point 0: ``value = q * scale``, ``q`` a ``bits``-wide integer."""

    scale: float
    bits: int
    signed: bool

    @property
    def qmin(self) -> int:
        return int_range(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return int_range(self.bits, self.signed)[1]

    @property
    def qtype(self) -> str:
        return f"{'' if self.signed else 'u'}int{self.bits}"

    @property
    def max_abs(self) -> int:
        return max(-self.qmin, self.qmax)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "bits": self.bits,
            "signed": self.signed,
            "qformat": qformat(self.scale, self.bits, self.signed),
        }


@dataclass
class LayerPlan:
    """Integer parameters of one Conv2d/Linear beyond its weights.

    Attributes:
        weight: integer weights ``(N, ...)`` (the LayerQuant's, shared, not saved twice).
        weight_scale: float32 ``(N,)`` per-output-channel weight scales (the LayerQuant's too).
        bias: int64 ``(N,)`` bias in accumulator units (scale ``s_in * s_w[n]``).
        multiplier, shift: int64 ``(N,)``: output = round_half_even(acc * multiplier / 2**shift).
        worst_bits: accumulator width the worst case needs (weights and the input type's range).
    """

    weight: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor
    multiplier: torch.Tensor
    shift: torch.Tensor
    worst_bits: int


@dataclass
class FixedPointPlan:
    program: Program
    formats: dict[str, TensorFormat]
    layers: dict[str, LayerPlan]
    accumulator: int = 32
    on_overflow: str = "refuse"
    ranges: dict[str, list[float]] = field(default_factory=dict)  # calibrated float ranges, for reports

    def meta(self) -> dict[str, Any]:
        return {
            "program": self.program.to_dict(),
            "formats": {k: v.to_dict() for k, v in self.formats.items()},
            "worst_bits": {k: v.worst_bits for k, v in self.layers.items()},
            "accumulator": self.accumulator,
            "on_overflow": self.on_overflow,
            "ranges": self.ranges,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, lp in self.layers.items():
            out[f"fx::{name}::bias"] = lp.bias.contiguous()
            out[f"fx::{name}::multiplier"] = lp.multiplier.contiguous()
            out[f"fx::{name}::shift"] = lp.shift.contiguous()
        return out

    @classmethod
    def from_saved(
        cls,
        meta: dict[str, Any],
        tensors: dict[str, torch.Tensor],
        weights: dict[str, tuple[torch.Tensor, torch.Tensor]],
    ) -> FixedPointPlan:
        """Rebuild from :meth:`meta` and :meth:`tensors`; ``weights`` maps layer -> (integer weight, scales)."""
        formats = {k: TensorFormat(v["scale"], v["bits"], v["signed"]) for k, v in meta["formats"].items()}
        layers = {
            name: LayerPlan(
                *weights[name],
                tensors[f"fx::{name}::bias"],
                tensors[f"fx::{name}::multiplier"],
                tensors[f"fx::{name}::shift"],
                bits,
            )
            for name, bits in meta["worst_bits"].items()
        }
        return cls(
            Program.from_dict(meta["program"]),
            formats,
            layers,
            meta["accumulator"],
            meta["on_overflow"],
            meta.get("ranges", {}),
        )

    def summary(self) -> list[dict[str, Any]]:
        """Per Conv2d/Linear: formats in and out, Qm.n names, and the worst-case accumulator width."""
        rows = []
        for n in self.program.heavy():
            fin, fout = self.formats[n.inputs[0]], self.formats[n.output]
            rows.append(
                {
                    "layer": n.layer,
                    "op": n.op,
                    "input": fin.to_dict(),
                    "output": fout.to_dict(),
                    "worst_case_accumulator_bits": self.layers[n.layer].worst_bits,
                }
            )
        return rows
