"""Weight-only quantization (round to nearest, GPTQ or AWQ) of a causal LM that need not fit in memory.

The model is built from its ``config.json`` with every parameter on the ``meta`` device (no
memory); the parts outside the repeated blocks (embeddings, final norm, LM head) are loaded, and
then one block at a time: its weights are read from the safetensors shards, GPTQ calibrates it
on the previous blocks' quantized outputs (as the in-memory path, ``gptq_seq``, does; AWQ folds
its scales first, ``stream_awq``), its
integer weights are written to the output folder, and it is freed. Peak memory is the
embeddings and head, one block with its Hessians, and the calibration activations; the result
is the in-memory path's, bit for bit (``tests/llm/test_streaming.py``).
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantwise.calibrate.collect import run_calibration
from quantwise.errors import UserError
from quantwise.nnutil import canonicalize
from quantwise.outdir import atomic_dir, check_out
from quantwise.pipeline.shards import (
    MANIFEST,
    Checkpoint,
    load_params,
    read_floats,
    read_streamed,
    unload_module,
    write_part,
)
from quantwise.pipeline.stream_awq import StreamAWQ
from quantwise.progress import progress_iter, status
from quantwise.quantized import LayerQuant, QuantizedModel, write_back
from quantwise.quiet import env_vars, hf_quiet, import_torchao_quietly
from quantwise.recipes import WeightOnlyRecipe, recipe_from_dict
from quantwise.tasks.llm_load import CausalLMLogits, is_causal_lm, load_causal_lm
from quantwise.transform.gptq_seq import _block_inputs, _hidden, _with_hidden, collect_hessians, find_blocks
from quantwise.transform.registry import Batch
from quantwise.transform.schemes import (
    _scalable,
    _weight_layer,
    awq_quant_for,
    gptq_layer,
    mark_int8_compute,
    plan_weight_only,
    quantize_embeddings,
)

METHODS = ("rtn", "gptq", "awq")
WRAP = "lm."  # CausalLMLogits holds the Hugging Face model as ``lm``: checkpoint names lack it


def skeleton(folder: Path) -> tuple[CausalLMLogits, list[str]]:
    """The model of ``folder``'s config with parameters on ``meta`` (buffers such as rotary
    frequencies computed for real), float32, eager attention: as ``load_causal_lm`` loads it.
    transformers ``Conv1D`` layers (GPT-2) become ``nn.Linear``, as ``quantize`` rewrites them: their
    names are returned (their checkpoint weights are stored transposed)."""
    import_torchao_quietly()
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    if not is_causal_lm(folder):
        raise UserError(
            f"{folder} is not a causal-LM folder: its config.json names no causal-LM architecture (*ForCausalLM, GPT2LMHeadModel ...)"
        )
    with env_vars(HF_HUB_OFFLINE="1"), hf_quiet():
        config = AutoConfig.from_pretrained(str(folder))
        with init_empty_weights(include_buffers=False):
            lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    model = CausalLMLogits(lm.eval()).eval()
    return model, canonicalize(model)


def _give_back_freed_memory() -> None:
    """Return the freed block's memory to the system (glibc keeps large freed buffers in its heap
    otherwise: measured here, resident memory then grew by about 35 MB per 28 MB block instead of
    staying flat). A no-op without glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):
            pass


def _tied(model: CausalLMLogits, ckpt: Checkpoint) -> dict[str, str]:
    """``{LM head weight: input embedding weight}`` when the config ties them (the checkpoint then
    holds one of the two); the skeleton's head is made to share the embedding's Parameter."""
    lm: Any = model.lm
    head, emb = lm.get_output_embeddings(), lm.get_input_embeddings()
    if not getattr(lm.config, "tie_word_embeddings", False) or head is None:
        return {}
    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    h, e = f"{names[id(head)]}.weight", f"{names[id(emb)]}.weight"
    kept, shared = (h, e) if h.removeprefix(WRAP) in ckpt.where and e.removeprefix(WRAP) not in ckpt.where else (e, h)
    if kept.removeprefix(WRAP) not in ckpt.where:
        raise UserError(f"the checkpoint has no tensor {kept.removeprefix(WRAP)}: it does not match its config.json")
    head.weight = emb.weight  # tied: one Parameter, as from_pretrained leaves it
    return {shared: kept}


def _load(
    model: nn.Module, names: list[str], ckpt: Checkpoint, tied: dict[str, str], transposed: frozenset[str]
) -> None:
    """Load the parameters ``names``; tied ones become the very same Parameter again."""
    load_params(model, [n for n in names if n not in tied], ckpt, WRAP, transposed)
    for n, src in tied.items():
        if n in names:
            owner, _, attr = n.rpartition(".")
            setattr(model.get_submodule(owner), attr, model.get_parameter(src))


