"""Feeding observers from a model's forward passes, with hooks that are always removed."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from quantwise.calibrate.observers import Observer
from quantwise.progress import progress_iter


@contextmanager
def observing(
    model: nn.Module,
    inputs: dict[str, Observer],
    outputs: dict[str, Observer],
    transforms: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> Iterator[None]:
    """Attach observers to module inputs (first positional arg) and outputs (through
    ``transforms[name]`` where given: an activation the module's output goes through); detach on exit."""
    handles = []
    try:
        for name, obs in inputs.items():
            handles.append(model.get_submodule(name).register_forward_pre_hook(_pre_hook(obs)))
        for name, obs in outputs.items():
            fn = (transforms or {}).get(name)
            handles.append(model.get_submodule(name).register_forward_hook(_post_hook(obs, fn)))
        yield
    finally:
        for h in handles:
            h.remove()


def _pre_hook(obs: Observer) -> Callable[..., None]:
    def hook(_mod: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        obs.observe(args[0])

    return hook


def _post_hook(obs: Observer, fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Callable[..., None]:
    def hook(_mod: nn.Module, _args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        obs.observe(out if fn is None else fn(out))

    return hook


def run_calibration(model: nn.Module, batches: Sequence[tuple[torch.Tensor, ...]], label: str = "calibrating") -> None:
    """Run every calibration batch through ``model`` without gradients."""
    with torch.no_grad():
        for batch in progress_iter(batches, label):
            model(*batch)
