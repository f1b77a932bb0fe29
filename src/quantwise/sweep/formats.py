"""The formats ``compare`` sweeps: an explicit registry from format id to recipe and runtimes.

Later schemes (QAT, mixed precision, fixed point) slot in by adding an entry here; the
compare loop itself does not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quantwise.errors import UserError
from quantwise.recipes import Recipe, get_recipe
from quantwise.tasks.base import Task


@dataclass(frozen=True)
class Format:
    """One candidate format.

    Attributes:
        id: The name shown in tables and typed in ``--formats``.
        recipe: Registered recipe name (``None`` for the FP32 baseline).
        overrides: Recipe field overrides.
        runtimes: Runtimes that can run it.
        family: Kernel family, for hardware profiles: fp32, fp16, bf16, int8, int4-weight, int8-weight, fixed-point.
        default: run when ``--formats`` is not given; a search that takes an hour on a real LLM runs by name only.
    """

    id: str
    recipe: str | None
    overrides: dict[str, Any] = field(default_factory=dict)
    runtimes: tuple[str, ...] = ("torch", "onnxruntime")
    family: str = "fp32"
    default: bool = True

    @property
    def trains(self) -> bool:
        """Quantization-aware training: needs the task's training data."""
        return bool(self.recipe and self.recipe.startswith("qat-"))

    def build_recipe(self, max_drop_points: float | None = None, optimize: str | None = None) -> Recipe | None:
        """The recipe; a budgeted search (``mixed``) gets compare's accuracy budget and objective."""
        if not self.recipe:
            return None
        over = dict(self.overrides)
        if self.recipe == "mixed" and max_drop_points is not None:
            over["max_drop"] = max_drop_points
        if self.recipe == "mixed" and optimize is not None and "optimize" not in self.overrides:  # unless pinned
            over["optimize"] = "latency" if optimize == "latency" else "size"  # memory follows size
        return get_recipe(self.recipe, **over)


_INT8_RT = ("torch", "torch-int8", "onnxruntime")
_TFL = ("torch", "onnxruntime", "tflite")

FORMATS: dict[str, Format] = {
    f.id: f
    for f in (
        Format("fp32", None, runtimes=_TFL, family="fp32"),
        Format("fp16", "fp16", runtimes=_TFL, family="fp16"),
        Format("bf16", "bf16", runtimes=("torch",), family="bf16"),
        Format("dynamic-int8", "dynamic-int8", runtimes=(*_INT8_RT, "tflite"), family="int8"),
        Format(
            "dynamic-int8-per-token", "dynamic-int8", {"activations": "per-token"}, runtimes=_INT8_RT, family="int8"
        ),
        Format("static-int8-minmax", "static-int8", {"calibration": "minmax"}, runtimes=_INT8_RT, family="int8"),
        Format(
            "static-int8-full", "static-int8", {"quantize_outputs": True}, runtimes=(*_INT8_RT, "tflite"), family="int8"
        ),
        Format(
            "static-int8-percentile", "static-int8", {"calibration": "percentile"}, runtimes=_INT8_RT, family="int8"
        ),
        Format("static-int8-entropy", "static-int8", {"calibration": "entropy"}, runtimes=_INT8_RT, family="int8"),
        Format("static-int8-mse", "static-int8", {"calibration": "mse"}, runtimes=_INT8_RT, family="int8"),
        Format("weight-int8", "weight-int8", family="int8-weight"),  # LiteRT folds weight-only int8 back to float
        Format("weight-int4-g32", "weight-int4", {"group_size": 32}, family="int4-weight"),
        Format("weight-int4-g32-gptq", "weight-int4", {"group_size": 32, "method": "gptq"}, family="int4-weight"),
        Format("static-w4a8", "static-w4a8", family="int8"),  # torch-int8 refuses int4 weight values
        Format("qat-w8a8", "qat-w8a8", runtimes=_INT8_RT, family="int8"),
        # full integer: without output quantization LiteRT keeps a transformer's Linear layers float
        Format("qat-w8a8-full", "qat-w8a8", {"quantize_outputs": True}, runtimes=(*_INT8_RT, "tflite"), family="int8"),
        Format("qat-w4a8", "qat-w4a8", family="int8"),
        Format("qat-w4", "qat-w4", family="int4-weight"),
        Format("mixed", "mixed", runtimes=("onnxruntime",), family="int8"),
        Format("fixed-point", "fixed-point", runtimes=("integer", "onnxruntime", "torch"), family="fixed-point"),
        Format(
            "fixed-point-pot",
            "fixed-point",
            {"pot_scales": True},
            runtimes=("integer", "onnxruntime", "torch"),
            family="fixed-point",
        ),
    )
}