class _Replay(nn.Module):
    """Stands in for the first block: returns the last block's stored outputs, one per call."""

    def __init__(self, outputs: list[torch.Tensor]) -> None:
        super().__init__()
        self.outputs: Iterator[torch.Tensor] = iter(outputs)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return next(self.outputs)


class _Pass(nn.Module):
    def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden


@contextmanager
def _replaying(blocks: nn.ModuleList, outputs: list[torch.Tensor]) -> Iterator[None]:
    """The blocks stood in for by their stored last outputs (one per forward pass, in order), so a
    pass through the model runs only what lies outside them (final norm, head)."""
    saved = list(blocks)
    for i in range(len(blocks)):
        stand_in: nn.Module = _Replay(outputs) if i == 0 else _Pass()
        if hasattr(saved[i], "attention_type"):  # models that pick a mask per block read it
            stand_in.attention_type = saved[i].attention_type  # type: ignore[assignment]
        blocks[i] = stand_in
    try:
        yield
    finally:
        for i, m in enumerate(saved):
            blocks[i] = m


@contextmanager
def _without_blocks(model: nn.Module, prefix: str) -> Iterator[None]:
    """``model`` with its repeated blocks detached (their parameters are on ``meta``)."""
    owner, _, attr = prefix.rpartition(".")
    parent = model.get_submodule(owner)
    saved = getattr(parent, attr)
    setattr(parent, attr, nn.ModuleList())
    try:
        yield
    finally:
        setattr(parent, attr, saved)


def _feed(block: nn.Module, inputs: list[tuple[tuple, dict]]) -> list[tuple[tuple, dict]]:
    """Run ``block`` on each input; the next block's inputs (the same arguments, new hidden states)."""
    nxt = []
    with torch.no_grad():
        for args, kwargs in inputs:
            out = block(*args, **kwargs)
            nxt.append(_with_hidden(args, kwargs, out[0] if isinstance(out, tuple) else out))
    return nxt


