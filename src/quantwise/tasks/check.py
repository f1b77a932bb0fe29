"""The checks a task passes once, before any work (``quantwise.api.check_task`` re-exports it)."""

from __future__ import annotations

import torch

from quantwise.errors import UserError
from quantwise.tasks.base import Task
from quantwise.transform.quantize import check_batch


def check_task(task: Task) -> None:
    """Before any work, once per task: evaluation data present and finite in every batch, labels
    within the model's outputs, and a deterministic forward (FP32 run twice on one batch)."""
    if task.info.get("_checked"):
        return
    if not task.eval_batches or not len(task.eval_batches[0][0]):
        raise UserError(f"task {task.name} has no evaluation examples: give at least one")
    for i, b in enumerate(task.eval_batches):
        if any(t.is_floating_point() and not torch.isfinite(t).all() for t in b):
            raise UserError(f"evaluation batch {i} of task {task.name} contains NaN or Inf: clean the inputs")
    check_batch(task.model, task.eval_batches[0], "evaluation")
    b0 = task.eval_batches[0]
    with torch.no_grad():
        y1, y2 = task.model(*b0), task.model(*b0)
    if isinstance(y1, torch.Tensor) and isinstance(y2, torch.Tensor):
        if not torch.isfinite(y1).all():
            raise UserError(
                f"the model's FP32 output on task {task.name}'s first evaluation batch holds NaN or Inf: fix the model"
            )
        scale = float(y1.abs().max()) or 1.0
        diff = float((y1 - y2).abs().max())
        if diff > 1e-5 * scale:
            raise UserError(
                f"the model's forward is not deterministic: two FP32 runs on the same batch differ by {diff:.3g} "
                "(dropout or sampling left on?): put it in eval mode and remove randomness before quantizing"
            )
        labels = task.labels
        if (
            labels is not None
            and y1.dim() == 2
            and task.head is None
            and len(labels)
            and int(labels.max()) >= max(y1.shape[1], 2)  # one output column: a probability, labels 0/1
        ):
            raise UserError(
                f"task {task.name}: labels go up to {int(labels.max())} but the model has {y1.shape[1]} outputs: "
                "labels must be class indices 0..outputs-1"
            )
    task.info["_checked"] = True
