"""Capture a model whose Conv2d/Linear subclasses have their own ``forward`` as a graph.

A layer such as timm's TF-port ``Conv2dSame`` (``F.pad`` then ``F.conv2d``) cannot be swapped for
a quantized conv without dropping its padding, so module-level quantization leaves it in float.
Captured with ``torch.export`` (the batch dimension dynamic) and lifted
(:mod:`quantwise.transform.lift`), the same computation becomes ordinary nodes: the padding a
graph node, the convolution an ``nn.Conv2d`` holding the very same Parameter at the layer's own
name, checked against the program on the example. Then it quantizes like any conv.

When capture fails the model is quantized module by module as before (the subclass in float,
with its reason), and the record says why capture failed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from quantwise.transform.lift import lift_program
from quantwise.transform.select import own_forward


def subclassed_layers(model: nn.Module) -> list[str]:
    """``name (class)`` of each Conv2d/Linear subclass with its own ``forward`` in ``model``."""
    return [f"{name} ({sub})" for name, mod in model.named_modules() if (sub := own_forward(mod))]


def capture(model: nn.Module, example: tuple[torch.Tensor, ...]) -> tuple[nn.Module, dict[str, Any]]:
    """``model`` captured with ``torch.export`` and lifted; raises with the exporter's reason."""
    dims = tuple({0: torch.export.Dim.AUTO} for _ in example)
    ep = torch.export.export(model.eval(), example, dynamic_shapes=dims)
    lifted, info = lift_program(ep, example)
    return lifted, {"by": "torch.export", "layers_lifted": len(info["lifted"]), "left_functional": info["left"]}


def capture_if_needed(
    model: nn.Module, example: tuple[torch.Tensor, ...] | None
) -> tuple[nn.Module, dict[str, Any] | None]:
    """``(captured model, what was done)`` when ``model`` has subclassed layers, else ``(model, None)``."""
    subs = subclassed_layers(model)
    if not subs or example is None or isinstance(model, torch.fx.GraphModule):
        return model, None
    why = f"{', '.join(subs[:3])}{' ...' if len(subs) > 3 else ''}: Conv2d/Linear subclasses with their own forward()"
    try:
        lifted, info = capture(model, example)
    except Exception as e:  # torch.export and the lifting check raise many kinds
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        return model, {"failed": f"torch.export could not capture the model ({type(e).__name__}: {first})", "why": why}
    return lifted, {**info, "why": why}
