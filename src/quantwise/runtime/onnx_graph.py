"""Lower a QuantizedModel of an ONNX graph back into an ONNX file ONNX Runtime runs.

Reads the QuantizedModel, never re-derives it: each quantized node gets

- static: ``QuantizeLinear -> DequantizeLinear`` on its input (and output, after a fused
  Relu/Clip), int8 weights and the int32 bias behind ``DequantizeLinear`` (ONNX Runtime fuses
  the pattern into QLinearConv / QLinearMatMul / MatMulIntegerToFloat);
- dynamic: ``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(w_scale) -> Mul(a_scale) [-> Add(bias)]``;
- weight-only: ``com.microsoft::MatMulNBits`` for blocked or 4-bit weights, else int8 weights
  behind ``DequantizeLinear``;
- fp16: the whole graph in half precision with float32 inputs and outputs (ONNX Runtime's own
  ``float16`` converter).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantwise.numerics import get_qtype
from quantwise.numerics.granularity import PerGroup
from quantwise.numerics.packing import nbits_block_ok, pack_matmul_nbits
from quantwise.onnxmodel import HeavyNode, OnnxGraphModule, consumers, gather_tables, heavy_nodes
from quantwise.quantized import ActGranularity, ActQuant, LayerQuant, QuantizedModel

_NP = {"int8": np.int8, "uint8": np.uint8}


class _Graph:
    """A graph being rewritten: adds initializers and nodes under unique names."""

    def __init__(self, proto: Any) -> None:
        self.proto = proto
        self.g = proto.graph
        self.taken = {t.name for t in self.g.initializer} | {o for n in self.g.node for o in n.output}
        self.taken |= {i.name for i in self.g.input}

    def name(self, base: str) -> str:
        n, i = base, 0
        while n in self.taken:
            i += 1
            n = f"{base}_{i}"
        self.taken.add(n)
        return n

    def const(self, base: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        n = self.name(base)
        self.g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), n))
        return n

    def node(self, op: str, inputs: list[str], base: str, n_out: int = 1, domain: str = "", **attrs: Any) -> list[str]:
        from onnx import helper

        outs = [self.name(f"{base}_{op}_{i}" if n_out > 1 else f"{base}_{op}") for i in range(n_out)]
        self.g.node.append(helper.make_node(op, inputs, outs, name=self.name(f"{base}/{op}"), domain=domain, **attrs))
        return outs


def _onnx_weight(h: HeavyNode, q: torch.Tensor) -> tuple[np.ndarray, int]:
    """Integer weight back in the node's stored layout, and the output-channel axis there."""
    if h.op == "Conv" or (h.op == "Gemm" and h.transposed):
        return q.numpy(), 0
    return q.t().contiguous().numpy(), 1


def _dq_weight(gr: _Graph, h: HeavyNode, lq: LayerQuant) -> str:
    w, axis = _onnx_weight(h, lq.weight_q)
    dt = _NP[lq.weight_qtype]
    qn = gr.const(f"{h.weight}_quantized", w.astype(dt))
    sn = gr.const(f"{h.weight}_scale", lq.weight_scale.numpy().astype(np.float32))
    zn = gr.const(f"{h.weight}_zero_point", lq.weight_zero_point.numpy().astype(dt))
    attrs: dict[str, Any] = {"axis": axis} if lq.weight_scale.dim() == 1 else {}
    return gr.node("DequantizeLinear", [qn, sn, zn], h.weight, **attrs)[0]


def _qdq(gr: _Graph, tensor: str, a: ActQuant, done: dict[tuple[str, float, int], str]) -> str:
    key = (tensor, a.scale, a.zero_point)
    if key not in done:
        dt = _NP[a.qtype]
        s = gr.const(f"{tensor}_scale", np.array(a.scale, dtype=np.float32))
        z = gr.const(f"{tensor}_zero_point", np.array(a.zero_point, dtype=dt))
        q = gr.node("QuantizeLinear", [tensor, s, z], tensor)[0]
        done[key] = gr.node("DequantizeLinear", [q, s, z], tensor)[0]
    return done[key]


