"""An ONNX file as a model quantwise can take: loaded, checked, and its heavy nodes found.

The graph is quantized directly (:mod:`quantwise.transform.onnx_graph`) and run in ONNX Runtime
(:mod:`quantwise.runtime.onnx_graph`); it is never converted to PyTorch. :class:`OnnxGraphModule`
lets the rest of quantwise hold it where it holds a model: calling it runs the FP32 graph in
ONNX Runtime; it has no PyTorch layers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantwise.errors import UserError

HEAVY_OPS = ("MatMul", "Gemm", "Conv")
# weighted ops quantwise does not quantize: listed with the reason, never passed over in silence
UNHANDLED = {
    "LSTM": "recurrent layer",
    "GRU": "recurrent layer",
    "RNN": "recurrent layer",
    "ConvTranspose": "transposed convolution",
    "Gather": "embedding table",
    "Einsum": "einsum",
}
ALREADY_QUANTIZED = (
    "QuantizeLinear",
    "DequantizeLinear",
    "MatMulNBits",
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
)
ELEM_NUMPY = {
    1: np.float32,
    6: np.int32,
    7: np.int64,
    9: np.bool_,
    10: np.float16,
    11: np.float64,
    2: np.uint8,
    3: np.int8,
}


def load_onnx(path: str | os.PathLike[str]) -> Any:
    """Load and check an ONNX file; every problem is one :class:`UserError` naming it and the fix."""
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"ONNX model {p} does not exist: give the path of a .onnx file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise UserError(
            f"{p} is not a readable ONNX model ({type(e).__name__}): it is truncated or corrupt; export it again"
        ) from None
    if not model.graph.node:
        raise UserError(f"{p} holds no graph nodes: it is not an ONNX model; export it again")
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location" and not (p.parent / entry.value).is_file():
                raise UserError(
                    f"{p}: external data file {entry.value!r} (tensor {t.name}) is missing: keep it next to the .onnx file"
                )
    try:
        onnx.load_external_data_for_model(model, str(p.parent))
    except Exception as e:  # onnx raises plain errors for unreadable external data
        raise UserError(
            f"{p}: its external data cannot be read ({type(e).__name__}): keep the data files next to it"
        ) from None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 10:
        raise UserError(
            f"{p} uses ONNX opset {opset}: quantization needs opset 10 or later; re-export with a newer opset"
        )
    return model


def constants_to_initializers(model: Any) -> int:
    """Move the main graph's ``Constant`` tensors into initializers (in place; the file is not touched),
    so weights written either way are found. Returns how many moved."""
    from onnx import numpy_helper

    g = model.graph
    keep, moved = [], 0
    for node in g.node:
        attr = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and "value" in attr and len(node.output) == 1:
            arr = numpy_helper.to_array(attr["value"].t)
            g.initializer.append(numpy_helper.from_array(arr, node.output[0]))
            moved += 1
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    return moved


@dataclass(frozen=True)
class HeavyNode:
    """A MatMul/Gemm/Conv of the graph whose weight is an initializer.

    Attributes:
        name: the node's name (made unique when the file leaves it empty).
        op: ``MatMul``, ``Gemm`` or ``Conv``.
        x: the activation input tensor.
        weight: the weight initializer's name.
        bias: the bias initializer's name: Gemm's C or Conv's B; for a MatMul, the vector that
            the single Add reading its output adds (the Add stays in the graph); else None.
        transposed: the stored weight is ``(N, K)`` (Gemm ``transB=1``); MatMul stores ``(K, N)``.
        output: the node's output tensor.
    """

    name: str
    op: str
    x: str
    weight: str
    bias: str | None
    transposed: bool
    output: str

    @property
    def kind(self) -> str:
        return {"Conv": "conv2d", "Gather": "embedding"}.get(self.op, "linear")


def name_nodes(model: Any) -> None:
    """Give every unnamed main-graph node a unique name (``op_index``), in place."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def _inner_heavy(node: Any) -> dict[str, int]:
    """How many weighted ops of each type a node's subgraphs hold, at any depth."""
    count: dict[str, int] = {}
    for a in node.attribute:
        for sub in [a.g] if a.HasField("g") else list(a.graphs):
            for n in sub.node:
                if n.op_type in HEAVY_OPS or (n.op_type in UNHANDLED and n.op_type != "Gather"):
                    count[n.op_type] = count.get(n.op_type, 0) + 1
                for op, c in _inner_heavy(n).items():
                    count[op] = count.get(op, 0) + c
    return count


