"""A TensorFlow model (SavedModel folder, ``.keras`` or ``.h5`` file) taken through ONNX.

tf2onnx converts the model (a SavedModel's ``serving_default`` signature, a Keras model's call)
to an ONNX file in quantwise's cache, never next to the user's model. The conversion is used only
when it is faithful: ONNX Runtime and TensorFlow run the first examples of the user's data and
must agree (largest difference at most 1e-4 of the output's range); otherwise the command stops
and says by how much they differ. The ONNX file then goes through the ONNX route (``onnx_task``):
every ONNX format, run in ONNX Runtime. TensorFlow is the optional ``tf`` extra.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from quantwise.cachedir import cache_dir
from quantwise.errors import UserError
from quantwise.quiet import env_vars, native_output_silenced
from quantwise.tasks.base import Task

OPSET = 17
PARITY_EXAMPLES = 32
PARITY_RTOL = 1e-4
INSTALL = "pip install 'quantwise[tf]' (tensorflow-cpu and tf2onnx)"


def is_tf_model(path: Path) -> bool:
    return (path.is_dir() and (path / "saved_model.pb").is_file()) or path.suffix.lower() in (".keras", ".h5")


def _import_tf() -> tuple[Any, Any]:
    try:
        # TensorFlow's C++ start-up lines (oneDNN, absl) go straight to file descriptor 2
        with env_vars(TF_CPP_MIN_LOG_LEVEL="3"), native_output_silenced():
            import tensorflow as tf
            import tf2onnx
    except ImportError as e:
        raise UserError(f"a TensorFlow model needs {e.name}: {INSTALL}") from None
    return tf, tf2onnx


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:20]


def _function(tf: Any, path: Path) -> tuple[Any, list[Any]]:
    """A tf.function over the model's inputs (named as the model names them) and its TensorSpecs."""
    if path.is_dir():
        try:
            loaded = tf.saved_model.load(str(path))
            sig = loaded.signatures["serving_default"]
        except (OSError, ValueError, KeyError) as e:
            raise UserError(
                f"cannot load the SavedModel {path} (it needs a serving_default signature): {str(e).splitlines()[0]}"
            ) from None
        _, kwargs = sig.structured_input_signature
        names, keys = list(kwargs), sorted(sig.structured_outputs)
        specs = [tf.TensorSpec(s.shape, s.dtype, name=n) for n, s in kwargs.items()]

        def call(*xs: Any) -> list[Any]:
            out = sig(**dict(zip(names, xs)))
            return [out[k] for k in keys]

        return tf.function(call, input_signature=specs), [loaded]  # keep the loaded object alive
    import zipfile

    import keras

    if not path.is_file():
        raise UserError(f"Keras model {path} not found: pass a .keras or .h5 file saved with model.save")
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a Keras archive (a .keras file is a zip saved by model.save): save it again")
    try:
        model = keras.models.load_model(str(path), compile=False)  # safe_mode: no code from the file
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"cannot load the Keras model {path}: {str(e).splitlines()[0]}") from None
    specs = [tf.TensorSpec(i.shape, i.dtype, name=i.name) for i in model.inputs]
    return tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0]), input_signature=specs), [model]


def convert(path: Path) -> tuple[Path, Any]:
    """The cached ONNX conversion of ``path`` and a callable running the TensorFlow model."""
    tf, tf2onnx = _import_tf()
    fn, keep = _function(tf, path)
    out = cache_dir("tf2onnx") / f"{path.name}-{_digest(path)}-opset{OPSET}.onnx"
    if not out.exists():
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            with env_vars(TF_CPP_MIN_LOG_LEVEL="3"), native_output_silenced():
                tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=OPSET, output_path=str(tmp))
        except Exception as e:  # tf2onnx's own message names the op it cannot convert
            tmp.unlink(missing_ok=True)
            raise UserError(
                f"tf2onnx cannot convert {path}: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
            ) from None
        os.replace(tmp, out)

    def run_tf(*xs: np.ndarray) -> np.ndarray:
        res = fn(*[tf.constant(x) for x in xs])
        first = res[0] if isinstance(res, (list, tuple)) else res
        return np.asarray(first.numpy())

    run_tf.keep = keep  # type: ignore[attr-defined]
    return out, run_tf


def build_tf_task(model: str, data: str, limit: int | None = None) -> Task:
    """``--model saved_model_dir|model.keras --data arrays.npz``: converted, checked, then the ONNX route."""
    from quantwise.onnxmodel import OnnxGraphModule
    from quantwise.tasks.onnx_task import onnx_task, read_arrays

    path = Path(model)
    onnx_path, run_tf = convert(path)
    gm = OnnxGraphModule(onnx_path)
    arrays, labels = read_arrays(data, gm)
    task = onnx_task(onnx_path, arrays, labels, name=path.stem if path.is_file() else path.name, limit=limit)
    b = task.eval_batches[0]
    n = min(PARITY_EXAMPLES, len(b[0]))
    ours = gm(*[x[:n] if x.dim() else x for x in b]).numpy()
    ref = run_tf(*[x[:n].numpy() if x.dim() else x.numpy() for x in b])
    diff = float(np.abs(ours.reshape(ref.shape) - ref).max()) if ours.size == ref.size else float("inf")
    bound = PARITY_RTOL * max(float(np.abs(ref).max()), 1.0)
    if not diff <= bound:
        raise UserError(
            f"tf2onnx's conversion of {path} does not compute what TensorFlow computes (largest difference "
            f"{diff:.3g} on {n} examples, bound {bound:.3g}): quantwise will not quantize a different model; "
            "report it to tf2onnx or export ONNX another way"
        )
    setattr(task.model, "tf_source", str(path))  # noqa: B010  (LiteRT's TFLiteConverter formats convert it)
    rebuild = task.build_model

    def build_model() -> Any:
        gm: Any = rebuild()
        gm.tf_source = str(path)
        return gm

    task.build_model = build_model
    task.info.update(
        kind="tf-graph",
        source=str(path),
        converted=f"tf2onnx {_version('tf2onnx')} (opset {OPSET}), {onnx_path.name}",
        conversion_max_abs_diff=diff,
    )
    return task


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)
