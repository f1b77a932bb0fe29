"""User tasks from a Python file: ``path/task.py:build``.

The function takes no arguments and returns either a :class:`~quantwise.tasks.base.Task` or a
dict with ``model`` (an ``nn.Module``), ``calibration`` (a tensor of inputs or a list of input
tuples), ``eval_inputs`` (a tensor) and ``eval_labels`` (integer labels); the model's output
is read as class logits. Optional ``train_inputs`` (a tensor) and ``train_labels`` (integer
labels, optional with ``--distill``) let the QAT recipes train.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantwise.errors import UserError
from quantwise.tasks.base import Task, batched, classification_metrics


def build_python_task(spec: str) -> Task:
    path_s, _, func = spec.rpartition(":")
    if not path_s or not func:
        raise UserError(f"task {spec!r}: write a Python task as path/to/task.py:function")
    path = Path(path_s)
    if not path.is_file():
        raise UserError(f"task file {path} not found: check the path before ':{func}'")
    mod_spec = importlib.util.spec_from_file_location(f"quantwise_user_task_{path.stem}", path)
    assert mod_spec and mod_spec.loader
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[mod_spec.name] = module
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:  # the user's code: report, don't crash with a traceback
        raise UserError(
            f"task file {path} failed to import ({_where(e, path)}): {type(e).__name__}: {_first(e)}"
        ) from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise UserError(f"task file {path} has no function {func!r}: define def {func}(): returning the model and data")
    try:
        result = fn()
    except UserError:
        raise
    except Exception as e:  # the user's code: say it came from there, and where
        raise UserError(
            f"{spec} raised an error in your code ({_where(e, path)}): {type(e).__name__}: {_first(e)}"
        ) from None
    if isinstance(result, Task):
        return result
    if not isinstance(result, dict):
        raise UserError(
            f"{spec} must return a quantwise Task or a dict with model, calibration, eval_inputs, eval_labels"
        )
    return _from_dict(path.stem, result)


def _first(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else "(no message)"


def _where(e: BaseException, path: Path) -> str:
    """``file:line`` of the deepest frame of ``e``'s traceback inside the user's task file."""
    import traceback

    frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == path.resolve()]
    f = frames[-1] if frames else (traceback.extract_tb(e.__traceback__) or [None])[-1]
    return f"{f.filename}:{f.lineno}" if f else str(path)


def _labels(name: str, key: str, values: Any) -> np.ndarray:
    """Integer class labels, or one line saying what is wrong with them."""
    a = np.asarray(values)
    if a.ndim != 1:
        raise UserError(f"task {name}: '{key}' must be a 1-D list of integer class labels, got shape {a.shape}")
    if a.dtype.kind not in "iub":
        if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise UserError(
                f"task {name}: '{key}' must be integer class labels 0..C-1, got {a.dtype} values "
                "(map class names to indices first)"
            )
    a = a.astype(np.int64)
    if len(a) and a.min() < 0:
        raise UserError(f"task {name}: '{key}' has negative labels (min {a.min()}): labels are class indices 0..C-1")
    return a


def _from_dict(name: str, d: dict[str, Any]) -> Task:
    missing = [k for k in ("model", "calibration", "eval_inputs", "eval_labels") if k not in d]
    if missing:
        raise UserError(f"task {name}: the returned dict lacks {', '.join(missing)}")
    model = d["model"]
    if not isinstance(model, nn.Module):
        raise UserError(f"task {name}: 'model' must be a torch.nn.Module, got {type(model).__name__}")
    calib = d["calibration"]
    calib = (
        batched(torch.as_tensor(calib), 64)
        if isinstance(calib, (torch.Tensor, np.ndarray))
        else [tuple(b) if isinstance(b, (tuple, list)) else (b,) for b in calib]
    )
    x = torch.as_tensor(d["eval_inputs"])
    labels = _labels(name, "eval_labels", d["eval_labels"])
    if len(x) == 0:
        raise UserError(f"task {name}: 'eval_inputs' is empty: give at least one evaluation example")
    if len(labels) != len(x):
        raise UserError(f"task {name}: {len(x)} eval_inputs but {len(labels)} eval_labels: give one label per input")
    if len(calib) == 0:
        raise UserError(f"task {name}: 'calibration' is empty: give at least one batch of inputs")
    n_classes = int(d.get("num_classes", labels.max() + 1))
    snapshot = copy.deepcopy(model).eval()
    train_batches, train_labels = [], []
    if "train_inputs" in d:
        xt = torch.as_tensor(d["train_inputs"])
        train_batches = batched(xt, 64)
        if d.get("train_labels") is not None:
            yt = torch.as_tensor(_labels(name, "train_labels", d["train_labels"]))
            if len(yt) != len(xt):
                raise UserError(f"task {name}: {len(xt)} train_inputs but {len(yt)} train_labels")
            train_labels = [yt[i : i + 64] for i in range(0, len(yt), 64)]
    return Task(
        name=d.get("name", name),
        model=model.eval(),
        calibration=calib,
        eval_batches=batched(x, 256),
        score=lambda out: classification_metrics(labels, out.argmax(axis=1), n_classes),
        input_names=["input"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        latency_input=lambda n: (x[:n] if n <= len(x) else x[torch.arange(n) % len(x)],),
        build_model=lambda: copy.deepcopy(snapshot),
        labels=labels,
        train_batches=train_batches,
        train_labels=train_labels,
    )
