"""The ``tflite`` runtime: litert-torch converts, LiteRT's interpreter runs.

Conversion captures the model with ``torch.export`` at a fixed batch size (litert-torch cannot
lower a dynamic batch through ``flatten`` here), so one ``.tflite`` is written per batch size
used: batch 1 for evaluation (one example per call) and each latency batch size.
Text inputs are padded to the task's fixed length. The census reads the file back: which heavy
operators (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, BATCH_MATMUL) take int8 inputs, and the
dtype of every tensor.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantwise.errors import UnsupportedModel, UserError
from quantwise.quiet import env_vars, import_torchao_quietly, native_output_silenced
from quantwise.runtime.base import IntegerOps, RuntimeSpec

HEAVY = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL")
EXTRA = "quantwise[tflite]"


def check_tflite_available() -> None:
    """A one-line error naming the extra when LiteRT is not installed."""
    import_torchao_quietly()
    try:
        with env_vars(TF_CPP_MIN_LOG_LEVEL="3"), native_output_silenced():  # native libraries log on fd 2 as they load
            import ai_edge_litert  # noqa: F401
            import litert_torch  # noqa: F401
    except ImportError:
        raise UserError(
            f"the tflite runtime needs LiteRT: pip install '{EXTRA}' (litert-torch and ai-edge-litert)"
        ) from None


def convert(module: nn.Module, example: tuple[torch.Tensor, ...], mode: str, path: Path) -> Path:
    """Convert ``module`` at ``example``'s shapes to ``path`` (written via a temporary name)."""
    import_torchao_quietly()
    import litert_torch

    kw: dict[str, Any] = {}
    if mode in ("static", "dynamic"):
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig

        # The quantizer only tells the converter which Q/DQ lowering to use: our graph already
        # holds every quantize/dequantize pair with quantwise's own scales.
        cfg = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=mode == "dynamic")
        kw["quant_config"] = QuantConfig(pt2e_quantizer=PT2EQuantizer().set_global(cfg))
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            native_output_silenced(),
        ):
            edge = litert_torch.convert(module.eval(), example, **kw)
            tmp = path.with_name(f".{path.name}.tmp")
            edge.export(str(tmp))
    except Exception as e:
        first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise UnsupportedModel(
            f"litert-torch cannot convert this model: {first[:300]}; the onnxruntime runtime may run it"
        ) from None
    os.replace(tmp, path)
    return path


class TfliteRunner:
    """One interpreter per converted batch size; evaluation runs one example per call."""

    runtime = "tflite"

    def __init__(self, paths: dict[int, Path], threads: int = 1, reference: bool = False) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        kw = {"experimental_op_resolver_type": OpResolverType.BUILTIN_REF} if reference else {}
        self.paths = paths
        self.artifact = paths[1]
        self.interpreters = {}
        for bs, p in paths.items():
            with native_output_silenced():  # LiteRT announces its XNNPACK delegate on fd 2
                it = Interpreter(model_path=str(p), num_threads=threads, **kw)
                it.allocate_tensors()
            self.interpreters[bs] = it

    def _invoke(self, it: Any, arrays: list[np.ndarray]) -> np.ndarray:
        for d, a in zip(it.get_input_details(), arrays):
            if (
                d["dtype"] in (np.int8, np.uint8) and a.dtype.kind == "f"
            ):  # an int8 input: quantize with the file's own grid
                s, z = d["quantization"]
                info = np.iinfo(d["dtype"])
                a = np.clip(np.round(a / s) + z, info.min, info.max)
            if list(a.shape) != list(d["shape"]):  # text: pad to the converted length
                pad = np.zeros(d["shape"], dtype=a.dtype)
                pad[tuple(slice(0, n) for n in a.shape)] = a
                a = pad
            it.set_tensor(d["index"], a.astype(d["dtype"]))
        it.invoke()
        o = it.get_output_details()[0]
        y = it.get_tensor(o["index"])
        if o["dtype"] in (np.int8, np.uint8):
            s, z = o["quantization"]
            y = (y.astype(np.float32) - z) * s
        return y.astype(np.float32)

    def run(self, batch: tuple[torch.Tensor, ...]) -> np.ndarray:
        arrays = [t.numpy() for t in batch]
        n = len(arrays[0])
        if n in self.interpreters and n != 1:
            return self._invoke(self.interpreters[n], arrays)
        return np.concatenate([self._invoke(self.interpreters[1], [a[i : i + 1] for a in arrays]) for i in range(n)])

    def integer_ops(self) -> dict[str, Any]:
        it = self.interpreters[1]
        tensors = {d["index"]: d for d in it.get_tensor_details()}
        ops = IntegerOps()
        kinds: dict[str, int] = {}
        for op in it._get_ops_details():
            if op["op_name"] not in HEAVY:
                continue
            types = [tensors[i]["dtype"].__name__ for i in op["inputs"] if i >= 0]
            ops.total += 1
            if types and types[0] in ("int8", "int16", "uint8"):
                ops.integer += 1
                kind = f"{op['op_name']} int8"
            elif len(types) > 1 and types[1] in ("int8", "uint8"):
                ops.integer += 1  # dynamic-range ("hybrid") kernel: int8 weights, activations quantized per call
                kind = f"{op['op_name']} dynamic-range int8"
            else:
                ops.float_ops.append(f"{op['op_name']}#{op['index']}")
                kind = f"{op['op_name']} float"
            kinds[kind] = kinds.get(kind, 0) + 1
        ops.kernels = kinds
        return ops.to_dict()

    def report(self, qm: Any = None) -> dict[str, Any]:
        """Tensors by dtype, float tensors, and whether the file carries ``qm``'s own scales."""
        out = self._tensors()
        if qm is not None:
            out["quantwise_scales"] = scales_check(qm, read_quantization(self.artifact))
        return out

    def _tensors(self) -> dict[str, Any]:
        """Tensors by dtype, and the float tensors that are neither inputs nor shape constants."""
        it = self.interpreters[1]
        by: dict[str, int] = {}
        floats = []
        for d in it.get_tensor_details():
            t = d["dtype"].__name__
            by[t] = by.get(t, 0) + 1
            if t in ("float32", "float16") and len(d["shape"]) > 0:
                floats.append(d["name"][:120])
        ins = it.get_input_details()
        return {
            "tensors_by_dtype": by,
            "float_tensors": floats,
            "input_dtype": ins[0]["dtype"].__name__,
            "output_dtype": it.get_output_details()[0]["dtype"].__name__,
            "files": {str(bs): p.name for bs, p in self.paths.items()},
        }


