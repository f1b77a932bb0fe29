"""Numbers a user can trust: intervals, McNemar's test, noise detection, ties, confident budgets."""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np
import pytest

from quantwise.measure.latency import measure_latency
from quantwise.measure.stats import examples_needed, mcnemar_exact, median_interval, paired_bootstrap
from quantwise.sweep.derive import derive, sample_size_note
from quantwise.sweep.recommend import Budget, recommend


def test_paired_bootstrap_is_seeded_and_brackets_the_change():
    rng = np.random.default_rng(5)
    a = (rng.random(2000) < 0.97).astype(int)
    b = a.copy()
    b[rng.choice(2000, 30, replace=False)] = 0  # the format gets up to 30 more wrong
    got = paired_bootstrap(a, b)
    assert got == paired_bootstrap(a, b)  # fixed seed: the same interval every run
    assert got["ci"][0] <= got["delta"] <= got["ci"][1] < 0
    assert got["level"] == 0.95 and got["resamples"] == 2000 and got["n"] == 2000


def test_mcnemar_exact_matches_the_binomial():
    a = np.array([1] * 10 + [0] * 0 + [1] * 50)
    b = np.array([0] * 10 + [1] * 0 + [1] * 50)
    got = mcnemar_exact(a, b)
    assert got["only_baseline_right"] == 10 and got["only_format_right"] == 0
    assert got["p_value"] == pytest.approx(2 * 0.5**10)
    assert mcnemar_exact(a, a)["p_value"] == 1.0


def _rec(fmt, acc_correct, lat, size=100, family="int8", n_lat=20, spread=0.02, seed=0):
    rng = np.random.default_rng(seed)
    times = lat * (1 + spread * rng.standard_normal(n_lat))
    ci = median_interval(times)
    lat_d = {"p50": float(np.median(times)), "p90": float(np.percentile(times, 90)), "ci95": ci, "n": n_lat}
    return {
        "format": fmt,
        "runtime": "onnxruntime",
        "status": "ok",
        "family": family,
        "metrics": {"accuracy": float(np.mean(acc_correct))},
        "per_example": {"correct": list(map(int, acc_correct))},
        "latency_ms": {"batch_1": lat_d, "batch_32": {**lat_d, "p50": lat_d["p50"] * 20, "ci95": [c * 20 for c in ci]}},
        "size_bytes": size,
        "peak_memory_bytes": 1,
    }


def _table(seed, fewer_right=3):
    rng = np.random.default_rng(100 + seed)
    base = (rng.random(1000) < 0.97).astype(int)
    worse = base.copy()
    worse[np.flatnonzero(base)[:fewer_right]] = 0  # 0.3 points lower by default
    rows = [
        _rec("fp32", base, 10.0, 400, "fp32", seed=seed),
        _rec("a-fast-less-accurate", worse, 5.00, 100, seed=seed + 1),
        _rec("b-as-fast-exact", base, 5.02, 100, seed=seed + 2),  # inside a's noise: a tie
        _rec("c-slow", base, 9.0, 100, seed=seed + 3),
    ]
    derive(rows)
    return rows


def test_a_significantly_more_accurate_format_wins_a_tie_every_time():
    winners, ties = set(), 0
    for seed in range(20):
        r = recommend(
            _table(seed, fewer_right=20), Budget(3.0, False), "latency", speed_batches=["batch_1", "batch_32"]
        )
        winners.add(r["winner"]["format"])
        if r["tie"]:
            ties += 1
            assert r["tie"]["keys"][0] == "b-as-fast-exact · onnxruntime" and "significantly less" in r["tie"]["rule"]
            lost = r["others"]["a-fast-less-accurate · onnxruntime"]
            assert "ties b-as-fast-exact" in lost and "significantly less accurate than b-as-fast-exact" in lost
    assert winners == {"b-as-fast-exact"}  # 2 points (20 examples, McNemar p < 1e-5) decide, whichever is faster
    assert ties >= 15  # 0.4% apart with ~1% wide intervals: a tie nearly always, and said so


def test_a_difference_of_a_few_examples_does_not_decide_a_tie():
    """3 examples of 1,000 (McNemar p = 0.25) is not a difference: the faster median decides."""
    for seed in range(10):
        rows = _table(seed)
        r = recommend(rows, Budget(1.0, False), "latency", speed_batches=["batch_1", "batch_32"])
        if not r["tie"]:
            continue
        faster = min(rows[1:3], key=lambda x: x["latency_ms"]["batch_1"]["p50"])["format"]
        assert r["winner"]["format"] == faster
        other = next(k for k in r["tie"]["keys"][1:])
        assert "a slower median than" in r["others"][other]


