"""Hugging Face classifiers with their own head: ``*ForSequenceClassification`` with a CSV/JSONL of
texts, ``*ForImageClassification`` (and its image processor) with images in class sub-folders.

The model is used as it is: its logits are the output, its own ``id2label`` maps the file's
labels (or the image folders' names) to classes (label names, or class indices when the model's labels are the generic
``LABEL_0``...). No head is fitted. Split: a ``default_rng(0)`` permutation; the first quarter
(at most 128 texts) calibrates, the rest is the test set. Metrics: accuracy and macro F1 against
the file's labels, and ``agreement`` (top-1 with the FP32 model on the same texts).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantwise.errors import UserError
from quantwise.quiet import env_vars, hf_quiet, import_torchao_quietly
from quantwise.tasks.base import CLASSIFICATION_METRICS, Batch, MetricSpec, Task, classification_metrics

MAX_LEN = 128
BATCH = 32
MAX_CALIBRATION = 128


def head_kind(model_dir: str | Path) -> str | None:
    """``"text"`` for a ``*ForSequenceClassification`` folder, ``"image"`` for ``*ForImageClassification``."""
    cfg = Path(model_dir) / "config.json"
    if not cfg.is_file():
        return None
    try:
        archs = [str(a) for a in json.loads(cfg.read_text()).get("architectures") or []]
    except (OSError, ValueError):
        return None
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "text"
    if any(a.endswith("ForImageClassification") for a in archs):
        return "image"
    return None


def is_sequence_classifier(model_dir: str | Path) -> bool:
    return head_kind(model_dir) == "text"


class ImageClassifier(nn.Module):
    """``pixel_values -> logits`` of the model's own head."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def from_pretrained(model_dir: Path, auto_model: str, auto_pre: str, what: str) -> tuple[nn.Module, Any]:
    """A local folder's model and preprocessor (tokenizer or image processor); never the network."""
    import_torchao_quietly()
    import transformers

    try:
        with env_vars(HF_HUB_OFFLINE="1"), hf_quiet():
            pre = getattr(transformers, auto_pre).from_pretrained(str(model_dir))
            model = getattr(transformers, auto_model).from_pretrained(str(model_dir), attn_implementation="eager")
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the {what} in {model_dir}: {str(e).splitlines()[0]}") from None
    return model, pre


def _id2label(model: Any) -> dict[int, str]:
    return {int(k): str(v) for k, v in (model.config.id2label or {}).items()}


def load_image_classifier(model_dir: Path) -> tuple[ImageClassifier, Any, dict[int, str]]:
    model, proc = from_pretrained(
        model_dir,
        "AutoModelForImageClassification",
        "AutoImageProcessor",
        "image classifier (it needs its preprocessor_config.json)",
    )
    return ImageClassifier(model).eval(), proc, _id2label(model)