def _static(gr: _Graph, node: Any, h: HeavyNode, lq: LayerQuant, done: dict[tuple[str, float, int], str]) -> None:
    assert lq.input is not None
    node.input[0] = _qdq(gr, h.x, lq.input, done)
    node.input[1] = _dq_weight(gr, h, lq)
    if h.bias is not None and lq.bias_q is not None and lq.bias_scale is not None:
        b = gr.const(f"{h.bias}_quantized", lq.bias_q.numpy().astype(np.int32))
        bs = gr.const(f"{h.bias}_scale", lq.bias_scale.numpy().astype(np.float32))
        bz = gr.const(f"{h.bias}_zero_point", np.zeros(lq.bias_q.shape, dtype=np.int32))
        dq = gr.node("DequantizeLinear", [b, bs, bz], h.bias, axis=0)[0]
        if h.op == "MatMul":  # the Add after it adds the int32 bias (ONNX Runtime fuses MatMul+Add to QGemm)
            add = consumers(gr.proto)[h.output][0]
            add.input[list(add.input).index(h.bias)] = dq
        else:
            node.input[2] = dq


def _reroute_output(gr: _Graph, tensor: str, a: ActQuant, done: dict[tuple[str, float, int], str]) -> None:
    """Every reader of ``tensor`` reads it quantized (the Q node itself reads the original)."""
    readers = [n for n in gr.g.node if tensor in _reads(n)]  # subgraphs (If/Loop) that read it too
    dq = _qdq(gr, tensor, a, done)
    q_node = next(n for n in gr.g.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    for r in readers:
        if r is not q_node:
            _rename_reads(r, tensor, dq)


def _rename_reads(node: Any, old: str, new: str) -> None:
    """Make ``node`` (and the nodes of its subgraphs) read ``new`` where they read ``old``."""
    for i, t in enumerate(node.input):
        if t == old:
            node.input[i] = new
    for a in node.attribute:
        for sub in [a.g] if a.HasField("g") else list(a.graphs):
            for n in sub.node:
                _rename_reads(n, old, new)


def _bounds(gr: _Graph, act: Any) -> tuple[float, float] | None:
    """A Relu's or Clip's output range, when it is constant."""
    from onnx import helper, numpy_helper

    if act.op_type == "Relu":
        return 0.0, float("inf")
    inits = {t.name: t for t in gr.g.initializer}
    attrs = {a.name: helper.get_attribute_value(a) for a in act.attribute}
    lo, hi = float(attrs.get("min", -np.inf)), float(attrs.get("max", np.inf))  # opset < 11
    for i, default in ((1, -np.inf), (2, np.inf)):
        if len(act.input) > i and act.input[i]:
            if act.input[i] not in inits:
                return None
            v = float(numpy_helper.to_array(inits[act.input[i]]).reshape(()))
            lo, hi = (v, hi) if i == 1 else (lo, v)
        elif len(act.input) > 1:
            lo, hi = (default, hi) if i == 1 else (lo, default)
    return lo, hi


def _drop_redundant_activation(gr: _Graph, act: Any, conv_out: str, a: ActQuant) -> None:
    """Remove a Relu/Clip whose bounds quantize to the ends of the QuantizeLinear after it: the Q
    saturates there anyway, so Q(act(x)) == Q(x) exactly. ONNX Runtime then fuses the convolution with its
    Q/DQ (it removes a Relu itself, and left a depthwise convolution's Clip in float)."""
    bounds = _bounds(gr, act)
    if bounds is None or act.output[0] in {o.name for o in gr.g.output}:
        return
    qt = get_qtype(a.qtype)

    def q(v: float) -> float:  # QuantizeLinear's rounding, in float32 as ONNX Runtime computes it
        return float(np.round(np.float32(v) / np.float32(a.scale))) + a.zero_point if np.isfinite(v) else v

    # Q is monotonic and saturating: Q(clip(x)) == Q(x) exactly when Q(min) and Q(max) are the ends
    if not (q(bounds[0]) <= qt.qmin and q(bounds[1]) >= qt.qmax):
        return
    readers = [n for n in gr.g.node if act.output[0] in _reads(n)]
    if len(readers) != 1 or readers[0].op_type != "QuantizeLinear":
        return
    readers[0].input[0] = conv_out
    gr.g.node.remove(act)


def _dynamic(gr: _Graph, node: Any, h: HeavyNode, lq: LayerQuant) -> list[Any]:
    base = node.name
    xq, xs, xz = gr.node("DynamicQuantizeLinear", [h.x], base, n_out=3)
    wt = gr.const(f"{h.weight}_quantized", lq.weight_q.t().contiguous().numpy().astype(np.int8))  # (K, N)
    wz = gr.const(f"{h.weight}_zero_point", lq.weight_zero_point.numpy().astype(np.int8).reshape(lq.weight_scale.shape))
    acc = gr.node("MatMulInteger", [xq, wt, xz, wz], base)[0]
    f = gr.node("Cast", [acc], base, to=1)[0]
    ws = gr.const(f"{h.weight}_scale", lq.weight_scale.numpy().astype(np.float32))
    # Cast(acc) * (x_scale * w_scale): the pattern ONNX Runtime fuses into DynamicQuantizeMatMul
    # (scaling by one scale, then the other, is left unfused and ran slower than FP32 at batch 1)
    y = gr.node("Mul", [f, gr.node("Mul", [xs, ws], base)[0]], base)[0]
    return _finish(gr, node, h, y)


def _finish(gr: _Graph, node: Any, h: HeavyNode, y: str) -> list[Any]:
    """Add the float bias (if any) and write the result under the node's own output name."""
    from onnx import helper

    last = gr.g.node[-1]
    if h.bias is not None and h.op != "MatMul":  # a MatMul's bias stays in the Add after it
        last = helper.make_node("Add", [y, h.bias], [h.output], name=gr.name(f"{node.name}/bias"))
        gr.g.node.append(last)
    else:
        last.output[0] = h.output
    return [node]


def _embedding(gr: _Graph, node: Any, h: HeavyNode, lq: LayerQuant) -> list[Any]:
    """Gather int8 rows and their scales, then dequantize only the rows looked up."""
    from onnx import helper

    assert not lq.weight_zero_point.any(), "embedding tables are quantized symmetrically"
    q = gr.const(f"{h.weight}_quantized", lq.weight_q.numpy().astype(np.int8))
    s = gr.const(f"{h.weight}_scale", lq.weight_scale.to(torch.float32).reshape(-1, 1).numpy())
    rows = gr.node("Cast", [gr.node("Gather", [q, h.x], node.name)[0]], node.name, to=1)[0]
    scale = gr.node("Gather", [s, h.x], node.name)[0]
    gr.g.node.append(helper.make_node("Mul", [rows, scale], [h.output], name=gr.name(f"{node.name}/dequantize")))
    return [node]


def _weight_only(gr: _Graph, node: Any, h: HeavyNode, lq: LayerQuant) -> list[Any]:
    qt = get_qtype(lq.weight_qtype)
    n, k = lq.weight_q.shape[0], lq.weight_q[0].numel()
    g = lq.weight_granularity
    block = g.size if isinstance(g, PerGroup) else k
    if h.op != "Conv" and (isinstance(g, PerGroup) or qt.bits == 4) and nbits_block_ok(block, k):
        packed, zp = pack_matmul_nbits(lq.weight_q, lq.weight_zero_point, qt.bits, qt.signed, block)
        b = gr.const(f"{h.weight}_packed", packed.numpy())
        s = gr.const(f"{h.weight}_scales", lq.weight_scale.to(torch.float32).reshape(-1).numpy())
        z = gr.const(f"{h.weight}_zero_points", zp.numpy())
        level = 4 if lq.dynamic_granularity == ActGranularity.PER_BLOCK else 0  # int8 compute
        y = gr.node(
            "MatMulNBits",
            [h.x, b, s, z],
            node.name,
            domain="com.microsoft",
            K=k,
            N=n,
            bits=qt.bits,
            block_size=block,
            accuracy_level=level,
        )[0]
        return _finish(gr, node, h, y)
    if lq.dynamic_granularity == ActGranularity.PER_BLOCK:
        raise ValueError(f"{h.name}: int8 compute needs MatMulNBits blocks (a group size of 16-256 dividing {k})")
    if isinstance(g, PerGroup) or lq.weight_qtype not in _NP:
        raise ValueError(f"{h.name}: {lq.weight_qtype} weights with block {block} have no ONNX Runtime kernel")
    node.input[1] = _dq_weight(gr, h, lq)
    return []


def lower_graph(qm: QuantizedModel, gm: OnnxGraphModule) -> Any:
    """The quantized ONNX model (a new proto; ``gm`` is not modified)."""
    proto = copy.deepcopy(gm.proto)
    if qm.cast == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        return convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=True)
    gr = _Graph(proto)
    read_before = _graph_reads(proto.graph)
    by_name = {h.name: h for h in heavy_nodes(proto)[0] + gather_tables(proto)}
    nodes = {n.name: n for n in proto.graph.node}
    done: dict[tuple[str, float, int], str] = {}
    replaced: list[Any] = []
    outputs: list[tuple[str, ActQuant]] = []
    for name, lq in qm.layers.items():
        h, node = by_name[name], nodes[name]
        if lq.kind == "embedding":
            replaced += _embedding(gr, node, h, lq)
        elif lq.mode == "static":
            _static(gr, node, h, lq, done)
            if lq.output is not None:
                fused = nodes[lq.fused_relu].output[0] if lq.fused_relu else h.output
                outputs.append((fused, lq.output))
        elif lq.mode == "dynamic":
            replaced += _dynamic(gr, node, h, lq)
        else:
            replaced += _weight_only(gr, node, h, lq)
    for tensor, a in outputs:
        _reroute_output(gr, tensor, a, done)
    for name, lq in qm.layers.items():
        if lq.mode == "static" and lq.fused_relu and lq.output is not None:
            _drop_redundant_activation(gr, nodes[lq.fused_relu], by_name[name].output, lq.output)
    for node in replaced:
        proto.graph.node.remove(node)
    if not any(o.domain == "com.microsoft" for o in proto.opset_import) and any(
        n.domain == "com.microsoft" for n in proto.graph.node
    ):
        from onnx import helper

        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    _sort(proto)
    _drop_replaced(proto, read_before)
    return proto


