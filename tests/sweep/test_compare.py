"""compare end to end on a small slice of mnist: records, resume, failures, exports."""

from __future__ import annotations

import json

import pytest

from quantwise.api import build_quantized
from quantwise.recipes import get_recipe
from quantwise.runtime.base import saturating_weights
from quantwise.sweep import compare as cmp
from quantwise.sweep.compare import CompareSettings, run_compare
from quantwise.sweep.export import export_recommended
from quantwise.sweep.recommend import Budget

FORMATS = "fp32,dynamic-int8,static-int8-minmax,weight-int8"


def settings(**kw):
    return CompareSettings(
        formats=FORMATS,
        runtimes="onnxruntime",
        max_drop=Budget(1.0, False),
        measure_memory=False,
        latency_seconds=0.2,
        optimize=kw.pop("optimize", "size"),  # a size ranking does not hang on a shared machine's timing noise
        **kw,
    )


def test_compare_records_recommends_and_exports(mnist, tmp_path):
    result = run_compare(mnist, settings(), tmp_path)
    keys = [(r["format"], r["runtime"]) for r in result["records"]]
    assert keys == [
        ("fp32", "onnxruntime"),
        ("dynamic-int8", "onnxruntime"),
        ("static-int8-minmax", "onnxruntime"),
        ("weight-int8", "onnxruntime"),
    ]
    assert all(r["status"] == "ok" for r in result["records"])
    assert len(list((tmp_path / "records").glob("*.json"))) == 4
    st = next(r for r in result["records"] if r["format"] == "static-int8-minmax")
    assert st["integer_ops"]["integer"] == 4 and st["compression"] > 3.5
    # the build (calibration included) happens before evaluate and is counted in the trial's quantize stage
    assert st["stage_seconds"]["quantize"] >= st["time_to_quantize_s"] > 0
    assert result["records"][0]["stage_seconds"]["quantize"] == 0.0  # FP32 builds nothing
    rec = result["recommendation"]
    assert rec["winner"] is not None and rec["winner"]["drop_points"] <= 1.0
    assert set(rec["others"]) | {rec["winner"]["key"]} == {f"{f} · onnxruntime" for f in FORMATS.split(",")[1:]}
    dest = export_recommended(mnist, result, tmp_path)
    meta = json.loads((dest / "quantwise-export.json").read_text())
    assert meta["format"] == rec["winner"]["format"] and (dest / meta["artifact"].rstrip("/")).exists()
    assert meta["verified"]["ok"] and meta["verified"]["checked"] and meta["verified"]["examples"] == 16
    assert not list(dest.glob("*.optimized.onnx")), "the check must leave the export folder as it was"


def test_an_export_that_is_not_what_was_evaluated_is_caught(mnist, tmp_path):
    """Tamper with an exported ONNX file: the re-check reads it back as a user would and sees it."""
    import onnx
    from onnx import numpy_helper

    from quantwise import quantize
    from quantwise.api import evaluate
    from quantwise.sweep.export import verify_export

    qm = quantize(mnist.model, "static-int8", mnist.calibration)
    dest = tmp_path / "exp"
    evaluate(
        mnist,
        "static-int8",
        "onnxruntime",
        out=dest,
        batch_sizes=(1,),
        measure_memory=False,
        latency_seconds=0.05,
        quantized=qm,
    )
    assert verify_export(mnist, qm, "onnxruntime", dest)["identical"]
    m = onnx.load(str(dest / "model.onnx"))
    init = next(
        t for t in m.graph.initializer if numpy_helper.to_array(t).dtype.kind == "f" and t.dims and t.dims[0] == 10
    )
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 1.0, init.name))  # the last layer's bias
    onnx.save(m, str(dest / "model.onnx"))
    got = verify_export(mnist, qm, "onnxruntime", dest)
    assert not got["ok"] and got["max_abs_diff"] > 0.5


