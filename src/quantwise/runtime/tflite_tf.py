"""TensorFlow's own TFLiteConverter on a TensorFlow model (SavedModel or .keras), one file per batch size.

The converter, not quantwise, chooses every scale: ``full-int8`` and ``16x8`` calibrate on a
representative dataset built from the task's calibration examples (the ones quantwise's own
formats calibrate on), fed at the file's batch size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantwise.errors import UserError
from quantwise.quiet import env_vars, native_output_silenced


def _fixed_batch(tf: Any, fn: Any, bs: int) -> Any:
    """``fn``'s concrete function with the batch dimension fixed to ``bs`` (LiteRT files here are static)."""
    specs = [
        tf.TensorSpec([bs, *s.shape[1:]] if s.shape.rank and s.shape[0] is None else s.shape, s.dtype, name=s.name)
        for s in fn.input_signature
    ]
    return tf.function(lambda *xs: fn(*xs), input_signature=specs).get_concrete_function()


def _representative(calibration: Sequence[tuple[torch.Tensor, ...]], bs: int) -> Iterator[list[np.ndarray]]:
    rows = [np.concatenate([b[i].numpy() for b in calibration]) for i in range(len(calibration[0]))]
    n = len(rows[0])
    for start in range(0, n, bs):
        idx = np.resize(np.arange(start, min(start + bs, n)), bs)
        yield [r[idx] for r in rows]


def convert_tf(source: str, mode: str, calibration: Sequence[tuple[torch.Tensor, ...]], bs: int, path: Path) -> Path:
    """Write the ``mode`` conversion of the TensorFlow model at ``source`` for batch ``bs`` to ``path``."""
    from quantwise.tasks.tf_model import _function, _import_tf

    tf, _ = _import_tf()
    fn, keep = _function(tf, Path(source))
    with env_vars(TF_CPP_MIN_LOG_LEVEL="3"), native_output_silenced():
        conv = tf.lite.TFLiteConverter.from_concrete_functions([_fixed_batch(tf, fn, bs)], keep[0])
        if mode != "fp32":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "float16":
            conv.target_spec.supported_types = [tf.float16]
        if mode in ("full-int8", "16x8"):
            conv.representative_dataset = lambda: _representative(calibration, bs)
            conv.target_spec.supported_ops = [
                tf.lite.OpsSet.TFLITE_BUILTINS_INT8
                if mode == "full-int8"
                else tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            ]
        try:
            content = conv.convert()
        except Exception as e:  # the converter names the op it cannot convert
            raise UserError(
                f"TFLiteConverter ({mode}) cannot convert {source}: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
            ) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)
    return path