def _graph_reads(g: Any) -> set[str]:
    reads: set[str] = {o.name for o in g.output}
    for n in g.node:
        reads |= _reads(n)
    return reads


def _drop_replaced(proto: Any, read_before: set[str]) -> None:
    """Remove the float weights and biases the quantized ones replaced: initializers the original
    graph read and the lowered one no longer does (anything else the file holds stays as it was)."""
    now = _graph_reads(proto.graph) | {i.name for i in proto.graph.input}  # an input's default stays
    gone = [t for t in proto.graph.initializer if t.name in read_before and t.name not in now]
    for t in gone:
        proto.graph.initializer.remove(t)


def _sort(proto: Any) -> None:
    """Topologically order the main graph's nodes (new nodes were appended at the end)."""
    g = proto.graph
    ready = {t.name for t in g.initializer} | {i.name for i in g.input} | {""}
    pending, order = list(g.node), []
    while pending:
        rest = []
        for n in pending:
            if all(t in ready for t in _reads(n)):
                order.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # a cycle cannot happen; keep what is left in its order
            order += rest
            break
        pending = rest
    del g.node[:]
    g.node.extend(order)


def _reads(node: Any) -> set[str]:
    """What a node reads: its inputs and the outer tensors its subgraphs (If/Loop/Scan) use."""
    reads = set(node.input)
    for a in node.attribute:
        for sub in [a.g] if a.HasField("g") else list(a.graphs):
            made = {t.name for t in sub.initializer} | {i.name for i in sub.input}
            for n in sub.node:
                reads |= _reads(n) - made
                made |= set(n.output)
    return reads


