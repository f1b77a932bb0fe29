"""compare explains where the formats over the budget lost accuracy, layer by layer."""

from __future__ import annotations

import pytest

from quantwise.explain import run as explain_run
from quantwise.report.html import losses_html
from quantwise.sweep.compare import CompareSettings, run_compare
from quantwise.sweep.losses import explain_command, over_budget
from quantwise.sweep.recommend import Budget


def _rec(fmt: str, runtime: str, acc: float, status: str = "ok") -> dict:
    return {"format": fmt, "runtime": runtime, "status": status, "metrics": {"accuracy": acc}}


def test_over_budget_takes_each_formats_worst_runtime_and_sorts_worst_first():
    records = [
        _rec("fp32", "torch", 0.95),
        _rec("a", "torch", 0.94),
        _rec("a", "onnxruntime", 0.93),
        _rec("b", "torch", 0.90),
        _rec("c", "torch", 0.9451),
        _rec("d", "torch", 0.0, "failed"),
    ]
    rec = {"baseline_score": 0.95, "budget_points": 0.5, "metric": "accuracy"}
    got = over_budget(records, rec)
    assert list(got) == ["b", "a"]  # c is within 0.5 points; a failed format has no accuracy to explain
    assert got["a"] == pytest.approx(2.0) and got["b"] == pytest.approx(5.0)


def test_the_suggested_command_reproduces_the_format():
    assert (
        explain_command("t", "static-int8-entropy")
        == "quantwise explain --task t --recipe static-int8 --calibration entropy"
    )
    assert (
        explain_command("t", "weight-int4-g32-gptq")
        == "quantwise explain --task t --recipe weight-int4 --group-size 32 --method gptq"
    )
    assert "quantize_outputs: true in a --recipe-file" in explain_command("t", "static-int8-full")


def _settings(**kw) -> CompareSettings:
    return CompareSettings(
        formats="fp32,static-int8-minmax,fp16",
        runtimes="onnxruntime",
        max_drop=Budget(0.5, False),
        measure_memory=False,
        latency_seconds=0.1,
        explain_samples=64,
        **kw,
    )


def test_compare_names_the_layer_that_lost_accuracy_and_resume_reuses_it(mnist_dim_calibration, tmp_path, monkeypatch):
    mnist = mnist_dim_calibration  # calibrated on dimmed digits: the first layer's input range clips the strokes
    result = run_compare(mnist, _settings(), tmp_path)
    drop = {r["format"]: -r["accuracy_change_points"] for r in result["records"]}
    assert drop["static-int8-minmax"] > 0.5
    ex = result["losses"]["explained"]["static-int8-minmax"]
    first = ex["layers"][0]
    assert first["name"] == "features.0" and any("clipping" in c for c in first["causes"]), first
    assert first["only_metric"] < ex["summary"]["fp32_metric"] and ex["summary"]["samples"] == 64
    assert ex["command"].endswith("--recipe static-int8 --calibration minmax")
    html = losses_html(result["losses"])
    assert "Where accuracy was lost" in html and "features.0" in html

    def must_not_run(*a, **k):
        raise AssertionError("explain ran again on --resume")

    monkeypatch.setattr(explain_run, "explain", must_not_run)
    again = run_compare(mnist, _settings(), tmp_path, resume=True)
    assert again["losses"]["explained"] == result["losses"]["explained"]
    off = run_compare(mnist, _settings(explain="none"), tmp_path, resume=True)
    assert off["losses"] == {"explained": {}, "not_explained": {"static-int8-minmax": "--explain none"}}


def test_a_failed_explanation_is_reported_and_the_next_format_is_explained(mnist, tmp_path, monkeypatch):
    from quantwise.sweep import losses

    records = [
        _rec("fp32", "onnxruntime", 1.0),
        _rec("static-int8-entropy", "onnxruntime", 0.90),
        _rec("weight-int4-g32", "onnxruntime", 0.95),
    ]
    rec = {"baseline_score": 1.0, "budget_points": 1.0, "metric": "accuracy"}
    calls = []

    def flaky(task, recipe, samples, top, qm=None):
        calls.append(recipe.name)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return {"recipe": recipe.to_dict(), "summary": {}, "evaluations": 2, "layers": []}

    monkeypatch.setattr(explain_run, "explain", flaky)
    got = losses.explain_losses(mnist, records, rec, "worst", 8, tmp_path, False, {})
    assert got["not_explained"] == {"static-int8-entropy": "explain failed: RuntimeError: boom"}
    assert list(got["explained"]) == ["weight-int4-g32"] and calls == ["static-int8", "weight-int4"]
