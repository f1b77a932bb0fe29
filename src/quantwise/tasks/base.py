"""A Task bundles a float model, its calibration and evaluation data, and how to score outputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

Batch = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class MetricSpec:
    """How to read one of a task's metrics.

    Attributes:
        name: the key in the metrics dict (``accuracy``, ``perplexity`` ...).
        higher_is_better: direction; a budget on a lower-is-better metric caps its rise.
        fraction: a value in [0, 1] shown and budgeted in percentage points (accuracy);
            otherwise the metric's own units (perplexity, KL).
        per_example: the key of ``record.per_example`` holding per-example values whose mean
            gives the metric (after ``from_mean``), so compare can put a paired interval on its
            change; "" when the metric is not such a mean (accuracy uses ``correct``).
        from_mean: ``mean`` (the metric is the mean itself) or ``exp`` (perplexity: exp of the
            mean negative log-likelihood).
    """

    name: str
    higher_is_better: bool = True
    fraction: bool = True
    per_example: str = ""
    from_mean: str = "mean"

    @property
    def unit(self) -> str:
        return "points" if self.fraction else self.name

    def worse_by(self, base: float, value: float) -> float:
        """How much worse ``value`` is than ``base`` in the metric's display units (negative: better)."""
        d = (base - value) if self.higher_is_better else (value - base)
        return 100 * d if self.fraction else d

    def show(self, value: float) -> str:
        return f"{100 * value:.2f}%" if self.fraction else f"{value:.4g}"


CLASSIFICATION_METRICS = (MetricSpec("accuracy"), MetricSpec("f1_macro"))


@dataclass(frozen=True)
class Generation:
    """How a generative task's decode speed is measured: greedy, from ``prompt`` (1, S), with a KV cache."""

    prompt: torch.Tensor
    new_tokens: int = 64


@dataclass
class Task:
    """Everything quantwise needs to quantize and measure one model on one data set.

    Attributes:
        name: Task name (``mnist-cnn``, ``bbc-minilm``, or the user's).
        model: The float model, in eval mode. ``model(*batch)`` returns a float tensor.
        calibration: Batches of model inputs for calibration (and GPTQ).
        eval_batches: Batches of model inputs for evaluation, in order.
        score: Maps the concatenated evaluation outputs ``(N, ...)`` to a metrics dict.
        input_names: ONNX input names, one per tensor in a batch.
        dynamic_axes: ONNX dynamic axes, by input/output name.
        latency_input: ``latency_input(batch_size)`` returns one batch for timing.
        labels: Ground-truth labels of the evaluation set (classification tasks), if any.
        primary_metric: The metric the accuracy budget applies to.
        build_model: Rebuilds a fresh copy of the float model (to load saved artifacts).
        predict: Maps outputs to class predictions (argmax of logits unless the task says otherwise).
        validation: Batches held out from the test set, for searches (mixed precision) to
            measure on without touching the test set.
        train_batches: Batches of model inputs to train on (quantization-aware training).
        train_labels: Class labels, one tensor per training batch (empty: unlabeled, distill only).
        val_labels: Class labels of the ``validation`` batches (empty: QAT validates on the
            last 10% of the training batches).
        head: Maps model outputs to class logits, differentiably (None: outputs are logits).
        train_defaults: ``{"epochs": ..., "lr": ...}`` used when a QAT recipe leaves them at 0;
            ``"distill_on"``: what QAT distils on when the data has no labels (default logits).
        metrics: the metrics the task reports, each with its direction; ``primary_metric``
            names the one budgets and rankings apply to.
        reduce: ``reduce(i, batch, outputs) -> rows`` shrinks evaluation batch ``i``'s outputs
            as they come (an LLM's logits are too big to keep); ``score`` then sees the rows.
        per_example: maps the same outputs to ``{key: one value per example}`` for the metrics
            whose ``MetricSpec.per_example`` names a key (per-window NLL, per-example cosine).
        generation: for generative tasks, how decode speed is measured.
    """

    name: str
    model: nn.Module
    calibration: Sequence[Batch]
    eval_batches: Sequence[Batch]
    score: Callable[[np.ndarray], dict[str, Any]]
    input_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    latency_input: Callable[[int], Batch]
    build_model: Callable[[], nn.Module]
    labels: np.ndarray | None = None
    primary_metric: str = "accuracy"
    output_names: list[str] = field(default_factory=lambda: ["output"])
    info: dict[str, Any] = field(default_factory=dict)
    predict: Callable[[np.ndarray], np.ndarray] = lambda out: out.argmax(axis=1)
    validation: Sequence[Batch] = ()
    train_batches: Sequence[Batch] = ()
    train_labels: Sequence[torch.Tensor] = ()
    val_labels: Sequence[torch.Tensor] = ()
    head: Callable[[torch.Tensor], torch.Tensor] | None = None
    train_defaults: dict[str, Any] = field(default_factory=dict)
    metrics: tuple[MetricSpec, ...] = CLASSIFICATION_METRICS
    reduce: Callable[[int, Batch, np.ndarray], np.ndarray] | None = None
    per_example: Callable[[np.ndarray], dict[str, list[float]]] | None = None
    generation: Generation | None = None

    def metric_spec(self, name: str | None = None) -> MetricSpec:
        """The declared metric ``name`` (default: the budget's, ``primary_metric``)."""
        name = name or self.primary_metric
        return next((m for m in self.metrics if m.name == name), MetricSpec(name))


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1 and the confusion matrix, via scikit-learn."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    p, r, f1, _ = precision_recall_fscore_support(labels, predictions, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "precision_macro": float(p),
        "recall_macro": float(r),
        "f1_macro": float(f1),
        "confusion_matrix": confusion_matrix(labels, predictions, labels=list(range(n_classes))).tolist(),
    }


def batched(x: torch.Tensor, size: int) -> list[Batch]:
    """Split a tensor along dim 0 into 1-tuples of at most ``size`` rows."""
    return [(x[i : i + size],) for i in range(0, len(x), size)]
