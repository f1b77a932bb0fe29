"""ONNX Runtime: export the lowered model to ONNX, run it on the CPU, census its kernels."""

from __future__ import annotations

import copy
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantwise.errors import UserError
from quantwise.runtime.base import IntegerOps, RuntimeSpec, saturating_weights

OPSET = 17
HEAVY_FLOAT = {"MatMul", "Gemm", "Conv", "FusedConv", "FusedMatMul", "FusedGemm", "NchwcConv"}
HEAVY_INT = {
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "NhwcQLinearConv",
}
FLOAT_TENSORS = ("tensor(float)", "tensor(double)", "tensor(float16)")
HEAVY_LOWBIT = {"MatMulNBits"}  # low-bit weights, float compute at accuracy_level 0, int8 compute at 4


def export_onnx(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    output_names: list[str] | None = None,
) -> Path:
    """Export with the TorchScript-based exporter (it honours the ``symbolic`` of our quantized ops).

    Writes to a temporary name and renames when complete.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    uses_ms = any(hasattr(m, "nb_packed") or getattr(m, "uses_contrib_ops", False) for m in module.modules())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                example,
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=input_names,
                output_names=output_names or ["output"],
                dynamic_axes=dynamic_axes,
                custom_opsets={"com.microsoft": 1} if uses_ms else None,
                do_constant_folding=True,
            )
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    share_tied_initializers(tmp)
    os.replace(tmp, path)
    return path


def share_tied_initializers(path: Path, min_elements: int = 4096) -> int:
    """Store a tied weight once. The exporter writes a tied embedding and LM head as separate
    initializers: the head's folded into its transpose, or the same quantized bytes in another
    shape (``MatMulNBits`` blocks, ``GatherBlockQuantized`` rows). Each initializer whose values
    equal another's, or another's transpose, becomes that one (through a ``Reshape`` or
    ``Transpose`` node that ONNX Runtime folds when the session loads); the file then holds the
    table once. Returns how many initializers were shared."""
    import hashlib

    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer) or any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute
    ):
        return 0  # external data, or subgraphs that could read an initializer: left as exported
    protos = {t.name: t for t in graph.initializer}
    first: dict[tuple[bytes, int], str] = {}  # (digest of the values in row-major order, dtype) -> the one kept
    shared: dict[str, tuple[str, str, tuple[int, ...]]] = {}  # name -> (the one kept, same|reshape|transpose, shape)

    def key(a: np.ndarray, dtype: int) -> tuple[bytes, int]:
        return hashlib.blake2b(a.tobytes(), digest_size=16).digest(), dtype

    def find(k: tuple[bytes, int], a: np.ndarray) -> str | None:
        name = first.get(k)
        if name is not None and np.array_equal(numpy_helper.to_array(protos[name]).reshape(-1), a.reshape(-1)):
            return name
        return None

    for t in graph.initializer:
        a = numpy_helper.to_array(t)
        if a.size < min_elements:
            continue
        own = key(a, t.data_type)
        if (src := find(own, a)) is not None:
            same_shape = tuple(protos[src].dims) == a.shape
            shared[t.name] = (src, "same" if same_shape else "reshape", a.shape)
            continue
        if a.ndim == 2:
            at = np.ascontiguousarray(a.T)
            if (src := find(key(at, t.data_type), at)) is not None and tuple(protos[src].dims) == at.shape:
                shared[t.name] = (src, "transpose", a.shape)
                continue
        first[own] = t.name
    if not shared:
        return 0
    kept = [t for t in graph.initializer if t.name not in shared]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    renamed = {name: src for name, (src, how, _) in shared.items() if how == "same"}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    for name, (src, how, dims) in shared.items():  # computed from the one kept, before anything reads it
        if how == "transpose":
            graph.node.insert(0, helper.make_node("Transpose", [src], [name], name=f"{name}_tied", perm=[1, 0]))
        elif how == "reshape":
            shape = f"{name}_tied_shape"
            graph.initializer.append(numpy_helper.from_array(np.array(dims, dtype=np.int64), shape))
            graph.node.insert(0, helper.make_node("Reshape", [src, shape], [name], name=f"{name}_tied"))
    onnx.save(model, str(path))
    return len(shared)


class OrtRunner:
    """An ONNX Runtime CPU session with a fixed thread count and full graph optimization."""

    runtime = "onnxruntime"

    def __init__(self, path: Path, input_names: list[str], threads: int = 1, census: bool = True) -> None:
        """``census=False``: no optimized copy of the graph is written (nothing will count its ops)."""
        self.artifact = path
        self.input_names = input_names
        self._optimized = path.with_name(path.stem + ".optimized.onnx")
        self._owns_census = census
        self.session = _session(path, threads, self._optimized if census else None)
        # float inputs the caller does not name that can be empty (a causal LM's past keys and values)
        # are fed empty: the batch axis as the first input's, every other dynamic axis 0
        self._empty = [
            (i.name, [d if isinstance(d, int) else -1 if k == 0 else 0 for k, d in enumerate(i.shape)], i.type)
            for i in self.session.get_inputs()
            if i.name not in input_names
            and i.type in ("tensor(float)", "tensor(float16)")
            and any(not isinstance(d, int) for d in i.shape[1:])
        ]
        outs = self.session.get_outputs()
        # the scored output: the first float tensor (a converter's graph may put an int64 label and a
        # ZipMap of probabilities first, as scikit-learn's does)
        self.output = next((o.name for o in outs if o.type in FLOAT_TENSORS), outs[0].name)

    def run(self, batch: tuple[torch.Tensor, ...]) -> np.ndarray:
        feed = {n: t.numpy() for n, t in zip(self.input_names, batch)}
        for name, shape, kind in self._empty:
            dims = [batch[0].shape[0] if d == -1 else d for d in shape]
            feed[name] = np.zeros(dims, dtype=np.float16 if kind == "tensor(float16)" else np.float32)
        return self.session.run([self.output], feed)[0]

    def with_threads(self, threads: int) -> OrtRunner:
        """This runner over a second session of the same graph with ``threads`` intra-op threads that
        do not spin-wait (scoring on every core while the timings keep their own thread count);
        closing it leaves this one as it was."""
        wide = copy.copy(self)
        wide.session = _session(self.artifact, threads, None, spinning=False)
        wide._owns_census = False
        return wide

    def integer_ops(self) -> dict[str, Any]:
        return census(self._optimized)

    def close(self) -> None:
        if self._owns_census:
            self._optimized.unlink(missing_ok=True)


def _session(path: Path, threads: int, optimized: Path | None, spinning: bool = True) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads and full graph optimization;
    ``optimized``: where to write the optimized graph (for the kernel census)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types
        raise RuntimeError(f"ONNX Runtime cannot load {path.name}: {str(e).splitlines()[0]}") from e


def census(optimized: Path) -> dict[str, Any]:
    """Heavy ops in the *optimized* graph ONNX Runtime will execute, by kernel."""
    import onnx

    g = onnx.load(str(optimized), load_external_data=False).graph
    ops = IntegerOps()
    kinds: Counter[str] = Counter()
    for node in g.node:
        t = node.op_type
        level = next((a.i for a in node.attribute if a.name == "accuracy_level"), 0)
        if t in HEAVY_INT or (t in HEAVY_LOWBIT and level == 4):
            ops.integer += 1
        elif t in HEAVY_FLOAT or t in HEAVY_LOWBIT:
            ops.float_ops.append(node.name or t)
        else:
            continue
        ops.total += 1
        kinds[f"{t} (int8 compute)" if t in HEAVY_LOWBIT and level == 4 else t] += 1
    ops.kernels = dict(kinds)
    return ops.to_dict()


def check_onnx_available() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UserError("the onnxruntime runtime needs onnx and onnxruntime: pip install 'quantwise[onnx]'") from None


def _available() -> str | None:
    try:
        check_onnx_available()
    except UserError as e:
        return str(e)
    return None


def _why_not(qm: Any) -> str | None:
    if qm is None:
        return None
    if qm.cast == "bf16":
        return "bf16 has no ONNX Runtime CPU kernels: run bf16 with --runtime torch"
    if getattr(qm.recipe, "kv_cache", "float") != "float":
        return "ONNX Runtime's step graph keeps a float KV cache: KV-cache INT8 runs in llamacpp (and the torch simulation)"
    if qm.plan is not None:
        from quantwise.fixedpoint.simulate import why_not_simulate

        return why_not_simulate(qm.plan, "qdq") or saturating_weights(qm)
    return saturating_weights(qm)


def _lower(qm: Any, task: Any, workdir: Path, threads: int, batch_sizes: Any = (1,)) -> tuple[OrtRunner, nn.Module]:
    from quantwise.onnxmodel import OnnxGraphModule

    if isinstance(task.model, OnnxGraphModule):  # an ONNX file in: its graph lowered, not re-exported
        from quantwise.runtime.onnx_graph import write_graph

        return OrtRunner(write_graph(qm, task.model, workdir / "model.onnx"), task.input_names, threads), task.model
    if qm is None:
        module = task.model
    elif qm.plan is not None:
        from quantwise.fixedpoint.simulate import FixedPointModule

        module = FixedPointModule(qm.plan, "qdq")
    else:
        from quantwise.runtime.torch_sim import lower_torch

        module = lower_torch(qm)
    if task.generation is not None:  # a causal LM: one graph with a KV cache scores and generates
        from quantwise.runtime.onnx_lm import lm_runner

        runner = lm_runner(module, workdir / "model.onnx", task.input_names, threads)
        if runner is not None:
            return runner, module
    path = export_onnx(module, task.latency_input(2), workdir / "model.onnx", task.input_names, task.dynamic_axes)
    return OrtRunner(path, task.input_names, threads), module


def _how(qm: Any) -> tuple[str, str]:
    how = "onnxruntime.InferenceSession('model.onnx', providers=['CPUExecutionProvider'])"
    if qm is not None and not qm.cast:  # a float32 causal LM is exported as its KV-cache step graph
        from quantwise.runtime.onnx_lm import find_lm

        if find_lm(qm.model) is not None:
            how += "; a prompt is fed each past_key_i/past_value_i as (batch, kv_heads, 0, head_dim) zeros"
    return "model.onnx", how


SPEC = RuntimeSpec(
    name="onnxruntime",
    help="ONNX Runtime on the CPU, full graph optimization (QLinearConv/QGemm, MatMulInteger, MatMulNBits)",
    baseline="onnxruntime",
    colour="#2b6cd9",
    why_not=_why_not,
    lower=_lower,
    how_to_load=_how,
    memory_loads_artifact=True,
    available=_available,
    load=lambda folder, task, threads=1: OrtRunner(folder / "model.onnx", task.input_names, threads),
)
