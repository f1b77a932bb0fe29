"""``(ONNX graph, recipe, calibration) -> QuantizedModel``, keyed by graph node names.

Calibration runs the FP32 graph in ONNX Runtime with the tensors it needs exposed as extra
outputs; the observers, scales, rounding and GPTQ are the same pure functions the PyTorch path
uses. Weights are held in PyTorch's layout (``(N, K)`` for MatMul/Gemm, ``(O, I/g, ...)`` for
Conv) so every quantity means what it means for a PyTorch layer; the ONNX lowering
(:mod:`quantwise.runtime.onnx_graph`) transposes back.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from fnmatch import fnmatch
from typing import Any

import numpy as np
import torch

from quantwise.calibrate.observers import make_observer
from quantwise.errors import Unsupported, UserError
from quantwise.numerics import quantize_bias, quantize_tensor
from quantwise.numerics.granularity import PerChannel, PerGroup, PerTensor
from quantwise.numerics.qtypes import INT4, INT8, UINT4, UINT8
from quantwise.onnxmodel import HeavyNode, OnnxGraphModule, consumers, gather_tables, heavy_nodes, session
from quantwise.progress import progress_iter
from quantwise.quantized import ActQuant, LayerKind, LayerQuant, QuantizedModel, QuantMode
from quantwise.recipes import (
    CastRecipe,
    DynamicInt8Recipe,
    Recipe,
    StaticInt8Recipe,
    TFLiteConverterRecipe,
    WeightOnlyRecipe,
)
from quantwise.transform.gptq import gptq_quantize, hessian_update
from quantwise.transform.schemes import reduce_range_info

Batch = tuple[torch.Tensor, ...]
FUSABLE = ("Relu", "Clip")  # activations ONNX Runtime folds into a quantized Conv/MatMul's output


def weight_torch_layout(gm: OnnxGraphModule, h: HeavyNode) -> torch.Tensor:
    """The node's float weight as PyTorch holds it: ``(N, K)`` for MatMul/Gemm, as stored for Conv."""
    from onnx import numpy_helper

    init = next(t for t in gm.proto.graph.initializer if t.name == h.weight)
    w = torch.from_numpy(numpy_helper.to_array(init).astype(np.float32).copy())
    return w.t().contiguous() if h.op == "MatMul" or (h.op == "Gemm" and not h.transposed) else w


def float_initializer(gm: OnnxGraphModule, name: str) -> torch.Tensor:
    from onnx import numpy_helper

    init = next(t for t in gm.proto.graph.initializer if t.name == name)
    return torch.from_numpy(numpy_helper.to_array(init).astype(np.float32).copy())


def feed_of(gm: OnnxGraphModule, batch: Batch) -> dict[str, np.ndarray]:
    return {n: t.numpy() for n, t in zip(gm.input_names, batch)}


def observe_tensors(
    gm: OnnxGraphModule,
    tensors: Sequence[str],
    calib: Sequence[Batch],
    sink: Callable[[str, np.ndarray], None],
    label: str,
) -> None:
    """Run the FP32 graph on every calibration batch with ``tensors`` exposed; ``sink(name, array)`` each."""
    from onnx import TensorProto, helper

    probe = copy.deepcopy(gm.proto)
    outputs = {o.name for o in probe.graph.output}
    for t in tensors:
        if t not in outputs:
            probe.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    sess = session(probe.SerializeToString(), optimize=False)  # optimization may fuse a probed tensor away
    names = list(tensors)
    for b in progress_iter(calib, label):
        values = sess.run(names, feed_of(gm, b))
        for n, v in zip(names, values):
            sink(n, v)


