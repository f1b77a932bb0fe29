"""The ``llamacpp`` runtime: quantwise's own weights written to GGUF (:mod:`.gguf_write`) and run by
llama.cpp through llama-cpp-python, for causal LMs loaded from a ``.gguf`` file.

Scoring evaluates each window with all logits kept (``logits_all``) and returns them, so the
task's perplexity, KL and agreement protocol is the same as in every other runtime (not
llama.cpp's own ``llama-perplexity``, which scores only each chunk's second half). Generation is
greedy over llama.cpp's KV cache, one ``eval`` per token.

KV cache: F16 (llama.cpp's default), or ``Q8_0`` keys and values for a recipe with
``kv_cache: int8`` (with llama.cpp's flash attention, which a quantized value cache needs); the
choice is written beside the GGUF (``llamacpp.json``) so an exported folder loads the same way.

Numerics: llama.cpp's CPU kernels multiply ``Q4_0``/``Q8_0`` weights with activations that it
rounds to 8-bit blocks of 32 on the fly, so its logits differ from the simulation (which keeps
activations in float) by that rounding; the parity tests bound the difference.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantwise.errors import Unsupported
from quantwise.quiet import native_output_silenced
from quantwise.runtime.base import IntegerOps, RuntimeSpec
from quantwise.runtime.gguf_write import block_format, check_source, write_gguf

EXTRA = "quantwise[llamacpp]"
INSTALL = (
    f"the llamacpp runtime needs llama-cpp-python, which compiles llama.cpp (cmake and a C++ compiler, "
    f"4 to 9 minutes on 2 cores): pip install '{EXTRA}', or run scripts/bootstrap.sh, which builds and caches the wheel"
)


class LlamaCppRunner:
    """A GGUF file loaded in llama.cpp; ``run`` returns the logits of every position."""

    runtime = "llamacpp"

    def __init__(self, path: Path, threads: int, n_ctx: int = 2048, kv_int8: bool | None = None) -> None:
        from llama_cpp import Llama

        self.artifact = path
        self.threads = threads
        side = path.with_name("llamacpp.json")
        if kv_int8 is None:  # an exported folder says how its cache was evaluated
            kv_int8 = side.is_file() and json.loads(side.read_text()).get("kv_cache") == "int8"
        # Q8_0 keys and values (GGML type 8); a quantized V cache needs llama.cpp's flash attention
        kv: dict[str, Any] = {"type_k": 8, "type_v": 8, "flash_attn": True} if kv_int8 else {}
        self.kv_cache = "int8" if kv_int8 else "f16"
        with native_output_silenced():  # llama.cpp logs on fd 2 even when not verbose
            self.llm = Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=min(n_ctx, 512),
                n_threads=threads,
                n_threads_batch=threads,
                logits_all=True,
                verbose=False,
                **kv,
            )
        self._census = _census(path)

    def _eval(self, ids: list[int]) -> None:
        self.llm.reset()
        self.llm.eval(ids)

    def run(self, batch: tuple[torch.Tensor, ...]) -> np.ndarray:
        ids = batch[0]
        out = []
        for row in ids.tolist():
            self._eval([int(t) for t in row])
            out.append(np.array(self.llm.scores[: len(row)], dtype=np.float32))
        return np.stack(out)

    def generate(self, prompt: torch.Tensor, new_tokens: int, times: list[float] | None = None) -> list[int]:
        """Greedy tokens over llama.cpp's KV cache; ``times`` gets each token's arrival."""
        self._eval([int(t) for t in prompt.reshape(-1).tolist()])
        out: list[int] = []
        for _ in range(new_tokens):
            nxt = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(nxt)
            if times is not None:
                times.append(time.perf_counter())
            self.llm.eval([nxt])
        return out

    def integer_ops(self) -> dict[str, Any]:
        return self._census

    def close(self) -> None:
        self.llm.close()


def _census(path: Path) -> dict[str, Any]:
    """Matrices by GGML type: Q4_0/Q8_0 run in llama.cpp's integer dot products, F32 in float."""
    import gguf

    ops = IntegerOps()
    kinds: dict[str, int] = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        if len(t.shape) < 2:
            continue
        kind = t.tensor_type.name
        kinds[kind] = kinds.get(kind, 0) + 1
        ops.total += 1
        if kind.startswith("Q"):
            ops.integer += 1
        else:
            ops.float_ops.append(t.name)
    ops.kernels = kinds
    return ops.to_dict()


def _available() -> str | None:
    return None if importlib.util.find_spec("llama_cpp") is not None else INSTALL


def _why_not(qm: Any) -> str | None:
    if qm is None:
        return None
    if qm.cast or qm.plan is not None:
        return "llama.cpp runs the FP32 model and weight-only Q8_0/Q4_0 formats here (no casts or fixed point)"
    if qm.info.get("rotation"):
        return "llama.cpp cannot compute a rotated decoder's online rotations (a MatMul before each down_proj)"
    for name, lq in qm.layers.items():
        if lq.mode != "weight_only":
            return "llama.cpp quantizes activations its own way: only weight-only formats are written for it"
        _, why = block_format(lq)
        if why:
            return f"llama.cpp would run {name} in F32: {why}"
    return None


def _lower(qm: Any, task: Any, workdir: Path, threads: int, batch_sizes: Any = (1,)) -> tuple[Any, nn.Module]:
    if task.generation is None:
        raise Unsupported("llamacpp runs causal language models only")
    src = check_source(task)
    module = task.model if qm is None else qm.model
    path = workdir / "model.gguf"
    info = write_gguf(module, {} if qm is None else qm.layers, src, path)
    kv = "int8" if qm is not None and getattr(qm.recipe, "kv_cache", "float") == "int8" else "f16"
    path.with_name("llamacpp.json").write_text(json.dumps({"kv_cache": kv}))
    runner = LlamaCppRunner(path, threads, n_ctx=_context(task), kv_int8=kv == "int8")
    info["kv_cache"] = kv
    runner.gguf = info  # type: ignore[attr-defined]
    return runner, module


def _context(task: Any) -> int:
    """Positions the task needs: its longest window or prompt plus the generated tokens (a
    larger context only costs KV-cache memory)."""
    longest = max(int(b[0].shape[-1]) for b in task.eval_batches)
    gen = task.generation
    if gen is not None:
        longest = max(longest, int(gen.prompt.shape[-1]) + int(gen.new_tokens) + 1)
    return max(64, longest)


def _how(qm: Any) -> tuple[str, str]:
    return "model.gguf", "llama-cli -m model.gguf  (or llama_cpp.Llama(model_path='model.gguf'))"


SPEC = RuntimeSpec(
    name="llamacpp",
    help="llama.cpp via llama-cpp-python: causal LMs from a .gguf, weights written as Q8_0/Q4_0 (optional extra)",
    baseline="llamacpp",
    colour="#8a5a00",
    why_not=_why_not,
    lower=_lower,
    how_to_load=_how,
    memory_loads_artifact=True,
    available=_available,
    load=lambda folder, task, threads=1: LlamaCppRunner(folder / "model.gguf", threads, _context(task)),
    # llama.cpp keeps its KV cache in F16 and orders its float sums its own way: its F32 logits were
    # 1.3e-4 of the range from PyTorch's on the tiny test Llama (perplexity within 1e-3)
    fp32_tolerance=1e-3,
)
