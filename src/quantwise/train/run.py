"""Build a QAT format for a task: PTQ initialisation, training, conversion."""

from __future__ import annotations

import os
import time
from pathlib import Path

from quantwise.progress import status
from quantwise.quantized import QuantizedModel
from quantwise.quiet import torch_threads
from quantwise.recipes import QATRecipe
from quantwise.tasks.base import Task
from quantwise.train.loop import checkpoint_dir_for, task_train_data, train_qat
from quantwise.transform.qat import convert_qat, prepare_qat

DEFAULT_EPOCHS, DEFAULT_LR = 3, 1e-4


def build_qat(task: Task, recipe: QATRecipe, checkpoint_dir: Path | None = None) -> QuantizedModel:
    """Train ``recipe`` on ``task``'s training data and convert; resumes from the checkpoint folder
    (by default one per task, model and recipe under ``$QUANTWISE_CACHE/qat``)."""
    t0 = time.perf_counter()
    data = task_train_data(task)  # refuse a task without training data before any work
    prepared = prepare_qat(task.model, recipe, task.calibration)
    epochs = recipe.epochs or int(task.train_defaults.get("epochs", DEFAULT_EPOCHS))
    lr = recipe.lr or float(task.train_defaults.get("lr", DEFAULT_LR))
    folder = checkpoint_dir or checkpoint_dir_for(task, prepared)
    # Without labels the FP32 model is the only teacher: distil from it (the record says so) on what
    # the task says its outputs are (logits by default; a graph's embeddings or scores: "outputs")
    distill = recipe.distill or not data.labels
    distill_on = recipe.distill_on if recipe.distill else str(task.train_defaults.get("distill_on", "logits"))
    if not data.labels:
        status(f"{recipe.name}: {_objective(False, True, distill_on)}")
    with torch_threads(os.cpu_count() or 1):  # training uses every core; inference timing keeps its own setting
        result = train_qat(
            prepared,
            data,
            task.model if distill else None,
            epochs,
            recipe.steps,
            lr,
            folder,
            recipe.patience,
            distill_on,
        )
    qm = convert_qat(prepared)
    qm.info["training"] = {
        **result.to_dict(),
        "epochs": epochs,
        "lr": lr,
        "checkpoint_dir": str(folder),
        "train_examples": sum(len(b[0]) for b in data.batches),
        "objective": _objective(bool(data.labels), distill, distill_on),
    }
    qm.info["time_to_quantize_s"] = time.perf_counter() - t0
    return qm


def _objective(labels: bool, distill: bool, distill_on: str) -> str:
    teacher = f"distillation from the FP32 model on its {distill_on}"
    if not labels:
        return f"{teacher} (the data has no labels)"
    return f"cross-entropy on the labels + {teacher}" if distill else "cross-entropy on the labels"