def select_nodes(gm: OnnxGraphModule, recipe: Recipe) -> tuple[list[HeavyNode], dict[str, str]]:
    """The heavy nodes ``recipe`` covers (include/exclude patterns on node names), and the rest with reasons."""
    nodes, skipped = heavy_nodes(gm.proto)
    tables = gather_tables(gm.proto) if getattr(recipe, "embeddings", False) else []
    for pat in (*recipe.include, *recipe.exclude):
        if not any(fnmatch(n.name, pat) for n in nodes + tables):
            raise UserError(
                f"pattern {pat!r} matches no quantizable node of the ONNX graph: node names look like "
                f"{', '.join(n.name for n in nodes[:3])}"
            )
    chosen = []
    for n in nodes:
        if recipe.include and not any(fnmatch(n.name, p) for p in recipe.include):
            skipped[n.name] = "not matched by the recipe's include patterns"
        elif any(fnmatch(n.name, p) for p in recipe.exclude):
            skipped[n.name] = "excluded by the recipe"
        else:
            chosen.append(n)
    for t in tables:  # embedding tables: listed as skipped by heavy_nodes, quantized by _embeddings
        if recipe.include and not any(fnmatch(t.name, p) for p in recipe.include):
            skipped[t.name] = "not matched by the recipe's include patterns"
        elif any(fnmatch(t.name, p) for p in recipe.exclude):
            skipped[t.name] = "excluded by the recipe"
    return chosen, skipped


def fused_output(gm: OnnxGraphModule, h: HeavyNode) -> tuple[str, str | None]:
    """Where a node's output is quantized: after a Relu/Clip that is its only reader, else its own output."""
    readers = consumers(gm.proto).get(h.output, [])
    if len(readers) == 1 and readers[0].op_type in FUSABLE and h.output not in {o.name for o in gm.proto.graph.output}:
        return readers[0].output[0], readers[0].name
    return h.output, None


def _act(rng: tuple[float, float], symmetric: bool) -> ActQuant:
    from quantwise.numerics import choose_qparams

    qt = INT8 if symmetric else UINT8
    s, z = choose_qparams(torch.tensor(rng[0]), torch.tensor(rng[1]), qt, symmetric)
    return ActQuant(float(s), int(z), qt.name)


def _static(
    gm: OnnxGraphModule, recipe: StaticInt8Recipe, nodes: list[HeavyNode], calib: Sequence[Batch], seven: bool
) -> dict[str, LayerQuant]:
    if recipe.weight_bits != 8 or recipe.activation_bits != 8 or recipe.smoothquant:
        raise Unsupported(
            "on an ONNX graph static INT8 is built with 8-bit weights and activations, without SmoothQuant"
        )
    kw = {"percentile": recipe.percentile} if recipe.calibration == "percentile" else {}
    outs = {h.name: fused_output(gm, h) for h in nodes if recipe.quantize_outputs or h.op == "Conv"}
    watched = list(dict.fromkeys([h.x for h in nodes] + [t for t, _ in outs.values()]))
    obs = {t: make_observer(recipe.calibration, **kw) for t in watched}
    observe_tensors(
        gm,
        watched,
        calib,
        lambda n, v: obs[n].observe(torch.from_numpy(np.asarray(v, np.float32))),
        f"calibrating ({recipe.calibration})",
    )
    layers = {}
    for h in nodes:
        gran = PerChannel(0) if recipe.per_channel else PerTensor()
        q, s, z = quantize_tensor(weight_torch_layout(gm, h), INT8, gran, True, reduce_range=seven)
        lq = LayerQuant(LayerKind(h.kind), QuantMode.STATIC, q, s, z, INT8.name, gran)
        lq.input = _act(obs[h.x].range(), recipe.symmetric_activations)
        if h.name in outs:
            lq.output = _act(obs[outs[h.name][0]].range(), recipe.symmetric_activations)
            lq.fused_relu = outs[h.name][1]
        bias = float_initializer(gm, h.bias).reshape(-1) if h.bias else torch.zeros(q.shape[0])
        lq.bias_q, lq.bias_scale = quantize_bias(bias, lq.input.scale, lq.weight_scale)
        layers[h.name] = lq
    return layers


