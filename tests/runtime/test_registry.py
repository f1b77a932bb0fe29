"""The runtime registry: one declaration per runtime, read by every part that names runtimes,
and the format table (``sweep/formats.py``) agreeing with each runtime's capability check."""

from __future__ import annotations

import json

import pytest
from test_cli import run_cli  # tests/ is on sys.path (pytest's rootdir conftest)

from quantwise.api import build_quantized
from quantwise.cli import build_parser
from quantwise.errors import Unsupported
from quantwise.runtime.base import saturating_weights
from quantwise.runtime.registry import RUNTIMES, baseline_runtime, check_can_run
from quantwise.sweep.formats import FORMATS
from quantwise.sweep.profiles import PROFILES

pytestmark = pytest.mark.xdist_group("registry")  # its fixtures are built once, on one worker

# Formats the table deliberately does not sweep in a runtime that could run them, and why.
# Everything else must agree: the table claims a pair exactly when the runtime accepts it.
NOT_SWEPT = {
    (
        "static-int8-minmax",
        "tflite",
    ): "compare runs LiteRT on static-int8-full (without output scales LiteRT keeps layers float)",
    ("static-int8-percentile", "tflite"): "as static-int8-minmax",
    ("static-int8-entropy", "tflite"): "as static-int8-minmax",
    ("static-int8-mse", "tflite"): "as static-int8-minmax",
    ("static-w4a8", "tflite"): "int4 values in int8 kernels: no speed or size gain over static-int8-full in LiteRT",
    ("fixed-point", "torch-int8"): "refused by why_not (kept here only if the check changes)",
    ("mixed", "torch"): "mixed is offered in ONNX Runtime only (its float layers are the point of the format)",
    ("mixed", "torch-int8"): "as mixed in torch",
    ("fp16", "torch-int8"): "refused by why_not",
    ("fp32", "llamacpp"): "llama.cpp runs causal LMs loaded from a .gguf; its lower() refuses other tasks",
}
# Runtimes built from source by the set-up, which may fail without failing set-up (their tests skip, saying so).
OPTIONAL = {"llamacpp"}


SWEEPABLE = [f for f in FORMATS.values() if not f.trains and f.id not in ("mixed",)]


def test_every_runtime_declares_itself_and_the_cli_reads_the_registry():
    for name, spec in RUNTIMES.items():
        assert spec.name == name and spec.help and spec.colour.startswith("#")
        assert spec.baseline in RUNTIMES
        assert baseline_runtime(name) == spec.baseline
    assert PROFILES["this-machine"].runtimes == frozenset(RUNTIMES)
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    for cmd in ("evaluate", "quantize"):
        action = next(a for a in sub[cmd]._actions if a.dest == "runtime")
        assert list(action.choices) == list(RUNTIMES)
        assert all(name in action.help for name in RUNTIMES)


@pytest.fixture(scope="session")  # kept across interleaved modules on its xdist worker
def built(mnist):
    return {f.id: build_quantized(mnist, f.build_recipe()) if f.recipe else None for f in SWEEPABLE}


@pytest.mark.parametrize("fmt_id", [f.id for f in SWEEPABLE])
def test_format_table_agrees_with_capability_checks(built, fmt_id):
    fmt, qm = FORMATS[fmt_id], built[fmt_id]
    for rt, spec in RUNTIMES.items():
        if rt in OPTIONAL and spec.available():
            continue
        assert spec.available() is None, "make test installs every runtime (the tflite extra included)"
        accepts = spec.why_not(qm) is None
        claimed = rt in fmt.runtimes
        if claimed and saturating_weights(qm) and rt in ("onnxruntime", "torch-int8"):
            assert "no VNNI" in (spec.why_not(qm) or ""), "this CPU's int8 kernels saturate: the runtime must refuse"
        elif claimed:
            assert accepts, f"{fmt_id} claims {rt}, which refuses it: {spec.why_not(qm)}"
        elif accepts:
            assert (fmt_id, rt) in NOT_SWEPT, (
                f"{rt} accepts {fmt_id} but the format table leaves it out without a reason"
            )


def test_a_refusal_is_one_unsupported_outcome(built):
    with pytest.raises(Unsupported, match="torch-int8 runs quantized models"):
        check_can_run("torch-int8", None)
    with pytest.raises(Unsupported, match="bf16 has no ONNX Runtime"):
        check_can_run("onnxruntime", built["bf16"])
    with pytest.raises(Unsupported, match="integer runtime runs fixed-point models only"):
        check_can_run("integer", built["static-int8-minmax"])


def test_quantize_in_torch_int8_measures_fp32_in_torch(tmp_path):
    """Was a traceback (exit 1): the FP32 baseline was asked of torch-int8."""
    p = run_cli(
        [
            "quantize",
            "--task",
            "mnist-cnn",
            "--recipe",
            "static-int8",
            "--runtime",
            "torch-int8",
            "--limit",
            "200",
            "--no-memory",
            "--format",
            "json",
        ]
    )
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["runtime"] == "torch-int8" and rec["integer_ops"]["integer"] == 4
    assert rec["baseline"]["metrics"]["accuracy"] > 0.9