def stream_quantize(
    folder: str | Path, recipe: WeightOnlyRecipe, calib: Sequence[Batch], out: str | Path, overwrite: bool = False
) -> dict[str, Any]:
    """Quantize the causal LM in ``folder`` block by block into ``out``; returns the manifest.

    ``calib``: ``(input_ids,)`` batches (GPTQ and AWQ). Embedding tables are quantized as the
    in-memory path does when the recipe asks. AWQ folds each block's scales into its norms, then
    rounds to nearest (``stream_awq``); AWQ followed by GPTQ is not streamed."""
    folder, out = Path(folder), check_out(out, overwrite)
    if not isinstance(recipe, WeightOnlyRecipe) or recipe.method not in METHODS:
        got = recipe.method if isinstance(recipe, WeightOnlyRecipe) else recipe.name
        raise UserError(f"streaming quantizes weight-only recipes with method rtn, gptq or awq, got {got}")
    if recipe.rotate:
        raise UserError("streaming does not rotate (it holds one block at a time): quantize without --rotate")
    gptq, use_awq = recipe.method == "gptq", recipe.method == "awq"
    if (gptq or use_awq) and not calib:
        raise UserError(f"{recipe.method.upper()} needs calibration text: pass --data")
    start = time.perf_counter()
    model, rewritten = skeleton(folder)
    transposed = frozenset(rewritten)
    ckpt = Checkpoint(folder)
    found = find_blocks(model)
    if found is None:
        raise UserError(f"{folder}: no repeated blocks found (a ModuleList of layers holding Linear layers)")
    prefix, blocks = found
    tied = _tied(model, ckpt)
    todo, skipped, groups, bits, info = plan_weight_only(model, recipe)
    if transposed:
        info["rewritten_as_linear"] = sorted(transposed)
    everything = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    outer = [n for n in everything if not n.startswith(prefix + ".")]
    _load(model, outer, ckpt, tied, transposed)
    inputs = _block_inputs(model, blocks[0], calib) if gptq or use_awq else []
    manifest: dict[str, Any] = {"layers": {}, "floats": {}}
    linear = {n: m for n, m in todo if isinstance(m, nn.Linear)}
    scalable, tied_not_scaled = _scalable(model, linear, id) if use_awq else ({}, {})
    smooth = StreamAWQ(model, inputs, awq_quant_for(recipe, bits, groups)) if use_awq else None

    def quant(name: str, mod: nn.Module, h: torch.Tensor | None) -> LayerQuant:
        b, g = bits.get(name, recipe.bits), groups.get(name, recipe.group_size)
        if h is not None:
            return gptq_layer(mod, h, recipe, b, g)
        return _weight_layer(
            mod, "weight_only", b, g, recipe.symmetric, fp16=recipe.fp16_scales, full=recipe.full_range
        )

    def write(staged: Path, file: str, layers: dict[str, LayerQuant], names: list[str]) -> None:
        """The layers' integers, and in float every parameter that is not a quantized weight."""
        quantized = {id(model.get_submodule(n).weight) for n in layers}
        floats = {n: model.get_parameter(n).detach() for n in names if n not in tied}
        floats = {n: t for n, t in floats.items() if id(model.get_parameter(n)) not in quantized}
        manifest["layers"].update(write_part(staged, file, layers, floats))
        manifest["floats"][file] = sorted(floats)

    with atomic_dir(out) as staged:
        for i, block in enumerate(progress_iter(list(blocks), f"streaming {len(blocks)} blocks")):
            names = [n for n in everything if n.startswith(f"{prefix}.{i}.")]
            _load(model, names, ckpt, tied, transposed)
            here = {n: m for n, m in todo if n.startswith(f"{prefix}.{i}.")}
            if smooth is not None:
                smooth.fold(block, {n: m for n, m in scalable.items() if n in here}, _feed)
            hess = collect_hessians(here, partial(_feed, block, inputs)) if gptq else {}
            layers = {n: quant(n, m, hess.get(n)) for n, m in here.items()}
            if gptq:  # the next block sees this block's quantized outputs
                inputs = _feed(block, inputs)
            write(staged, f"block-{i:05d}.safetensors", layers, names)
            unload_module(block)
            _give_back_freed_memory()
        rest = {n: m for n, m in todo if not n.startswith(prefix + ".")}
        hess = {}
        if gptq and rest:  # the head's inputs: the last block's outputs through the final norm
            final = [_hidden(a, k) for a, k in inputs]
            with _replaying(blocks, final):
                hess = collect_hessians(rest, lambda: run_calibration(model, calib, "GPTQ: layers outside the blocks"))
        if smooth is not None:  # the final norm and an untied head: the float chain's last outputs
            last = {id(b): _hidden(a, k) for b, (a, k) in zip(calib, smooth.inputs, strict=True)}

            def run(b: Batch) -> Any:
                with _replaying(blocks, [last[id(b)]]):
                    return model(*b)

            smooth.fold_outside({n: m for n, m in scalable.items() if n in rest}, calib, run)
            if not smooth.info["groups"]:
                raise UserError("awq: no Linear takes its input straight from a norm or a Linear; stream with rtn")
            info["awq"] = {**smooth.info, "tied_not_scaled": tied_not_scaled}
        layers = {n: quant(n, m, hess.get(n)) for n, m in rest.items()}
        with _without_blocks(model, prefix):
            quantize_embeddings(model, recipe, layers, skipped)
        write(staged, "outside.safetensors", layers, outer)
        manifest.update(
            {
                "source": str(folder.resolve()),
                "recipe": recipe.to_dict(),
                "blocks": f"{prefix} ({len(blocks)})",
                "tied": tied,
                "skipped": skipped,
                "info": info,
                "seconds": round(time.perf_counter() - start, 2),
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "checkpoint_bytes": sum(p.stat().st_size for p in set(ckpt.where.values())),
            }
        )
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=2))
    status(f"wrote {out}: {len(manifest['layers'])} quantized layers in {manifest['seconds']} s")
    return manifest


def load_streamed(out: str | Path, folder: str | Path | None = None) -> QuantizedModel:
    """The QuantizedModel of a streamed folder, with the float model loaded whole (from ``folder``,
    default the folder it was quantized from): for evaluating it where it fits in memory."""
    manifest, layers = read_streamed(out)
    model, _tok = load_causal_lm(folder or manifest["source"])
    canonicalize(model)  # streamed as nn.Linear, as the skeleton was
    write_back(model, layers)
    with torch.no_grad():  # the float parameters as written: AWQ folded its scales into the norms
        for name, values in read_floats(out, manifest).items():
            model.get_parameter(name).copy_(values)
    recipe = recipe_from_dict(manifest["recipe"])
    if isinstance(recipe, WeightOnlyRecipe):
        mark_int8_compute(layers, recipe)
    return QuantizedModel(model=model, recipe=recipe, layers=layers, skipped=manifest["skipped"], info=manifest["info"])