def write_graph(qm: QuantizedModel | None, gm: OnnxGraphModule, path: Path) -> Path:
    """Write the lowered (or, for None, the FP32) graph to ``path`` atomically; large models keep
    their weights in ``path.data`` next to it."""
    import onnx

    proto = gm.proto if qm is None else lower_graph(qm, gm)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    large = proto.ByteSize() > 1_800_000_000
    if large:
        onnx.save(proto, str(tmp), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path


class GraphVariant(nn.Module):
    """``qm``'s graph with only ``layers`` quantized, run in ONNX Runtime as a callable module (a
    context manager: its session and temporary file go on exit). Searches and explain use it."""

    def __init__(self, qm: QuantizedModel, layers: dict[str, LayerQuant], gm: OnnxGraphModule) -> None:
        from quantwise.runtime.onnxrt import OrtRunner

        super().__init__()
        self._dir = tempfile.TemporaryDirectory(prefix="quantwise-graph-")
        path = write_graph(dataclasses.replace(qm, layers=layers), gm, Path(self._dir.name) / "model.onnx")
        self.runner = OrtRunner(path, gm.input_names)

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.runner.run(batch), dtype=np.float32))

    def __enter__(self) -> GraphVariant:
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.close()
        self._dir.cleanup()


def graph_outputs(
    qm: QuantizedModel, layers: dict[str, LayerQuant], gm: OnnxGraphModule, batches: Sequence[tuple[torch.Tensor, ...]]
) -> np.ndarray:
    """The scored outputs over ``batches`` of ``qm``'s graph with only ``layers`` quantized."""
    with GraphVariant(qm, layers, gm) as variant:
        return np.concatenate([variant.runner.run(b) for b in batches])
