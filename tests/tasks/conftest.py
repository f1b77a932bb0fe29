"""Fixtures shared by the tests of user models and data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantwise.runtime.onnxrt import export_onnx


@pytest.fixture(scope="module")
def mnist_files(mnist, tmp_path_factory):
    """The built-in CNN exported to ONNX (``m.onnx``) with its test digits as ``d.npz`` (labelled) and ``x.npy``."""
    d = tmp_path_factory.mktemp("mnist-onnx")
    export_onnx(mnist.model, mnist.calibration[0], d / "m.onnx", ["image"], {"image": {0: "batch"}}, ["logits"])
    images = torch.cat([b[0] for b in mnist.eval_batches]).numpy()
    np.savez(d / "d.npz", image=images, labels=mnist.labels)
    np.save(d / "x.npy", images)
    return d