def heavy_nodes(model: Any) -> tuple[list[HeavyNode], dict[str, str]]:
    """The quantizable heavy nodes, and ``{node: reason}`` for every heavy node left in float."""
    from onnx import helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    readers = consumers(model)
    found: list[HeavyNode] = []
    skipped: dict[str, str] = {}
    for node in g.node:
        if node.op_type in ("If", "Loop", "Scan"):
            inner = _inner_heavy(node)
            if inner:
                what = ", ".join(f"{c} {op}" for op, c in sorted(inner.items()))
                skipped[node.name] = f"{what} inside a {node.op_type} subgraph kept in float"
            continue
        if node.op_type in ALREADY_QUANTIZED:
            raise UserError(
                f"the ONNX graph is already quantized (it has {node.op_type} node {node.name}): give the float model"
            )
        if node.op_type in UNHANDLED:
            big = [i for i in node.input if i in inits and len(inits[i].dims) >= 2 and inits[i].data_type == 1]
            if big:
                skipped[node.name] = f"{node.op_type} ({UNHANDLED[node.op_type]}) with stored weights kept in float"
            continue
        if node.op_type not in HEAVY_OPS or node.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = node.input[1] if len(node.input) > 1 else ""
        if w not in inits:
            skipped[node.name] = f"{node.op_type} of two activations (no weight initializer) kept in float"
            continue
        if inits[w].data_type != 1:
            skipped[node.name] = f"weight {w} is not float32 kept as it is"
            continue
        dims = len(inits[w].dims)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None and bias not in inits:
            skipped[node.name] = f"bias {bias} is computed, not stored; kept in float"
            continue
        if node.op_type == "MatMul" and dims != 2:
            skipped[node.name] = f"MatMul with a {dims}-D weight kept in float"
            continue
        if node.op_type == "Gemm" and (
            attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0
        ):
            skipped[node.name] = "Gemm with transA, alpha or beta kept in float"
            continue
        if node.op_type == "Gemm" and bias is not None and len(inits[bias].dims) != 1:
            skipped[node.name] = "Gemm whose bias C is not a vector kept in float"
            continue
        if node.op_type == "Conv" and dims not in (3, 4):
            skipped[node.name] = f"{dims - 2}-D convolution kept in float (1-D and 2-D are quantized)"
            continue
        if node.op_type == "MatMul":
            bias = _matmul_bias(node, inits, readers.get(node.output[0], []), int(inits[w].dims[1]))
        found.append(
            HeavyNode(node.name, node.op_type, node.input[0], w, bias, bool(attrs.get("transB", 0)), node.output[0])
        )
    return found, skipped


def _matmul_bias(node: Any, inits: dict[str, Any], readers: list[Any], n: int) -> str | None:
    """The stored float vector of length N (or row of shape (1, N)) that the one Add reading a MatMul's
    output adds; quantized as an int32 vector, which broadcasts over the output's rows the same way."""
    if len(readers) != 1 or readers[0].op_type != "Add":
        return None
    other = [t for t in readers[0].input if t != node.output[0]]
    if len(other) != 1 or other[0] not in inits:
        return None
    t = inits[other[0]]
    return other[0] if t.data_type == 1 and list(t.dims) in ([n], [1, n]) else None  # (1, N): scikit-learn's


def gather_tables(model: Any) -> list[HeavyNode]:
    """Embedding lookups: Gather nodes taking rows (axis 0) of a stored float 2-D table by computed
    indices (``x`` is the indices tensor, ``weight`` the table)."""
    from onnx import helper

    inits = {t.name: t for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        t = inits.get(node.input[0])
        if t is None or t.data_type != 1 or len(t.dims) != 2 or axis != 0 or node.input[1] in inits:
            continue
        found.append(HeavyNode(node.name, "Gather", node.input[1], node.input[0], None, False, node.output[0]))
    return found


def consumers(model: Any) -> dict[str, list[Any]]:
    """Tensor name -> the main-graph nodes reading it."""
    out: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for t in node.input:
            out.setdefault(t, []).append(node)
    return out


def session(model_bytes: bytes, threads: int = 1, optimize: bool = True) -> Any:
    """An ONNX Runtime CPU session on a serialized model; a load failure is a :class:`UserError`."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types
        import re

        from onnx import load_model_from_string

        custom = sorted(
            {
                f"{n.domain}.{n.op_type}"
                for n in load_model_from_string(model_bytes).graph.node
                if n.domain not in ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")
            }
        )
        if custom:
            raise UserError(
                f"ONNX Runtime cannot run the custom operator(s) {', '.join(custom)}: re-export the model with "
                "standard ONNX operators"
            ) from None
        why = re.sub(r"/\S+\.(cc|h):\d+ [^)]*\)", "", str(e).splitlines()[0])[:300]  # drop ORT's source location
        raise UserError(
            f"ONNX Runtime cannot load the model: {why} (an operator or opset it does not support? "
            "re-export with a standard opset)"
        ) from None


class OnnxGraphModule(nn.Module):
    """An ONNX graph held where quantwise holds a model; ``forward`` runs it in FP32 in ONNX Runtime.

    Attributes:
        path: the user's file (read, never written).
        proto: the loaded model, constants moved to initializers and nodes named.
        input_names / output_names: the graph's signature.
    """

    is_onnx_graph = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self.proto = load_onnx(self.path)
        constants_to_initializers(self.proto)
        name_nodes(self.proto)
        inits = {t.name for t in self.proto.graph.initializer}
        self.inputs = [i for i in self.proto.graph.input if i.name not in inits]
        self.input_names = [i.name for i in self.inputs]
        self.output_names = [o.name for o in self.proto.graph.output]
        floats = (1, 10, 11)  # TensorProto FLOAT, FLOAT16, DOUBLE
        # the output quantwise scores: the first float tensor (not an int64 label, not a ZipMap)
        self.scored = next(
            (i for i, o in enumerate(self.proto.graph.output) if o.type.tensor_type.elem_type in floats), None
        )
        self._session: Any = None

    def serialized(self) -> bytes:
        return bytes(self.proto.SerializeToString())

    def input_dtype(self, name: str) -> Any:
        i = next(i for i in self.inputs if i.name == name)
        return ELEM_NUMPY.get(i.type.tensor_type.elem_type, np.float32)

    def input_dims(self, name: str) -> list[str | int]:
        i = next(i for i in self.inputs if i.name == name)
        return [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]

    def run_numpy(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self._session is None:
            self._session = session(self.serialized())
        return list(self._session.run(None, feed))

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        feed = {n: t.numpy() for n, t in zip(self.input_names, batch)}
        return torch.from_numpy(np.asarray(self.run_numpy(feed)[self.scored or 0], dtype=np.float32))

    def __getstate__(self) -> dict[str, Any]:  # sessions do not pickle; the proto does
        state = dict(self.__dict__)
        state["_session"] = None
        return state


def is_onnx_graph(model: object) -> bool:
    return bool(getattr(model, "is_onnx_graph", False))