_LM = ("torch", "onnxruntime")
# Quantized LLM formats are compared in ONNX Runtime (its kernels give the speed; the torch
# simulation computes the same numbers, checked by tests/llm) to keep an LLM compare short.
_LMQ = ("onnxruntime",)
_GG = ("llamacpp",)
_Q4_0 = {"group_size": 32, "fp16_scales": True, "head_bits": 8}
_GPTQ = {"group_size": 128, "method": "gptq", "gptq_act_order": True}  # g128, activation order, static groups


def _lm(fid: str, recipe: str, overrides: dict[str, Any], family: str, default: bool = True) -> Format:
    """A quantized LLM format, compared in ONNX Runtime."""
    return Format(fid, recipe, overrides, runtimes=_LMQ, family=family, default=default)


# Causal LMs: weight-only integer formats (W8A16, W4A16 by group size, GPTQ), per-token dynamic W8A8.
# default=False: run only when named (``--formats w4a16`` selects every w4a16-*). compare's default LLM set
# keeps one format per kernel and algorithm family, toward its 30-minute target (each LLM trial exports,
# scores 4,088 tokens and 40 zero-shot articles, and times prefill and decode: 44-163 s here on 2026-12-04).
LLM_FORMATS: dict[str, Format] = {
    f.id: f
    for f in (
        Format("fp32", None, runtimes=(*_LM, "llamacpp"), family="fp32"),
        Format("fp16", "fp16", runtimes=("onnxruntime",), family="fp16"),  # torch fp16 on this CPU: 4x slower than FP32
        Format("bf16", "bf16", runtimes=("torch",), family="bf16"),
        Format("w8a16-g128", "w8a16", {"group_size": 128}, runtimes=_LMQ, family="int8-weight"),
        Format("w4a16-g32", "w4a16", {"group_size": 32}, runtimes=_LMQ, family="int4-weight"),
        # GGUF's blocks for llama.cpp: groups of 32 with half-precision scales are exactly Q8_0 / Q4_0;
        # the int4 ones keep the LM head (and its tied embedding) at 8 bits, as llama.cpp's own Q4_0 does
        # (in ONNX Runtime that 8-bit head runs in MatMulNBits at accuracy level 0, which decodes slower than FP32)
        Format("gguf-q8_0", "w8a16", {"group_size": 32, "fp16_scales": True}, runtimes=_GG, family="int8-weight"),
        Format("gguf-q4_0", "w4a16", _Q4_0, runtimes=_GG, family="int4-weight"),
        Format("gguf-q4_0-awq", "w4a16", {**_Q4_0, "method": "awq"}, runtimes=_GG, family="int4-weight", default=False),
        # the same Q4_0 weights with llama.cpp's Q8_0 key/value cache (KV-cache INT8)
        Format(
            "gguf-q4_0-kv8", "w4a16", {**_Q4_0, "kv_cache": "int8"}, runtimes=_GG, family="int4-weight", default=False
        ),
        # asymmetric (a minimum and a step per group, as GGUF's Q4_1 stores them)
        Format(
            "w4a16-g32-asym",
            "w4a16",
            {"group_size": 32, "symmetric": False},
            runtimes=_LMQ,
            family="int4-weight",
            default=False,
        ),
        Format("w4a16-g128", "w4a16", {"group_size": 128}, runtimes=_LMQ, family="int4-weight", default=False),
        # GPTQ in activation order with static groups (SmolLM2: +29.8% perplexity against +45.1% in order)
        Format(
            "w4a16-g128-gptq",
            "w4a16",
            _GPTQ,
            runtimes=_LMQ,
            family="int4-weight",
        ),
        # the decoder rotated first (transform/rotation.py), then GPTQ: on SmolLM2 in the simulation +19.5%
        # perplexity against GPTQ's +32.0% (rotation before round-to-nearest int4 measured worse there:
        # its weights already sit on the Q4_1 checkpoint's grid, which a rotation scatters)
        _lm("w4a16-g128-gptq-rot", "w4a16", {**_GPTQ, "rotate": True}, "int4-weight", default=False),
        # activation-aware scales folded into the norms before q/k/v and gate/up
        Format(
            "w4a16-g128-awq",
            "w4a16",
            {"group_size": 128, "method": "awq"},
            runtimes=_LMQ,
            family="int4-weight",
            default=False,
        ),
        Format("w8a8-per-token", "dynamic-int8", {"activations": "per-token"}, runtimes=_LMQ, family="int8"),
        # SmoothQuant's strength searched per group (SmolLM2 in ONNX Runtime: +3.19% perplexity against +5.47%)
        Format(
            "w8a8-per-token-sq",
            "dynamic-int8",
            {"activations": "per-token", "smoothquant": True},
            runtimes=_LMQ,
            family="int8",
        ),
        # rotated first (transform/rotation.py: residual stream, values, down_proj input; SmolLM2 in
        # ONNX Runtime: +2.18% perplexity, KL 0.023 against SmoothQuant's 0.038)
        _lm("w8a8-per-token-rot", "dynamic-int8", {"activations": "per-token", "rotate": True}, "int8"),
        Format("w8a8-per-tensor", "dynamic-int8", runtimes=(*_LMQ, "torch-int8"), family="int8"),
        # int8 compute: activations quantized per row and weight block at run time, int8 dot products
        # (MatMulNBits accuracy_level=4); the simulation quantizes them the same way
        Format("w4a8-g32", "w4a16", {"group_size": 32, "int8_compute": True}, runtimes=_LMQ, family="int8"),
        _lm("w4a8-g128-gptq", "w4a16", {**_GPTQ, "int8_compute": True}, "int8", default=False),
        _lm("w4a8-g128-gptq-rot", "w4a16", {**_GPTQ, "int8_compute": True, "rotate": True}, "int8", default=False),
        Format("w8a8-g32", "w8a16", {"group_size": 32, "int8_compute": True}, runtimes=_LMQ, family="int8"),
        # mixed precision within the perplexity budget (on validation windows): INT4 weights (GPTQ, g32)
        # with the most sensitive layers promoted to INT8; or per-tensor W8A8 with them kept in float
        # (run by name: ranked by block, each search took about 5 minutes on SmolLM2, past compare's 30-minute budget)
        Format("mixed-w4-w8", "mixed", {"optimize": "size"}, runtimes=_LMQ, family="int4-weight", default=False),
        Format(
            "mixed-w8a8",
            "mixed",
            {"base": "dynamic-int8", "optimize": "latency"},
            runtimes=_LMQ,
            family="int8",
            default=False,
        ),
        # the size search in int8 compute: W4A8 everywhere, the most sensitive layers W8A8 (MatMulNBits level 4)
        Format(
            "mixed-w4a8-w8a8",
            "mixed",
            {"optimize": "size", "int8_compute": True},
            runtimes=_LMQ,
            family="int8",
            default=False,
        ),
    )
}
_ORT = ("onnxruntime",)
# An ONNX file in: its graph quantized directly and run in ONNX Runtime. Fixed point (and, for a
# TensorFlow model, quantwise's own .tflite) is built on the graph imported into PyTorch
# (tasks.imported), measured against the imported FP32 model in torch: see runs_imported.
ONNX_FORMATS: dict[str, Format] = {
    f.id: f
    for f in (
        # FP32 in LiteRT: the import converted by litert-torch (TensorFlow's converter for a TF model)
        Format("fp32", None, runtimes=(*_ORT, "tflite", "torch"), family="fp32"),
        Format("fp16", "fp16", runtimes=_ORT, family="fp16"),
        Format("dynamic-int8", "dynamic-int8", runtimes=_ORT, family="int8"),
        *(
            Format(f"static-int8-{c}", "static-int8", {"calibration": c}, runtimes=_ORT, family="int8")
            for c in ("minmax", "percentile", "entropy", "mse")
        ),
        Format("weight-int8", "weight-int8", runtimes=_ORT, family="int8-weight"),
        Format("weight-int4-g32", "weight-int4", {"group_size": 32}, runtimes=_ORT, family="int4-weight"),
        Format(
            "weight-int4-g32-gptq",
            "weight-int4",
            {"group_size": 32, "method": "gptq"},
            runtimes=_ORT,
            family="int4-weight",
        ),
        # static INT8 with the most sensitive nodes kept in float, searched in ONNX Runtime on the calibration split
        Format("mixed", "mixed", runtimes=_ORT, family="int8"),
        Format("fixed-point", "fixed-point", runtimes=("integer",), family="fixed-point"),
        # quantization-aware training of the imported layers on the calibration split, then run in ONNX Runtime
        Format("qat-w8a8", "qat-w8a8", runtimes=_ORT, family="int8"),
        # quantwise's own full-integer .tflite of the import (its scales in the file), run in LiteRT
        Format("static-int8-full", "static-int8", {"quantize_outputs": True}, runtimes=("tflite",), family="int8"),
    )
}
# A TensorFlow model: quantwise's ONNX formats (through tf2onnx) and TensorFlow's own TFLiteConverter
# formats in LiteRT (the converter chooses their scales; its FP32 is the LiteRT baseline).
TF_FORMATS: dict[str, Format] = {
    **ONNX_FORMATS,
    **{
        f"tflite-{m}": Format(f"tflite-{m}", "tflite-converter", {"mode": m}, runtimes=("tflite",), family=fam)
        for m, fam in (("dynamic-range", "int8"), ("full-int8", "int8"), ("float16", "fp16"), ("16x8", "int8"))
    },
}
REGISTRIES = {
    "classification": FORMATS,
    "causal-lm": LLM_FORMATS,
    "onnx-graph": ONNX_FORMATS,
    "tf-graph": TF_FORMATS,
}
GRAPH_KINDS = ("onnx-graph", "tf-graph")  # tasks whose model is an ONNX graph (OnnxGraphModule)


