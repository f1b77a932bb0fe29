"""A Hugging Face checkpoint read one module at a time, and the quantized folder written block by block.

Reading: the safetensors shards a folder holds (one ``model.safetensors`` or several named by
``model.safetensors.index.json``), memory-mapped, each opened only while a module's tensors are
copied out of it, so the address space never holds more than one shard.

Writing (``quantwise-streamed.json`` and one ``.safetensors`` per block): each quantized layer's
integer weights, scales and zero points, and the float tensors of what was not quantized.
``read_streamed`` gives back the ``LayerQuant`` of every layer, exactly as written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantwise.errors import UserError
from quantwise.numerics.granularity import granularity_from_dict
from quantwise.quantized import LayerQuant

MANIFEST = "quantwise-streamed.json"


class Checkpoint:
    """Where each tensor of a safetensors checkpoint lives; tensors read on demand."""

    def __init__(self, folder: Path) -> None:
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            self.where = {k: folder / v for k, v in weight_map.items()}
        elif (folder / "model.safetensors").is_file():
            from safetensors import safe_open

            single = folder / "model.safetensors"
            with safe_open(str(single), framework="pt") as f:
                self.where = {k: single for k in f.keys()}
        else:
            raise UserError(
                f"{folder} has no model.safetensors (nor an index of shards): streaming reads safetensors; "
                "re-save the model with save_pretrained(safe_serialization=True)"
            )

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The named tensors as float32 copies, one shard open at a time."""
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for n in names:
            by_file.setdefault(self.where[n], []).append(n)
        out = {}
        for path, group in by_file.items():
            with safe_open(str(path), framework="pt") as f:
                for n in group:
                    out[n] = f.get_tensor(n).to(torch.float32).clone()
        return out


def load_params(
    model: nn.Module, names: list[str], ckpt: Checkpoint, strip: str = "", transposed: frozenset[str] = frozenset()
) -> None:
    """Give the parameters ``names`` of ``model`` (``meta`` until now) their checkpoint values
    (the checkpoint's name is the parameter's without the prefix ``strip``). The weights of the
    layers ``transposed`` (transformers ``Conv1D`` rewritten as ``nn.Linear``) are stored (in, out)."""
    keys = {n: n.removeprefix(strip) for n in names}
    missing = [k for k in keys.values() if k not in ckpt.where]
    if missing:
        raise UserError(f"the checkpoint has no tensor {missing[0]}: it does not match its config.json")
    values = ckpt.read(sorted(set(keys.values())))
    for n, k in keys.items():
        owner, _, attr = n.rpartition(".")
        v = values[k].t().contiguous() if attr == "weight" and owner in transposed else values[k]
        if tuple(v.shape) != tuple(model.get_parameter(n).shape):
            raise UserError(
                f"the checkpoint's {k} has shape {tuple(values[k].shape)}, the config's model expects "
                f"{tuple(model.get_parameter(n).shape)}: it does not match its config.json"
            )
        setattr(model.get_submodule(owner), attr, nn.Parameter(v, requires_grad=False))


def unload_module(module: nn.Module) -> None:
    """Free ``module``'s parameters (back to ``meta``)."""
    module.to("meta")


def write_part(out: Path, file: str, layers: dict[str, LayerQuant], floats: dict[str, torch.Tensor]) -> dict[str, Any]:
    """One safetensors file with ``layers``' integer weights, scales and zero points and the float
    tensors; returns the manifest entries of its layers."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {f"float.{k}": v.contiguous() for k, v in floats.items()}
    specs = {}
    for name, lq in layers.items():
        tensors[f"{name}.q"] = lq.weight_q.contiguous()
        tensors[f"{name}.scale"] = lq.weight_scale.contiguous()
        tensors[f"{name}.zero_point"] = lq.weight_zero_point.contiguous()
        specs[name] = {
            "file": file,
            "kind": str(lq.kind),
            "mode": str(lq.mode),
            "qtype": lq.weight_qtype,
            "granularity": lq.weight_granularity.to_dict(),
        }
    save_file(tensors, str(out / file))
    return specs


def read_streamed(folder: str | Path) -> tuple[dict[str, Any], dict[str, LayerQuant]]:
    """The manifest and every quantized layer of a folder ``stream_quantize`` wrote."""
    from safetensors import safe_open

    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise UserError(f"{folder} holds no {MANIFEST}: pass a folder written by quantwise stream")
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    layers = {}
    for name, spec in manifest["layers"].items():
        with safe_open(str(folder / spec["file"]), framework="pt") as f:
            layers[name] = LayerQuant(
                spec["kind"],
                spec["mode"],
                f.get_tensor(f"{name}.q"),
                f.get_tensor(f"{name}.scale"),
                f.get_tensor(f"{name}.zero_point"),
                spec["qtype"],
                granularity_from_dict(spec["granularity"]),
            )
    return manifest, layers


def read_floats(folder: str | Path, manifest: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The float parameters a streamed folder holds (norms, unquantized layers), by parameter name."""
    from safetensors import safe_open

    out = {}
    for file, names in manifest["floats"].items():
        with safe_open(str(Path(folder) / file), framework="pt") as f:
            out.update({n: f.get_tensor(f"float.{n}") for n in names})
    return out
