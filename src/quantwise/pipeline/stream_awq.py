"""AWQ while streaming: each block's scales searched on the float model's activations and folded
into the block's norms before its weights are rounded, as the in-memory path does for the whole model.

The in-memory path collects every group's statistics in one pass of the float model, then folds.
Here each block sees the float model's activations too: a float chain of block inputs is carried
alongside, computed before the block's scales are folded (folding leaves the float outputs equal
only up to rounding), so the scales and integers are the in-memory path's, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from quantwise.errors import UserError
from quantwise.transform.gptq_seq import _hidden as hidden_of
from quantwise.transform.registry import Batch
from quantwise.transform.smoothing import _first, awq, find_groups

Quant = Callable[[torch.Tensor], torch.Tensor]


class StreamAWQ:
    """Per block: ``fold(block, linears)``; at the end ``fold_outside(linears, run)``."""

    def __init__(self, model: nn.Module, inputs: list[tuple[tuple, dict]], quant_for: Callable[[str], Quant]) -> None:
        self.model, self.inputs, self.quant_for = model, inputs, quant_for  # inputs: the float chain
        self.info: dict[str, Any] = {"exponents": {}, "groups": 0, "scaled_layers": 0, "unscaled_layers": {}}

    def fold(self, block: nn.Module, linears: dict[str, nn.Linear], feed: Callable[..., list]) -> None:
        """Search and fold the scales of ``linears`` (this block's), then advance the float chain."""
        nxt = feed(block, self.inputs)  # the float model's outputs, before anything is folded
        if linears:

            def forward(item: tuple[tuple, dict]) -> Any:
                return block(*item[0], **item[1])

            self._search(linears, self.inputs, forward, lambda: _first(forward(self.inputs[0])), _hidden(nxt[0]))
        self.inputs = nxt

    def fold_outside(self, linears: dict[str, nn.Linear], calib: Sequence[Batch], run: Callable[[Batch], Any]) -> None:
        """The groups outside the blocks (the final norm and an untied LM head); ``run(batch)``
        runs the model with the blocks replaced by the float chain's last outputs."""
        if linears:
            before = _first(run(calib[0])).clone()
            self._search(linears, calib, run, lambda: _first(run(calib[0])), before)

    def _search(
        self,
        linears: dict[str, nn.Linear],
        items: Sequence[Any],
        forward: Callable[[Any], Any],
        after: Callable[[], torch.Tensor],
        before: torch.Tensor,
    ) -> None:
        groups, why = find_groups(self.model, linears, items, forward)
        self.info["unscaled_layers"].update(why)
        if not groups:
            return
        self.info["exponents"].update(awq(self.model, groups, self.quant_for)["exponents"])
        self.info["groups"] += len(groups)
        self.info["scaled_layers"] += sum(len(g.linears) for g in groups)
        with torch.no_grad():
            now = after()
        diff = float((now - before).abs().max() / before.abs().max().clamp(min=1e-12))
        if diff > 1e-3:
            raise UserError(
                f"awq: folding the scales changed the float outputs of {', '.join(sorted(linears))[:120]} "
                f"(max relative change {diff:.1e}); stream with --method rtn or gptq"
            )


def _hidden(item: tuple[tuple, dict]) -> torch.Tensor:
    return hidden_of(*item)
