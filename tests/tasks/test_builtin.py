"""The built-in tasks exactly as DESIGN.md defines them, and their FP32 figures on this machine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantwise.api import evaluate
from quantwise.tasks import load_task


def test_mnist_split_and_fp32_accuracy():
    task = load_task("mnist-cnn")
    assert sum(len(b[0]) for b in task.calibration) == 1000
    assert sum(len(b[0]) for b in task.eval_batches) == 4000
    x = task.eval_batches[0][0]
    assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) == pytest.approx((0 - 0.1307) / 0.3081, abs=1e-5)
    rec = evaluate(task, None, "onnxruntime", measure_memory=False, latency_seconds=0.2)
    assert rec["metrics"]["accuracy"] == pytest.approx(0.99825, abs=1e-9)  # 3993 of 4000
    cm = np.array(rec["metrics"]["confusion_matrix"])
    assert cm.sum() == 4000 and np.trace(cm) == 3993


def test_bbc_split_and_fp32_accuracy():
    """The FP32 accuracy is scored on the PyTorch embeddings of all 668 test articles (kept in the
    task's cache); ONNX Runtime's FP32 export reproduces them on the first 64 (scoring all 668 there
    took a minute of the suite)."""
    task = load_task("bbc-minilm")
    assert task.info["n_train"] + task.info["n_test"] == 2225 and task.info["n_test"] == 668
    assert sum(len(b[0]) for b in task.calibration) == 128
    ids, mask = task.latency_input(1)
    assert ids.shape == (1, 128) and mask.shape == (1, 128)
    fp32 = np.load(task.info["fp32_embeddings"])["test"]
    assert fp32.shape == (668, 384)
    m = task.score(fp32)
    assert m["accuracy"] == pytest.approx(649 / 668, abs=1e-9)  # 97.16%
    head = load_task("bbc-minilm", limit=64)
    rec = evaluate(head, None, "onnxruntime", measure_memory=False, batch_sizes=(1,), latency_seconds=0.2)
    assert rec["metrics"]["accuracy"] == pytest.approx(head.score(fp32[:64])["accuracy"], abs=1e-9)
    assert rec["metrics"]["cosine_to_fp32"] == pytest.approx(1.0, abs=1e-5)