def runs_imported(kind: str | None, fmt: Format, runtime: str) -> bool:
    """Whether this trial of a graph task runs on the graph imported into PyTorch: every runtime
    but ONNX Runtime, except LiteRT running a TensorFlow model's own converter (its FP32 and
    formats); and QAT in every runtime (it trains the imported layers)."""
    if kind not in GRAPH_KINDS:
        return False
    if fmt.trains:
        return True
    if runtime == "onnxruntime":
        return False
    return not (kind == "tf-graph" and runtime == "tflite" and fmt.recipe in (None, "tflite-converter"))


def trial_task(task: Task, fmt: Format, runtime: str) -> Task:
    """The task a trial runs on: a graph task's PyTorch import where :func:`runs_imported` says so."""
    if runs_imported(task.info.get("kind"), fmt, runtime):
        from quantwise.tasks.imported import imported_task

        return imported_task(task)
    return task


def task_for_recipe(task: Task, recipe: Recipe | None, runtime: str) -> Task:
    """``quantize``/``evaluate``'s task for one recipe (None: FP32) in one runtime: a graph task's
    PyTorch import wherever compare's trial of the same recipe would use it."""
    return trial_task(task, Format("cli", recipe.name if recipe is not None else None), runtime)


def formats_for(kind: str | None) -> dict[str, Format]:
    """The format registry for a task kind (``task.info["kind"]``; classification by default)."""
    return REGISTRIES.get(kind or "classification", FORMATS)