def test_interrupted_run_resumes_without_recomputing(mnist, tmp_path, monkeypatch):
    real = cmp._run_one
    calls = []

    def interrupt_third(task, fmt, runtime, s, built=None):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(fmt.id)
        return real(task, fmt, runtime, s, built)

    monkeypatch.setattr(cmp, "_run_one", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        run_compare(mnist, settings(), tmp_path)
    assert sorted(p.stem for p in (tmp_path / "records").glob("*.json")) == [
        "dynamic-int8__onnxruntime",
        "fp32__onnxruntime",
    ]
    finished = {p.name: p.read_text() for p in (tmp_path / "records").glob("*.json")}

    resumed = []

    def count(task, fmt, runtime, s, built=None):
        resumed.append(fmt.id)
        return real(task, fmt, runtime, s, built)

    monkeypatch.setattr(cmp, "_run_one", count)
    result = run_compare(mnist, settings(), tmp_path, resume=True)
    assert resumed == ["static-int8-minmax", "weight-int8"]
    assert len(result["records"]) == 4
    for name, text in finished.items():
        assert (tmp_path / "records" / name).read_text() == text


def test_failing_format_is_recorded_and_others_go_on(mnist, tmp_path, monkeypatch):
    import quantwise.sweep.compare as c

    real = c.evaluate

    def flaky(task, recipe, runtime, **kw):
        if recipe is not None and recipe.name == "dynamic-int8":
            raise RuntimeError("ONNX export failed: planted")
        return real(task, recipe, runtime, **kw)

    monkeypatch.setattr(c, "evaluate", flaky)
    result = run_compare(mnist, settings(), tmp_path)
    bad = [r for r in result["records"] if r["status"] != "ok"]
    assert [r["format"] for r in bad] == ["dynamic-int8"] and "planted" in bad[0]["error"]
    assert sum(r["status"] == "ok" for r in result["records"]) == 3
    assert result["recommendation"]["others"]["dynamic-int8 · onnxruntime"].startswith("failed")


def test_resume_recomputes_records_of_another_run_and_edited_records(mnist, tmp_path, capsys):
    """Resume cannot lie: a changed model, or an edited record, is recomputed with a warning."""
    import copy
    import json

    import torch

    st = CompareSettings(formats="fp32,dynamic-int8", runtimes="onnxruntime", measure_memory=False, latency_seconds=0.1)
    first = run_compare(mnist, st, tmp_path)
    rec_file = tmp_path / "records" / "dynamic-int8__onnxruntime.json"
    rec = json.loads(rec_file.read_text())
    rec["size_bytes"] = 1  # a fake size that would win --optimize size
    rec_file.write_text(json.dumps(rec))
    again = run_compare(mnist, st, tmp_path, resume=True)
    err = capsys.readouterr().err
    assert "recomputing dynamic-int8 · onnxruntime" in err and "digest" in err
    fp32 = [r for r in again["records"] if r["format"] == "fp32"][0]
    assert fp32 == [r for r in first["records"] if r["format"] == "fp32"][0]  # the valid record was reused as is
    assert [r for r in again["records"] if r["format"] == "dynamic-int8"][0]["size_bytes"] > 1

    changed = copy.copy(mnist)
    changed.model = copy.deepcopy(mnist.model)
    with torch.no_grad():
        next(changed.model.parameters()).mul_(0.0)  # the model behind the task changed
    changed.info = {}
    third = run_compare(changed, st, tmp_path, resume=True)
    assert "different model, data or settings" in capsys.readouterr().err
    acc = {r["format"]: r["metrics"]["accuracy"] for r in third["records"] if r["status"] == "ok"}
    assert acc["fp32"] != [r for r in first["records"] if r["format"] == "fp32"][0]["metrics"]["accuracy"]


def test_mcu_profile_offers_only_fixed_point_and_exports_c(mnist, tmp_path):
    s = CompareSettings(
        formats="fp32,static-int8-minmax,fixed-point",
        runtimes="integer,onnxruntime",
        target="mcu-no-fpu",
        max_drop=Budget(1.0, False),
        measure_memory=False,
        latency_seconds=0.2,
    )
    result = run_compare(mnist, s, tmp_path)
    by_key = {(r["format"], r["runtime"]): r for r in result["records"]}
    assert by_key[("fixed-point", "integer")]["integer_ops"]["integer"] == 4
    if saturating_weights(build_quantized(mnist, get_recipe("fixed-point"))):
        # an x86 CPU without VNNI: ONNX Runtime's int8 kernels would saturate with the plan's 8-bit weights
        assert "no VNNI" in by_key[("fixed-point", "onnxruntime")]["error"]
    else:
        assert by_key[("fixed-point", "onnxruntime")]["integer_ops"]["integer"] == 4
    rec = result["recommendation"]
    assert rec["winner"]["key"] == "fixed-point · integer"
    assert "no kernels on mcu-no-fpu" in rec["others"]["static-int8-minmax · onnxruntime"]
    dest = export_recommended(mnist, result, tmp_path)
    meta = json.loads((dest / "quantwise-export.json").read_text())
    assert meta["verified"]["ok"] and meta["verified"]["identical"]  # the integer executor, reloaded: bit for bit
    assert meta["artifact"] == "c/" and (dest / "c" / "qw_model.c").exists() and (dest / "quantized").is_dir()
    assert (
        f"#define QW_ARENA_BYTES {meta['c_memory']['activation_ram_bytes']} " in (dest / "c" / "qw_model.h").read_text()
    )


def test_a_model_fixed_point_cannot_capture_is_not_applicable_and_the_rest_go_on(mnist, tmp_path):
    import dataclasses

    from torch import nn

    class Sigmoidal(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = mnist.build_model()
            self.gate = nn.Sigmoid()

        def forward(self, x):
            return self.gate(self.inner(x))

    task = dataclasses.replace(mnist, model=Sigmoidal().eval())
    s = CompareSettings(
        formats="fp32,fixed-point", runtimes="integer,onnxruntime", measure_memory=False, latency_seconds=0.2
    )
    result = run_compare(task, s, tmp_path)
    fx = [r for r in result["records"] if r["format"] == "fixed-point"]
    assert [r["status"] for r in fx] == ["unsupported", "unsupported"]
    assert "layer 'gate' (aten.sigmoid" in fx[0]["error"]
    assert result["recommendation"]["others"]["fixed-point · integer"].startswith("not applicable")
    assert [r["status"] for r in result["records"] if r["format"] == "fp32"] == ["ok", "ok"]


def test_compare_in_tflite_reports_integer_tensors_and_our_scales(mnist, tmp_path):
    import litert_torch  # noqa: F401  (installed by make test: a missing extra fails here rather than skipping)

    s = CompareSettings(
        formats="fp32,static-int8-full,weight-int8",
        runtimes="tflite",
        measure_memory=True,
        latency_seconds=0.2,
        optimize="size",
    )
    result = run_compare(mnist, s, tmp_path)
    by = {(r["format"], r["runtime"]): r for r in result["records"]}
    assert set(by) == {
        ("fp32", "tflite"),
        ("static-int8-full", "tflite"),
    }  # weight-int8 lists no tflite: LiteRT folds it to float
    full = by[("static-int8-full", "tflite")]
    assert full["status"] == "ok" and full["integer_ops"]["integer"] == 4 and full["speedup"]["batch_1"] > 0
    assert full["tflite"]["quantwise_scales"]["not_in_file"] == [] and full["peak_memory_bytes"]
    assert abs(full["accuracy_change_points"]) <= 0.5
    assert result["recommendation"]["winner"]["key"] == "static-int8-full · tflite"
    dest = export_recommended(mnist, result, tmp_path)
    meta = json.loads((dest / "quantwise-export.json").read_text())
    assert meta["verified"]["ok"]
    assert meta["artifact"] == "model_b1.tflite" and (dest / meta["artifact"]).stat().st_size > 0


def test_within_budget_decides_which_built_models_compare_keeps():
    from quantwise.sweep.compare import within_budget
    from quantwise.sweep.recommend import Budget
    from quantwise.tasks.base import MetricSpec

    class T:  # a task's metric declaration is all within_budget reads
        @staticmethod
        def metric_spec():
            return MetricSpec("perplexity", higher_is_better=False, fraction=False)

    recs = [
        {"format": "fp32", "status": "ok", "metrics": {"perplexity": 20.0}},
        {"format": "a", "status": "ok", "metrics": {"perplexity": 20.3}},
        {"format": "b", "status": "ok", "metrics": {"perplexity": 21.0}},
        {"format": "c", "status": "unsupported"},
    ]
    two_percent = Budget(2.0, True)  # perplexity may rise by 0.4
    assert within_budget(recs, "a", T, two_percent)
    assert not within_budget(recs, "b", T, two_percent)
    assert not within_budget(recs, "c", T, two_percent)
    assert within_budget(recs[1:], "b", T, two_percent)  # no FP32 yet: nothing is ruled out


@pytest.mark.parametrize("native", [False, True, None])
def test_the_default_set_skips_bf16_only_where_the_cpu_has_no_bf16_instructions(mnist, monkeypatch, native):
    """bf16 on a CPU without bf16 instructions is emulated (slower than FP32): left out of the
    default set with the reason, run when named; kept where the CPU has them or cannot be read."""
    from quantwise.sweep.formats import select_formats

    monkeypatch.setattr(cmp, "native_bf16", lambda: native)
    default = CompareSettings(runtimes="torch")
    skipped = cmp.skipped_formats(select_formats(None, "torch"), default, mnist)
    if native is False:
        assert skipped["bf16"].startswith("this CPU has no bf16 instructions") and "--formats bf16" in skipped["bf16"]
    else:
        assert "bf16" not in skipped
    named = CompareSettings(formats="fp32,bf16", runtimes="torch")
    assert "bf16" not in cmp.skipped_formats(select_formats("fp32,bf16", "torch"), named, mnist)
    no_train = CompareSettings(runtimes="torch", train=False)
    assert cmp.skipped_formats(select_formats(None, "torch"), no_train, mnist)["qat-w8a8"] == "--no-train"