def _dynamic(
    gm: OnnxGraphModule, recipe: DynamicInt8Recipe, nodes: list[HeavyNode], skipped: dict[str, str], seven: bool
) -> dict[str, LayerQuant]:
    if recipe.smoothquant or recipe.rotate or recipe.activations != "per-tensor":
        raise Unsupported(
            "on an ONNX graph dynamic INT8 quantizes activations per tensor, without SmoothQuant or rotation"
        )
    layers = {}
    for h in nodes:
        if h.op == "Conv":
            skipped[h.name] = "dynamic INT8 covers MatMul/Gemm; use static-int8 for convolutions"
            continue
        gran = PerChannel(0) if recipe.per_channel else PerTensor()
        q, s, z = quantize_tensor(weight_torch_layout(gm, h), INT8, gran, True, reduce_range=seven)
        layers[h.name] = LayerQuant(LayerKind(h.kind), QuantMode.DYNAMIC, q, s, z, INT8.name, gran)
    return layers


def _weight_only(
    gm: OnnxGraphModule,
    recipe: WeightOnlyRecipe,
    nodes: list[HeavyNode],
    skipped: dict[str, str],
    calib: Sequence[Batch],
) -> tuple[dict[str, LayerQuant], dict[str, Any]]:
    if recipe.method not in ("rtn", "gptq") or recipe.kv_cache != "float" or recipe.head_bits or recipe.rotate:
        raise Unsupported(
            f"on an ONNX graph weight-only quantization is round-to-nearest or GPTQ (asked: method {recipe.method}"
            f"{', kv_cache' if recipe.kv_cache != 'float' else ''}{', head_bits' if recipe.head_bits else ''}"
            f"{', rotate' if recipe.rotate else ''})"
        )
    qtype = (INT8 if recipe.symmetric else UINT8) if recipe.bits == 8 else (INT4 if recipe.symmetric else UINT4)
    todo: dict[str, tuple[HeavyNode, int]] = {}
    for h in nodes:
        w = weight_torch_layout(gm, h)
        k = w[0].numel()
        g = recipe.group_size
        if g and h.op == "Conv":
            skipped[h.name] = (
                "per-group scales apply to MatMul/Gemm; Conv kept in float (use group_size=0 for per-channel)"
            )
            continue
        if g and k % g:
            fits = [f for f in (128, 64, 32, 16) if f < g and k % f == 0]
            if not fits:
                skipped[h.name] = f"input size {k} is not a multiple of group size {g} (nor of 16)"
                continue
            g = fits[0]
        todo[h.name] = (h, g)
    hess: dict[str, tuple[torch.Tensor, int]] = {}
    if recipe.method == "gptq":
        inputs = {h.x for h, _ in todo.values() if h.op != "Conv"}
        sizes = {h.x: weight_torch_layout(gm, h).shape[1] for h, _ in todo.values() if h.op != "Conv"}
        state = {x: (torch.zeros(sizes[x], sizes[x], dtype=torch.float64), 0) for x in inputs}

        def add(name: str, v: np.ndarray) -> None:
            state[name] = hessian_update(*state[name], torch.from_numpy(np.asarray(v, np.float32)))

        observe_tensors(gm, sorted(inputs), calib, add, "GPTQ: collecting Hessians")
        hess = {n: state[h.x] for n, (h, _) in todo.items() if h.op != "Conv"}
    layers = {}
    for name, (h, g) in progress_iter(list(todo.items()), "quantizing weights"):
        gran = PerGroup(g) if g else PerChannel(0)
        full = recipe.full_range and recipe.bits == 4
        w = weight_torch_layout(gm, h)
        if name in hess:
            q, s, z = gptq_quantize(w, hess[name][0], qtype, g, recipe.symmetric, recipe.gptq_damp, full_range=full)
        else:
            q, s, z = quantize_tensor(w, qtype, gran, recipe.symmetric, fp16_scale=recipe.fp16_scales, full_range=full)
        layers[name] = LayerQuant(LayerKind(h.kind), QuantMode.WEIGHT_ONLY, q, s, z, qtype.name, gran)
    info: dict[str, Any] = {"gptq_order": "one pass over the graph's inputs"} if hess else {}
    if any(g != recipe.group_size for _, g in todo.values()):
        info["group_size_fallback"] = {n: g for n, (_, g) in todo.items() if g != recipe.group_size}
    return layers, info