def select_formats(formats: str | None, runtimes: str | None, kind: str | None = None) -> list[tuple[Format, str]]:
    """``(format, runtime)`` pairs to run, from comma-separated ``--formats``/``--runtimes`` (None: all).

    A name selects that format; a name that is no format's id selects every format it prefixes
    (``static-int8`` selects every calibration). FP32 is always
    included as the baseline.
    """
    from quantwise.runtime.registry import RUNTIMES

    registry = formats_for(kind)
    if formats and kind is None:  # names checked before the task is loaded: any registry's
        registry = {**TF_FORMATS, **LLM_FORMATS, **FORMATS}

    rts = [r.strip() for r in runtimes.split(",")] if runtimes else list(RUNTIMES)
    for r in rts:
        if r not in RUNTIMES:
            raise UserError(f"unknown runtime {r!r} in --runtimes: choose from {', '.join(RUNTIMES)}")
    for r in list(rts):
        missing = RUNTIMES[r].available()
        if missing and runtimes:  # asked for by name: say what to install
            raise UserError(missing)
        if missing:
            rts.remove(r)  # the default set: run what is installed
    chosen: list[Format] = []
    if formats:
        for name in (n.strip() for n in formats.split(",")):
            hits = (
                [registry[name]] if name in registry else [f for f in registry.values() if f.id.startswith(name + "-")]
            )
            if not hits:
                raise UserError(f"unknown format {name!r} in --formats: choose from {', '.join(registry)}")
            chosen += [h for h in hits if h not in chosen]
        if registry["fp32"] not in chosen:
            chosen.insert(0, registry["fp32"])
    else:
        chosen = [f for f in registry.values() if f.default]
    pairs = [(f, r) for f in chosen for r in rts if r in f.runtimes]
    for base in dict.fromkeys(RUNTIMES[r].baseline for r in rts):  # e.g. torch-int8's speedups are against torch FP32
        if base not in rts and registry["fp32"] in chosen and (registry["fp32"], base) not in pairs:
            pairs.insert(0, (registry["fp32"], base))
    return pairs
