"""Fixed point on mnist-cnn: integer executor, exact torch simulation, ONNX Runtime and C agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantwise.api import lower, quantize
from quantwise.errors import Unsupported, UserError
from quantwise.fixedpoint.cexport import compile_and_run, export_c
from quantwise.fixedpoint.executor import execute, integer_params
from quantwise.fixedpoint.simulate import FixedPointModule, enter
from quantwise.quantized import QuantizedModel
from quantwise.recipes import get_recipe
from quantwise.runtime.base import saturating_weights
from quantwise.tasks.mnist import _build_model

# accuracy gates, as data: the target on the full 4,000-digit test set
MAX_DROP_POINTS = 0.1
MIN_TOP1_AGREEMENT_WITH_ORT = 0.999


@pytest.fixture(scope="module")
def mnist_full():
    from quantwise.tasks import load_task

    return load_task("mnist-cnn")


@pytest.fixture(scope="module", params=[False, True], ids=["scaled", "pot"])
def fixed(request, mnist):
    return quantize(mnist.model, get_recipe("fixed-point", pot_scales=request.param), mnist.calibration)


def _ints(qm, task):
    fin = qm.plan.formats[qm.plan.program.input]
    return np.concatenate([enter(b[0], fin).numpy() for b in task.eval_batches])


def test_integer_executor_equals_exact_torch_simulation(fixed, mnist):
    x = _ints(fixed, mnist)
    trace: dict[str, np.ndarray] = {}
    got = execute(integer_params(fixed.plan), x, trace)
    assert all(v.dtype.kind in "iu" for v in trace.values())  # no float anywhere on the path
    fout = fixed.plan.formats[fixed.plan.program.output]
    with torch.no_grad():
        sim = FixedPointModule(fixed.plan, "exact")(torch.cat([b[0] for b in mnist.eval_batches]))
    assert np.array_equal(np.round(sim.double().numpy() / fout.scale).astype(np.int64), got)


def _ort_refuses_here(qm, task, tmp_path) -> bool:
    """On an x86 CPU without VNNI ONNX Runtime's u8 x s8 kernels would saturate with the plan's
    8-bit weights: the runtime refuses, naming why (tested here instead of the agreement)."""
    if saturating_weights(qm) is None:
        return False
    with pytest.raises(Unsupported, match="no VNNI: the runtime's u8 x s8 int8 kernels saturate"):
        lower(qm, task, "onnxruntime", tmp_path / "refused")
    return True


def test_onnxruntime_runs_every_layer_in_integer_kernels_and_matches(fixed, mnist, tmp_path):
    if _ort_refuses_here(fixed, mnist, tmp_path):
        return
    runner, _ = lower(fixed, mnist, "onnxruntime", tmp_path)
    census = runner.integer_ops()
    assert census["integer"] == census["total"] == 4, census
    fout = fixed.plan.formats[fixed.plan.program.output]
    ort = np.concatenate([np.round(runner.run(b) / fout.scale).astype(np.int64) for b in mnist.eval_batches])
    ours = execute(integer_params(fixed.plan), _ints(fixed, mnist))
    diff = np.abs(ort - ours)
    if fixed.recipe.pot_scales:
        # power-of-two scales: ONNX Runtime's float32 rescale is exact, so it rounds as we do
        assert diff.max() == 0
    else:
        # other scales: ONNX Runtime multiplies by a float32 scale, we by an int32 multiplier
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_c_export_compiles_with_werror_and_is_bit_identical(fixed, mnist, tmp_path):
    x = _ints(fixed, mnist)[:48]
    want = execute(integer_params(fixed.plan), x)
    folder = export_c(fixed, tmp_path / "c")
    assert np.array_equal(compile_and_run(folder, x, want.shape[1]), want)


def test_save_and_load_keep_the_plan(fixed, mnist, tmp_path):
    fixed.save(tmp_path / "fp")
    loaded = QuantizedModel.load(tmp_path / "fp", _build_model())
    x = _ints(fixed, mnist)[:64]
    assert np.array_equal(execute(integer_params(loaded.plan), x), execute(integer_params(fixed.plan), x))
    assert loaded.plan.summary() == fixed.plan.summary()


def test_full_test_set_accuracy_and_agreement_with_onnxruntime(mnist_full, tmp_path):
    qm = quantize(mnist_full.model, "fixed-point", mnist_full.calibration)
    if _ort_refuses_here(qm, mnist_full, tmp_path):
        return
    runner, _ = lower(qm, mnist_full, "integer", tmp_path / "int")
    ort, _ = lower(qm, mnist_full, "onnxruntime", tmp_path / "ort")
    ours = np.concatenate([runner.run(b) for b in mnist_full.eval_batches])
    theirs = np.concatenate([ort.run(b) for b in mnist_full.eval_batches])
    with torch.no_grad():
        fp32 = np.concatenate([mnist_full.model(*b).numpy() for b in mnist_full.eval_batches])
    acc_int, acc_fp = mnist_full.score(ours)["accuracy"], mnist_full.score(fp32)["accuracy"]
    assert acc_fp - acc_int <= MAX_DROP_POINTS / 100
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= MIN_TOP1_AGREEMENT_WITH_ORT
    assert set(runner.report()) == {"features.0", "features.3", "classifier.0", "classifier.2"}


def test_sixteen_bit_activations_refuse_or_saturate_and_onnxruntime_says_why_not(mnist, tmp_path):
    # 16-bit activations times 8-bit weights over 3,136 inputs can outgrow int32 in the worst case
    with pytest.raises(UserError, match=r"32-bit accumulator in classifier\.0 \(needs 3\d bits"):
        quantize(mnist.model, get_recipe("fixed-point", bits=16), mnist.calibration)
    qm = quantize(mnist.model, get_recipe("fixed-point", bits=16, on_overflow="saturate"), mnist.calibration)
    assert {f.bits for f in qm.plan.formats.values()} == {16}
    x = _ints(qm, mnist)[:32]
    p = integer_params(qm.plan)
    got = execute(p, x)
    assert np.array_equal(compile_and_run(export_c(qm, tmp_path / "c"), x, got.shape[1]), got)
    fout = qm.plan.formats[qm.plan.program.output]
    with torch.no_grad():
        ref = mnist.model(torch.cat([b[0] for b in mnist.eval_batches])[:32]).numpy()
    assert (ref.argmax(1) == got.argmax(1)).all()
    assert np.abs(got * fout.scale - ref).max() < 0.05 * np.abs(ref).max()  # 16 bits: far finer than int8
    with pytest.raises(UserError, match="16-bit"):
        lower(qm, mnist, "onnxruntime", tmp_path)


def test_c_arena_never_overlaps_live_tensors_and_is_as_small_as_the_largest_live_set(fixed):
    import math

    from quantwise.fixedpoint.cexport import plan_memory

    plan = fixed.plan
    prog = plan.program
    mem = plan_memory(plan)
    shapes = {prog.input: prog.input_shape} | {n.output: n.attrs["shape"] for n in prog.nodes}
    nbytes = {t: math.prod(shapes[t]) * plan.formats[t].bits // 8 for t in shapes}
    # live set at each step, computed here independently: tensors produced before and read at or after it
    readers = {t: [i for i, n in enumerate(prog.nodes) if t in n.inputs] for t in shapes}
    born = {prog.input: -1} | {n.output: i for i, n in enumerate(prog.nodes)}
    last = {t: max(readers[t] + [born[t]] + ([len(prog.nodes)] if t == prog.output else [])) for t in shapes}
    roots = {t: mem.root[t] for t in shapes}
    span = {
        r: (min(born[t] for t in shapes if roots[t] == r), max(last[t] for t in shapes if roots[t] == r))
        for r in mem.offsets
    }
    live_peak = max(sum(nbytes[r] for r, (a, b) in span.items() if a <= i <= b) for i in range(-1, len(prog.nodes)))
    assert mem.arena_bytes == live_peak  # optimal on this chain
    for r1, (a1, b1) in span.items():
        for r2, (a2, b2) in span.items():
            if r1 < r2 and not (b1 < a2 or b2 < a1):  # alive together: their bytes must not overlap
                o1, o2 = mem.offsets[r1], mem.offsets[r2]
                assert o1 + nbytes[r1] <= o2 or o2 + nbytes[r2] <= o1, (r1, r2)
    assert mem.arena_bytes < mem.unshared_bytes  # buffers are reused
