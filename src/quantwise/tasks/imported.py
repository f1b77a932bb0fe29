"""A graph task (ONNX file or TensorFlow model) with its model imported into PyTorch.

The formats only the PyTorch route builds (fixed point for the integer executor, quantwise's own
``.tflite``) and the FP32 baseline they are measured against run on this task: the same data and
scoring, the graph's scored output as PyTorch layers (:func:`quantwise.transform.onnx_import.import_graph`,
checked against ONNX Runtime on the first calibration batch). Built once per task; an import
that fails is remembered, so every format it would serve gets the same one-line reason.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from quantwise.errors import UnsupportedModel
from quantwise.tasks.base import Task

_ATTR = "_imported_task"


def imported_task(task: Task) -> Task:
    """``task`` with ``model`` the graph imported into PyTorch (cached on ``task``).

    Raises:
        UnsupportedModel: the graph has an operator the import does not take, or the import
            differs from ONNX Runtime.
    """
    got: Any = getattr(task, _ATTR, None)
    if got is None:
        from quantwise.transform.onnx_import import import_graph

        try:
            module = import_graph(task.model, (task.calibration or task.eval_batches)[0])
            info = {k: v for k, v in task.info.items() if k not in ("kind", "_checked")}
            info["imported"] = (
                f"{task.info.get('kind')} imported into PyTorch (largest difference to ONNX Runtime {module.import_max_abs_diff:.3g})"
            )
            names = list(module.input_names)
            got = dataclasses.replace(
                task,
                model=module,
                build_model=lambda: copy.deepcopy(module),
                info=info,
                input_names=names,
                dynamic_axes={n: {0: "batch"} for n in names},
            )
        except UnsupportedModel as e:
            got = e
        setattr(task, _ATTR, got)
    if isinstance(got, UnsupportedModel):
        raise got
    return got
