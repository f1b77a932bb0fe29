"""The typed record (quantwise.records) matches what evaluate writes and what the schema document says."""

from __future__ import annotations

import re
from pathlib import Path

from quantwise import evaluate
from quantwise.records import RECORD_KEYS, Latency

SCHEMA = (Path(__file__).parents[1] / "docs" / "results-schema.md").read_text(encoding="utf-8")


def test_every_record_key_is_documented():
    documented = {w for span in re.findall(r"`([^`]+)`", SCHEMA) for w in re.findall(r"[a-z_0-9]+", span)}
    assert sorted(RECORD_KEYS - documented) == []
    assert sorted(set(Latency.__annotations__) - documented) == []


def test_evaluate_writes_only_declared_keys(mnist):
    rec = evaluate(
        mnist, "static-int8", runtime="onnxruntime", batch_sizes=(1,), measure_memory=False, latency_seconds=0.05
    )
    assert set(rec) <= RECORD_KEYS, sorted(set(rec) - RECORD_KEYS)
    assert set(rec["latency_ms"]["batch_1"]) <= set(Latency.__annotations__)
    # every single-number measurement says how often it was taken
    assert rec["samples"] == {"peak_memory_bytes": 0, "time_to_quantize_s": 1}