class SequenceClassifier(nn.Module):
    """``(input_ids, attention_mask) -> logits`` of the model's own head."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def load_classifier(model_dir: Path) -> tuple[SequenceClassifier, Any, dict[int, str]]:
    model, tok = from_pretrained(model_dir, "AutoModelForSequenceClassification", "AutoTokenizer", "classifier")
    return SequenceClassifier(model).eval(), tok, _id2label(model)


def class_indices(raw: list[str], id2label: dict[int, str], source: str) -> np.ndarray:
    """The file's labels as the model's class indices: by label name, else as integer indices."""
    by_name = {v: k for k, v in id2label.items()}
    if all(v in by_name for v in raw):
        return np.array([by_name[v] for v in raw], dtype=np.int64)
    try:
        ints = np.array([int(v) for v in raw], dtype=np.int64)
    except ValueError:
        unknown = sorted({v for v in raw if v not in by_name})[:3]
        raise UserError(
            f"{source}: label(s) {', '.join(map(repr, unknown))} are not the model's labels "
            f"({', '.join(id2label[i] for i in sorted(id2label))}): use those names or class indices"
        ) from None
    if ints.min() < 0 or ints.max() >= len(id2label):
        raise UserError(f"{source}: class indices must lie in 0..{len(id2label) - 1} (the model has {len(id2label)})")
    return ints


def split(n_all: int, limit: int | None, source: str) -> tuple[np.ndarray, np.ndarray]:
    """A ``default_rng(0)`` permutation: the first quarter (at most 128) calibrates, the rest tests."""
    n = min(n_all, limit) if limit else n_all
    if n < 2:
        raise UserError(f"{source} has {n} example(s): give at least 2 (some calibrate, the rest test)")
    perm = np.random.default_rng(0).permutation(n_all)[:n]
    n_cal = min(MAX_CALIBRATION, max(1, n // 4))
    return np.sort(perm[:n_cal]), np.sort(perm[n_cal:])


def _classifier_task(
    model_dir: str,
    model: nn.Module,
    id2label: dict[int, str],
    labels: np.ndarray,
    cal: np.ndarray,
    test: np.ndarray,
    batches: Callable[[np.ndarray], list[Batch]],
    input_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    latency_input: Callable[[int], Batch],
    build_model: Callable[[], nn.Module],
    info: dict[str, Any],
) -> Task:
    """The task both heads share: the model's logits scored against the labels and against FP32."""
    eval_batches = batches(test)
    y = labels[test]
    with torch.no_grad():
        ref = torch.cat([model(*b) for b in eval_batches]).numpy().argmax(1)

    def score(out: np.ndarray) -> dict[str, Any]:
        m = classification_metrics(y, out.argmax(1), len(id2label))
        m["agreement"] = float((out.argmax(1) == ref).mean())
        return m

    what = info.pop("what")
    return Task(
        name=f"hf:{Path(model_dir).name}",
        model=model,
        calibration=batches(cal),
        eval_batches=eval_batches,
        score=score,
        input_names=input_names,
        dynamic_axes=dynamic_axes,
        latency_input=latency_input,
        build_model=build_model,
        labels=y,
        # the calibration split also trains the QAT formats and validates mixed precision's search
        # (as mnist-cnn's calibration digits do); never the test split
        train_batches=(train := batches(cal)),
        train_labels=[
            torch.from_numpy(labels[cal[i : i + len(b[0])]]) for i, b in zip(_starts(train), train, strict=True)
        ],
        validation=train,
        info={
            **info,
            "n_test": len(test),
            "split": f"{len(cal)} calibration (also QAT training and mixed-precision validation) / {len(test)} test "
            f"{what} (default_rng(0) permutation)",
            "classes": [id2label[i] for i in sorted(id2label)],
        },
        metrics=(*CLASSIFICATION_METRICS, MetricSpec("agreement")),
    )


def _starts(batches: list[Batch]) -> list[int]:
    """The index of each batch's first example among all of them."""
    return [int(x) for x in np.cumsum([0] + [len(b[0]) for b in batches[:-1]])]


def build_hf_image_classifier(model_dir: str, data: str, limit: int | None = None) -> Task:
    """A ``*ForImageClassification`` folder and images in class sub-folders named by the model's labels."""
    from quantwise.tasks.images import image_files, open_image

    model, proc, id2label = load_image_classifier(Path(model_dir))
    files, _, classes = image_files(Path(data))
    raw = [f.parent.name for f in files]
    labels = class_indices(raw, id2label, data)
    cal, test = split(len(files), limit, data)

    def pixels(ix: np.ndarray) -> Batch:
        return (proc([open_image(files[i], "RGB") for i in ix], return_tensors="pt")["pixel_values"],)

    def batches(ix: np.ndarray) -> list[Batch]:
        return [pixels(ix[i : i + BATCH]) for i in range(0, len(ix), BATCH)]

    return _classifier_task(
        model_dir,
        model,
        id2label,
        labels,
        cal,
        test,
        batches,
        ["pixel_values"],
        {"pixel_values": {0: "batch"}, "output": {0: "batch"}},
        lambda bs: pixels(np.resize(test, bs)),
        lambda: load_image_classifier(Path(model_dir))[0],
        {"kind": "hf-image-classifier", "what": "images", "folders": classes},
    )


def build_hf_classifier(
    model_dir: str, docs: list[str], raw_labels: list[str], source: str, limit: int | None = None
) -> Task:
    model, tok, id2label = load_classifier(Path(model_dir))
    labels = class_indices(raw_labels, id2label, source)
    cal, test = split(len(docs), limit, source)

    def tokens(ix: np.ndarray, pad: str | bool = True) -> Batch:
        b = tok([docs[i] for i in ix], max_length=MAX_LEN, truncation=True, padding=pad, return_tensors="pt")
        return (b["input_ids"], b["attention_mask"])

    def batches(ix: np.ndarray) -> list[Batch]:
        return [tokens(ix[i : i + BATCH]) for i in range(0, len(ix), BATCH)]

    return _classifier_task(
        model_dir,
        model,
        id2label,
        labels,
        cal,
        test,
        batches,
        ["input_ids", "attention_mask"],
        {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "output": {0: "batch"}},
        lambda bs: tokens(np.resize(test, bs), pad="max_length"),
        lambda: load_classifier(Path(model_dir))[0],
        {"kind": "hf-sequence-classifier", "what": "texts"},
    )
