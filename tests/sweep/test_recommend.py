"""The recommendation on constructed result tables: budgets, ties, nothing within budget, targets."""

from __future__ import annotations

import pytest

from quantwise.errors import UserError
from quantwise.sweep.profiles import get_profile
from quantwise.sweep.recommend import Budget, pareto_front, parse_budget, recommend


def rec(fmt, runtime, acc, lat, size, family="int8", status="ok", mem=100):
    return {
        "format": fmt,
        "runtime": runtime,
        "status": status,
        "family": family,
        "metrics": {"accuracy": acc},
        "latency_ms": {"batch_1": {"p50": lat, "p90": lat}},
        "size_bytes": size,
        "peak_memory_bytes": mem,
    }


BASE = [rec("fp32", "onnxruntime", 0.9700, 10.0, 1000, "fp32"), rec("fp32", "torch", 0.9700, 12.0, 1000, "fp32")]


def test_budget_parsing():
    assert parse_budget("0.5") == Budget(0.5, False)
    assert parse_budget("1%") == Budget(1.0, True)
    assert Budget(1.0, True).points(0.97) == pytest.approx(0.97)
    with pytest.raises(UserError, match="not a number"):
        parse_budget("half")
    with pytest.raises(UserError, match="at least 0"):
        parse_budget("-1")


def test_budget_edge_is_inclusive():
    rows = BASE + [rec("a", "onnxruntime", 0.9650, 4.0, 300), rec("b", "onnxruntime", 0.96499, 3.0, 300)]
    r = recommend(rows, Budget(0.5, False))
    assert r["winner"]["format"] == "a"  # exactly 0.50 points: inside
    assert r["others"]["b · onnxruntime"].startswith("over budget")


def test_relative_budget():
    rows = BASE + [rec("a", "onnxruntime", 0.9610, 4.0, 300)]  # drops 0.90 points
    assert recommend(rows, Budget(1.0, True))["winner"]["format"] == "a"  # 1% of 97 = 0.97 points
    assert recommend(rows, Budget(0.5, True))["winner"] is None


def test_ties_break_on_accuracy_then_size():
    rows = BASE + [
        rec("a", "onnxruntime", 0.9690, 5.0, 300),
        rec("b", "onnxruntime", 0.9695, 5.0, 400),
        rec("c", "onnxruntime", 0.9695, 5.0, 200),
    ]
    r = recommend(rows, Budget(1.0, False))
    assert r["winner"]["format"] == "c" and r["runner_up"]["format"] == "b"
    assert "ties" in r["others"]["a · onnxruntime"]


def test_nothing_within_budget_names_the_closest_and_never_answers_fp32():
    rows = BASE + [rec("a", "onnxruntime", 0.90, 4.0, 300), rec("b", "onnxruntime", 0.95, 3.0, 300)]
    r = recommend(rows, Budget(0.5, False))
    assert r["winner"] is None
    assert r["closest"]["key"] == "b · onnxruntime" and r["closest"]["drop_points"] == pytest.approx(2.0)
    assert "no quantized format meets the budget" in r["message"] and "closest: b · onnxruntime" in r["message"]


def test_slower_than_fp32_is_never_a_speed_win():
    rows = BASE + [rec("dyn", "onnxruntime", 0.97, 80.0, 300), rec("sim", "torch", 0.97, 13.0, 300)]
    r = recommend(rows, Budget(1.0, False), "latency")
    assert r["winner"] is None
    assert "slower than FP32 at batch 1" in r["others"]["dyn · onnxruntime"]
    # ...but it can win on size
    assert recommend(rows, Budget(1.0, False), "size")["winner"]["format"] in ("dyn", "sim")


def test_a_format_no_smaller_than_fp32_is_never_a_size_win():
    rows = BASE + [rec("tiny-dyn", "onnxruntime", 0.97, 9.0, 1000), rec("w8", "torch", 0.97, 13.0, 400)]
    r = recommend(rows, Budget(1.0, False), "size")
    assert r["winner"]["format"] == "w8"
    assert r["others"]["tiny-dyn · onnxruntime"] == "not smaller than FP32 in onnxruntime (1000 vs 1000 bytes)"


