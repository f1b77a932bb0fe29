"""Every compare format in every runtime the format table claims, against the PyTorch simulation
of the same QuantizedModel, on a small CNN (mnist-cnn) and a small transformer (a 2-layer BERT
with random weights). Tolerances and their reasons: ``tolerances.py``.

Not covered here: the QAT formats (they train; ``tests/train`` checks their conversion equals
PTQ's lowering) and LiteRT on the transformer (``test_tflite.py`` covers it on bbc-minilm).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantwise.api import build_quantized, lower
from quantwise.errors import Unsupported
from quantwise.runtime.base import saturating_weights
from quantwise.runtime.registry import RUNTIMES
from quantwise.sweep.formats import FORMATS
from quantwise.tasks.base import Task

from .tolerances import TOLERANCES, kind_of

CNN_FORMATS = [f for f in FORMATS.values() if not f.trains]
PAIRS = [(f.id, rt) for f in CNN_FORMATS for rt in f.runtimes if rt != "torch"]


@pytest.fixture(scope="module")
def tiny_bert() -> Task:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=200,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=32,
        attn_implementation="eager",
    )
    bert = BertModel(cfg).eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, 64)
            h = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            return (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)

    ids = torch.randint(0, 200, (48, 16))
    mask = torch.ones_like(ids)
    batches = [(ids[i : i + 16], mask[i : i + 16]) for i in range(0, 48, 16)]
    return Task(
        name="tiny-bert",
        model=Pooled().eval(),
        calibration=batches[:2],
        eval_batches=batches[2:],
        score=lambda out: {"accuracy": 0.0},
        input_names=["ids", "mask"],
        dynamic_axes={"ids": {0: "b"}, "mask": {0: "b"}, "output": {0: "b"}},
        latency_input=lambda n: (ids[:n], mask[:n]),
        build_model=lambda: Pooled(),
        labels=None,
        validation=batches[:1],
    )


def _check(task: Task, qm, fmt, rt: str, tmp_path) -> None:
    if saturating_weights(qm) and rt in ("onnxruntime", "torch-int8"):
        # an x86 CPU without VNNI: these int8 kernels would saturate, so the runtime refuses (never a silent gap)
        with pytest.raises(Unsupported, match="no VNNI"):
            lower(qm, task, rt, tmp_path / rt)
        return
    ref_runner, _ = lower(qm, task, "torch", tmp_path / "ref")
    runner, _ = lower(qm, task, rt, tmp_path / rt)
    tol = TOLERANCES[(rt, kind_of(fmt.family))]
    batches = task.eval_batches[:1]
    if rt == "tflite":  # one example per call at the converted batch size
        batches = [tuple(t[i : i + 1] for t in batches[0]) for i in range(len(batches[0][0]))]
    ref = np.concatenate([ref_runner.run(b) for b in batches])
    out = np.concatenate([runner.run(b) for b in batches])
    rel = float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-12))
    assert rel <= tol.rel + 1e-7, f"{fmt.id} in {rt}: {rel:.3g} of the output range apart (bound {tol.rel}: {tol.why})"
    if out.ndim == 2 and out.shape[1] > 1:
        agree = float(np.mean(out.argmax(1) == ref.argmax(1)))
        assert agree >= tol.agree, f"{fmt.id} in {rt}: top-1 agreement {agree:.3f} < {tol.agree} ({tol.why})"


@pytest.fixture(scope="module")
def cnn_built(mnist):
    return {}


@pytest.mark.parametrize("fmt_id,rt", PAIRS, ids=[f"{f}-{r}" for f, r in PAIRS])
def test_cnn_runtime_matches_simulation(mnist, cnn_built, fmt_id, rt, tmp_path):
    assert RUNTIMES[rt].available() is None, "make test installs every runtime (the tflite extra included)"
    fmt = FORMATS[fmt_id]
    if fmt_id not in cnn_built:
        cnn_built[fmt_id] = build_quantized(mnist, fmt.build_recipe(1.0, "latency")) if fmt.recipe else None
    _check(mnist, cnn_built[fmt_id], fmt, rt, tmp_path)


TRANSFORMER_PAIRS = [
    (f.id, rt)
    for f in CNN_FORMATS
    for rt in f.runtimes
    if rt not in ("torch", "tflite") and f.family != "fixed-point" and f.id != "mixed"
]


@pytest.mark.parametrize("fmt_id,rt", TRANSFORMER_PAIRS, ids=[f"{f}-{r}" for f, r in TRANSFORMER_PAIRS])
def test_transformer_runtime_matches_simulation(tiny_bert, fmt_id, rt, tmp_path):
    fmt = FORMATS[fmt_id]
    qm = build_quantized(tiny_bert, fmt.build_recipe()) if fmt.recipe else None
    _check(tiny_bert, qm, fmt, rt, tmp_path)