def _drifting_table(seed):
    """Like the measured make-compare runs on mnist-cnn: the whole machine drifts by a few percent
    between runs, each format by under 1%; the fastest is 4% ahead of formats one or two test
    examples more accurate, which sit near the edge of the 5% tie margin."""
    rng = np.random.default_rng(seed)
    base = (rng.random(4000) < 0.998).astype(int)
    one_more = base.copy()
    one_more[np.flatnonzero(base == 0)[:1]] = 1
    two_more = base.copy()
    two_more[np.flatnonzero(base == 0)[:2]] = 1
    machine = 1 + 0.05 * rng.random()
    rows = [_rec("fp32", base, 0.3 * machine, 400, "fp32", spread=0.005, seed=seed)]
    for i, (fmt, correct, lat, size) in enumerate(
        (
            ("fastest", base, 0.0900, 100),
            ("qat-like", two_more, 0.0936, 100),
            ("qat-full-like", one_more, 0.0945, 100),
            ("fixed-like", base, 0.0950, 104),
        )
    ):
        lat *= machine * (1 + 0.007 * rng.standard_normal())
        rows.append(_rec(fmt, correct, lat, size, spread=0.005, seed=seed + 10 + i))
    derive(rows)
    return rows


def test_the_recommendation_is_stable_across_quiet_runs():
    winners = {
        recommend(_drifting_table(seed), Budget(1.0, False), "latency", speed_batches=["batch_1"])["winner"]["format"]
        for seed in range(30)
    }
    assert winners == {"fastest"}


def test_a_clearly_smaller_format_wins_a_tie():
    rows = _table(0)
    rows[2]["size_bytes"] = 60  # b: 40% smaller than a, as fast within noise, as accurate within chance
    r = recommend(rows, Budget(1.0, False), "latency", speed_batches=["batch_1", "batch_32"])
    assert r["tie"] and r["winner"]["format"] == "b-as-fast-exact"
    assert "at least 20% larger than b-as-fast-exact" in r["others"]["a-fast-less-accurate · onnxruntime"]


def test_not_faster_with_confidence_is_no_speed_win():
    rows = _table(0)
    rows[3] = _rec("c-slow", rows[3]["per_example"]["correct"], 9.9, 100, spread=0.2, seed=9)  # inside FP32's noise
    derive(rows)
    r = recommend(rows, Budget(1.0, False), "latency", speed_batches=["batch_1", "batch_32"])
    assert "c-slow · onnxruntime" in r["others"] and (
        "confidence" in r["others"]["c-slow · onnxruntime"] or "slower" in r["others"]["c-slow · onnxruntime"]
    )


def test_confident_budget_is_preferred_over_possibly():
    rng = np.random.default_rng(1)
    base = (rng.random(500) < 0.97).astype(int)
    risky = base.copy()
    risky[np.flatnonzero(base)[:2]] = 0  # -0.4 points: within a 0.5 budget, its interval is not
    rows = [
        _rec("fp32", base, 10.0, 400, "fp32"),
        _rec("risky-fast", risky, 3.0, 100, seed=1),
        _rec("exact-slower", base, 6.0, 100, seed=2),
    ]
    derive(rows)
    r = recommend(rows, Budget(0.5, False), "latency", speed_batches=["batch_1"])
    assert r["winner"]["format"] == "exact-slower" and r["winner"]["budget_confidence"] == "confident"
    assert r["runner_up"]["budget_confidence"] == "possibly"
    assert "within budget with 95% confidence" in r["message"]


def test_too_few_examples_for_the_budget_are_said_with_how_many_would_do():
    rows = _table(0)
    assert sample_size_note(rows, 0.1, "points") and str(examples_needed(0.1)) in sample_size_note(rows, 0.1, "points")
    assert sample_size_note(rows, 5.0, "points") is None


def _burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


def test_a_loaded_machine_is_flagged():
    def work() -> None:
        sum(i * i for i in range(20_000))

    quiet = measure_latency(work, iters=20, min_seconds=0.5)
    p = mp.get_context("spawn").Process(target=_burn, args=(6.0,))
    p.start()
    try:
        time.sleep(0.5)
        loaded = measure_latency(work, iters=20, min_seconds=0.5)
    finally:
        p.terminate()
        p.join()
    assert loaded["other_load"] > quiet["other_load"] and loaded["other_load"] > 0.25
    assert loaded["noisy"] and loaded["retimed"]
    assert quiet["ci95"][0] <= quiet["p50"] <= quiet["ci95"][1]