def test_target_without_kernels_and_unmeasured_latency():
    rows = BASE + [
        rec("int8", "onnxruntime", 0.97, 4.0, 300, "int8"),
        rec("fp16", "torch", 0.97, 30.0, 500, "fp16"),
        rec("bf16", "torch", 0.97, 9.0, 500, "bf16"),
    ]
    r = recommend(rows, Budget(1.0, False), "latency", get_profile("arm64"))
    assert r["winner"]["format"] == "int8"
    assert "no kernels on arm64" in r["others"]["bf16 · torch"]
    assert any("not measured on arm64" in n for n in r["notes"])
    # on a target measured latency does not describe, fp16 slower here still counts: it has kernels there
    assert r["runner_up"]["format"] == "fp16"
    mcu = recommend(rows, Budget(1.0, False), "latency", get_profile("mcu-no-fpu"))
    assert mcu["winner"] is None and all("no kernels on mcu-no-fpu" in v for v in mcu["others"].values())


def test_failed_format_is_reported_with_its_error():
    rows = BASE + [{"format": "x", "runtime": "onnxruntime", "status": "failed", "error": "RuntimeError: boom"}]
    assert recommend(rows, Budget(1.0, False))["others"]["x · onnxruntime"] == "failed: RuntimeError: boom"


def test_pareto_front():
    pts = [("a", 1.0, 0.90), ("b", 2.0, 0.95), ("c", 3.0, 0.94), ("d", 0.5, 0.80), ("e", 2.0, 0.95)]
    assert set(pareto_front(pts)) == {"a", "b", "d", "e"}


def test_no_baseline_is_an_error():
    with pytest.raises(UserError, match="FP32 baseline"):
        recommend([rec("a", "onnxruntime", 0.9, 1, 1)], Budget(1, False))


def test_a_lower_is_better_metric_is_budgeted_in_its_direction():
    """Perplexity: a 2% budget allows a rise of 2% over FP32, never a fall being called a loss."""
    from quantwise.tasks.base import MetricSpec

    def ppl(fmt, runtime, value, lat, family="int8"):
        r = rec(fmt, runtime, 0.0, lat, 500, family)
        r["metrics"] = {"perplexity": value}
        return r

    rows = [
        ppl("fp32", "onnxruntime", 20.0, 10.0, "fp32"),
        ppl("w8", "onnxruntime", 20.3, 6.0),
        ppl("w4", "onnxruntime", 21.0, 4.0),
        ppl("better", "onnxruntime", 19.9, 8.0),
    ]
    spec = MetricSpec("perplexity", higher_is_better=False, fraction=False)
    r = recommend(rows, Budget(2.0, True), "latency", metric=spec)
    assert r["winner"]["format"] == "w8" and r["winner"]["drop_points"] == pytest.approx(0.3)
    assert r["budget_points"] == pytest.approx(0.4) and r["metric_unit"] == "perplexity"
    assert (
        "over budget" in r["others"]["w4 · onnxruntime"] and "perplexity worse by 1" in r["others"]["w4 · onnxruntime"]
    )
    assert r["runner_up"]["format"] == "better" and r["runner_up"]["drop_points"] == pytest.approx(-0.1)
    absolute = recommend(rows, Budget(1.5, False), "latency", metric=spec)  # 1.5 perplexity units
    assert absolute["winner"]["format"] == "w4"
    assert "better · onnxruntime" in r["pareto"]["latency"] and "w4 · onnxruntime" in r["pareto"]["latency"]


def test_a_decode_winner_with_a_slower_prefill_gets_a_note() -> None:
    from quantwise.sweep.derive import prefill_note

    def rec(fmt: str, lo: float, hi: float) -> dict:
        return {
            "format": fmt,
            "runtime": "onnxruntime",
            "latency_ms": {"batch_1": {"p50": (lo + hi) / 2, "ci95": [lo, hi]}},
        }

    base = rec("fp32", 1900, 2000)
    note = prefill_note([base, rec("w8a8-g32", 2900, 3100)], "w8a8-g32 · onnxruntime")
    assert note is not None and "1.54x FP32's 1950 ms" in note and "--optimize prefill" in note
    assert prefill_note([base, rec("w8a8-g32", 1950, 2100)], "w8a8-g32 · onnxruntime") is None  # overlapping: a tie
    assert prefill_note([base, rec("w4a8-g32", 1500, 1600)], "w4a8-g32 · onnxruntime") is None
