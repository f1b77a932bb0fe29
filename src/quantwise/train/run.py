"""Build a QAT format for a task: PTQ initialisation, training, conversion."""

from __future__ import annotations

import os
import time
from pathlib import Path

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
    with torch_threads(os.cpu_count() or 1):  # training uses every core; inference timing keeps its own setting
        result = train_qat(
            prepared,
            data,
            task.model if recipe.distill else None,
            epochs,
            recipe.steps,
            lr,
            folder,
            recipe.patience,
            recipe.distill_on,
        )
    qm = convert_qat(prepared)
    qm.info["training"] = {
        **result.to_dict(),
        "epochs": epochs,
        "lr": lr,
        "checkpoint_dir": str(folder),
        "train_examples": sum(len(b[0]) for b in data.batches),
    }
    qm.info["time_to_quantize_s"] = time.perf_counter() - t0
    return qm