def test_runtimes_that_disagree_on_one_format_are_flagged():
    from quantwise.sweep.derive import runtime_agreement

    rng = np.random.default_rng(3)
    ort = (rng.random(1000) < 0.97).astype(int)
    same = ort.copy()
    same[np.flatnonzero(ort)[:1]] = 0  # one example apart: noise
    worse = ort.copy()
    worse[np.flatnonzero(ort)[:40]] = 0  # 4 points worse in the other runtime: a real difference
    rows = []
    for fmt, other in (("agrees", same), ("differs", worse)):
        for rt, c in (("onnxruntime", ort), ("tflite", other)):
            r = _rec(fmt, c, 5.0)
            r["runtime"] = rt
            rows.append(r)
    got = {a["format"]: a for a in runtime_agreement(rows)}
    assert got["agrees"]["agree"] and got["agrees"]["examples_differing"] == 1
    assert not got["differs"]["agree"] and got["differs"]["difference_ci"][1] < 0 and got["differs"]["mcnemar_p"] < 1e-6


def test_host_contention_seen_by_the_reference_kernel_is_flagged():
    """A slower reference kernel than its best in this process marks the timing noisy, even when
    /proc/stat shows no other process (a contended host is invisible from inside the machine)."""
    from quantwise.measure import latency

    def work() -> None:
        sum(i * i for i in range(5_000))

    first = measure_latency(work, iters=10, min_seconds=0.1)
    assert first["reference"]["slowdown"] >= 1.0 and first["reference"]["best_ms"] > 0
    saved = list(latency._reference_best)
    # as if the host had been five times as fast before: a margin no drift of this host's own speed
    # between two reference timings (seen up to 1.6x on a shared machine) can close
    latency._reference_best[:] = [latency.reference_ms() / 5]
    try:
        slowed = measure_latency(work, iters=10, min_seconds=0.1)
    finally:
        latency._reference_best[:] = saved
    assert slowed["reference"]["slowdown"] > 1.3 and slowed["noisy"] and slowed["retimed"]


def test_perplexity_and_cosine_changes_get_paired_intervals_in_their_direction():
    """Metrics that are means of per-example values (per-window NLL, per-example cosine) get the
    same paired interval as accuracy, in their own units and direction."""
    from quantwise.measure.stats import paired_bootstrap
    from quantwise.sweep.derive import derive
    from quantwise.tasks.base import MetricSpec

    rng = np.random.default_rng(1)
    nll_fp = rng.normal(3.3, 0.2, size=16)
    nll_q = nll_fp + 0.05 + rng.normal(0, 0.01, size=16)  # every window a little worse
    boot = paired_bootstrap(nll_fp, nll_q, from_mean="exp")
    assert boot["delta"] == pytest.approx(np.exp(nll_q.mean()) - np.exp(nll_fp.mean()))

    def rec(fmt, nll):
        return {
            "format": fmt,
            "runtime": "onnxruntime",
            "status": "ok",
            "metrics": {"perplexity": float(np.exp(np.mean(nll)))},
            "per_example": {"nll": list(nll)},
            "latency_ms": {},
            "size_bytes": 1,
        }

    records = [rec("fp32", nll_fp), rec("w4", nll_q)]
    spec = (MetricSpec("perplexity", higher_is_better=False, fraction=False, per_example="nll", from_mean="exp"),)
    derive(records, spec, "perplexity")
    unc = records[1]["uncertainty"]
    rise = records[1]["metric_change"]["perplexity"]
    assert unc["metric"] == "perplexity" and unc["change_points"] == pytest.approx(rise)
    assert 0 < unc["change_ci"][0] < rise < unc["change_ci"][1]
    assert unc["worse_ci"] == unc["change_ci"]  # lower is better: a rise is worse
    assert "mcnemar" not in unc

    cos = [rec("fp32", nll_fp), rec("int8", nll_q)]
    for r, vals in zip(cos, ([1.0] * 16, list(1 - np.abs(rng.normal(0, 0.01, 16))))):
        r["metrics"] = {"cosine": float(np.mean(vals))}
        r["per_example"] = {"cosine": vals}
    derive(cos, (MetricSpec("cosine", per_example="cosine"),), "cosine")
    unc = cos[1]["uncertainty"]
    assert unc["change_ci"][1] < 0 and unc["worse_ci"] == [-unc["change_ci"][1], -unc["change_ci"][0]]