def read_quantization(path: Path) -> dict[str, dict[str, list[float]]]:
    """Scales and zero points of every quantized tensor in a ``.tflite``, by tensor name."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    out = {}
    for d in it.get_tensor_details():
        qp = d["quantization_parameters"]
        if len(qp["scales"]):
            out[d["name"]] = {
                "dtype": d["dtype"].__name__,
                "scales": qp["scales"].tolist(),
                "zero_points": qp["zero_points"].tolist(),
                "shape": d["shape"].tolist(),
            }
    return out


def scales_check(qm: Any, quant: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Which of ``qm``'s weight and activation scales the ``.tflite`` carries unchanged, and which
    int8 weight tensors the converter quantized with scales of its own."""
    from quantwise.runtime.tflite_lower import int8_grid

    matched, missing, used = [], [], set()
    for name, lq in qm.layers.items():
        s = lq.weight_scale.detach().float().numpy().reshape(-1)
        hit = next(
            (
                k
                for k, v in quant.items()
                if k not in used and len(v["scales"]) == len(s) and np.allclose(v["scales"], s, rtol=1e-6, atol=0)
            ),
            None,
        )
        acts = [a for a in (lq.input, lq.output) if a is not None]
        act_ok = all(
            any(
                len(v["scales"]) == 1
                and abs(v["scales"][0] - int8_grid(a)[0]) <= 1e-6 * int8_grid(a)[0]
                and v["zero_points"][0] == int8_grid(a)[1]
                for v in quant.values()
            )
            for a in acts
        )
        if hit and act_ok:
            matched.append(name)
            used.add(hit)
        else:
            missing.append(name)
    own = [
        k
        for k, v in quant.items()
        if k not in used and v["dtype"] == "int8" and len(v["shape"]) >= 2 and len(v["scales"]) > 1
    ]
    return {"layers": len(qm.layers), "matched": matched, "not_in_file": missing, "converter_quantized_weights": own}


def _available() -> str | None:
    try:
        check_tflite_available()
    except UserError as e:
        return str(e)
    return None


def _why_not(qm: Any) -> str | None:
    from quantwise.runtime.tflite_lower import why_not_tflite

    if qm is not None and getattr(qm.recipe, "kind", None) == "tflite-converter":
        return None
    if qm is not None and getattr(qm.model, "is_onnx_graph", False):
        return (
            "a graph quantwise quantized runs in ONNX Runtime; for LiteRT quantize its checked PyTorch import "
            "(quantwise.tasks.imported.imported_task, as the CLI does) or use a TensorFlow model's tflite-converter formats"
        )
    return why_not_tflite(qm)


def _lower(qm: Any, task: Any, workdir: Path, threads: int, batch_sizes: Any = (1,)) -> tuple[TfliteRunner, nn.Module]:
    from quantwise.progress import status
    from quantwise.runtime.tflite_lower import lower_tflite_module

    check_tflite_available()
    if getattr(task.model, "is_onnx_graph", False):  # a TensorFlow model: its own converter
        from quantwise.runtime.tflite_tf import convert_tf

        mode = qm.recipe.mode if qm is not None else "fp32"
        paths = {}
        for bs in sorted({1, *batch_sizes}):
            status(f"TFLiteConverter ({mode}) at batch {bs}")
            paths[bs] = convert_tf(task.model.tf_source, mode, task.calibration, bs, workdir / f"model_b{bs}.tflite")
        return TfliteRunner(paths, threads), task.model
    module, mode = lower_tflite_module(qm, task.model)
    paths = {}
    for bs in sorted({1, *batch_sizes}):
        status(f"converting to .tflite at batch {bs}")
        paths[bs] = convert(module, task.latency_input(bs), mode, workdir / f"model_b{bs}.tflite")
    return TfliteRunner(paths, threads), module


def _how(qm: Any) -> tuple[str, str]:
    return "model_b1.tflite", (
        "ai_edge_litert.interpreter.Interpreter(model_path='model_b1.tflite') (batch 1; int8 inputs and "
        "outputs carry their scale and zero point in get_input_details()/get_output_details())"
    )


SPEC = RuntimeSpec(
    name="tflite",
    help=f"LiteRT's interpreter on a .tflite converted by litert-torch (optional extra {EXTRA})",
    baseline="tflite",
    colour="#16a3a3",
    why_not=_why_not,
    lower=_lower,
    how_to_load=_how,
    memory_loads_artifact=True,
    available=_available,
    load=lambda folder, task, threads=1: TfliteRunner({1: folder / "model_b1.tflite"}, threads),
)
