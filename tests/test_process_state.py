"""Library calls leave the caller's process as they found it: threads, environment, warning
filters and logging (the CLI may set its own, inside ``main`` only)."""

from __future__ import annotations

import logging
import os
import warnings

import torch

from quantwise import evaluate, quantize


def _state():
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    return (
        torch.get_num_threads(),
        env,
        list(warnings.filters),
        logging.root.manager.disable,
        torch.backends.quantized.engine,
    )


def _work(mnist):
    qm = quantize(mnist.model, "static-int8", mnist.calibration)
    kw = {"threads": 1, "batch_sizes": (1,), "measure_memory": False, "latency_seconds": 0.05}
    evaluate(mnist, "static-int8", runtime="torch-int8", quantized=qm, **kw)
    evaluate(mnist, None, runtime="onnxruntime", **kw)


def test_quantize_and_evaluate_restore_process_state(mnist):
    _work(mnist)  # third-party libraries set what they set when first imported (OpenMP variables): not ours
    before, engine = torch.get_num_threads(), torch.backends.quantized.engine
    torch.set_num_threads(2)
    # a caller's own quantized engine (not the x86 one torch-int8 packs for) stays theirs
    other = next(e for e in torch.backends.quantized.supported_engines if e not in ("x86", "none"))
    torch.backends.quantized.engine = other
    try:
        threads, env, filters, disable, _ = _state()
        _work(mnist)
        after = _state()
    finally:
        torch.set_num_threads(before)
        torch.backends.quantized.engine = engine
    assert after[4] == other
    assert after[0] == threads == 2
    assert {k: v for k, v in after[1].items() if env.get(k) != v} == {}
    assert [k for k in env if k not in after[1]] == []
    assert after[2] == filters and after[3] == disable


def test_cli_main_restores_warning_filters():
    from quantwise.cli import main

    before = list(warnings.filters)
    assert main(["recipes"]) == 0
    assert list(warnings.filters) == before