def _embeddings(
    gm: OnnxGraphModule, layers: dict[str, LayerQuant], skipped: dict[str, str], info: dict[str, Any]
) -> None:
    """Embedding tables (Gather of a stored table) as int8 with one symmetric scale per row, as the
    PyTorch route stores them; int4 tables are not built for ONNX graphs (said in ``info``)."""
    tables = [g for g in gather_tables(gm.proto) if skipped.get(g.name, "").startswith("Gather (embedding table)")]
    for g in tables:
        w = float_initializer(gm, g.weight)
        q, s, z = quantize_tensor(w, INT8, PerChannel(0), True)
        layers[g.name] = LayerQuant(LayerKind.EMBEDDING, QuantMode.WEIGHT_ONLY, q, s, z, INT8.name, PerChannel(0))
        del skipped[g.name]
    if tables:
        info["embedding_tables"] = "int8, one scale per row (ONNX graphs: int8 tables only)"


def quantize_onnx(gm: OnnxGraphModule, recipe: Recipe, calib: Sequence[Batch]) -> QuantizedModel:
    """Quantize an ONNX graph as ``recipe`` says; the float graph is read, never modified."""
    t0 = time.perf_counter()
    info: dict[str, Any] = {"source": str(gm.path)}
    if isinstance(recipe, CastRecipe):
        if recipe.dtype != "fp16":
            raise Unsupported(f"{recipe.dtype} has no ONNX Runtime CPU kernels: an ONNX model is cast to fp16 only")
        qm = QuantizedModel(model=gm, recipe=recipe, cast="fp16", info=info)
        qm.info["time_to_quantize_s"] = time.perf_counter() - t0
        return qm
    if isinstance(recipe, TFLiteConverterRecipe):
        source = getattr(gm, "tf_source", None)
        if not source:
            raise Unsupported(
                f"{recipe.name} converts a TensorFlow model: this ONNX file has none (pass the SavedModel or .keras)"
            )
        info.update(tf_source=source, converter=f"TFLiteConverter {recipe.mode}: the converter chooses every scale")
        qm = QuantizedModel(model=gm, recipe=recipe, info=info)
        qm.info["time_to_quantize_s"] = time.perf_counter() - t0
        return qm
    nodes, skipped = select_nodes(gm, recipe)
    if isinstance(recipe, StaticInt8Recipe):
        layers = _static(gm, recipe, nodes, calib, reduce_range_info(recipe, info))
        info["calibration_batches"] = len(calib)
    elif isinstance(recipe, DynamicInt8Recipe):
        layers = _dynamic(gm, recipe, nodes, skipped, reduce_range_info(recipe, info))
    elif isinstance(recipe, WeightOnlyRecipe):
        layers, extra = _weight_only(gm, recipe, nodes, skipped, calib)
        info.update(extra)
    else:
        raise Unsupported(
            f"{recipe.name} is not built for ONNX graphs: use fp16, dynamic-int8, static-int8 or weight-int8/int4"
        )
    if getattr(recipe, "embeddings", False):
        _embeddings(gm, layers, skipped, info)
    if not layers:
        reasons = "; ".join(sorted(set(skipped.values()))[:3]) or "it has no MatMul, Gemm or Conv with a stored weight"
        raise Unsupported(
            f"{recipe.name} quantized no node of this ONNX graph ({reasons}): the result would be the FP32 model"
        )
    qm = QuantizedModel(model=gm, recipe=recipe, layers=layers, skipped=skipped, info=info)
    qm.info["time_to_quantize_s"] = time.perf_counter() - t0
    return qm
