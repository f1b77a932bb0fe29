"""Typed result records: the keys of a result record and its parts, as mypy checks them.

Records stay plain dicts at run time (so ``results.json``, ``records/*.json`` and ``quantize
--format json`` are exactly what docs/results-schema.md describes), but every producer and
consumer names them through these types: a misspelt or undocumented key is a type error, and
``tests/test_records.py`` checks that the keys here and the keys in the schema document agree.
"""

from __future__ import annotations

from typing import Any, TypedDict


class Latency(TypedDict, total=False):
    """One timed batch size (``latency_ms.batch_N``)."""

    p50: float
    p90: float
    ci95: list[float]
    n: int
    other_load: float | None
    noisy: bool
    retimed: bool
    reference: dict[str, float]


class Record(TypedDict, total=False):
    """One format in one runtime (schema ``quantwise.result/1``)."""

    schema: str
    format: str
    family: str
    task: str
    recipe: str
    recipe_params: dict[str, Any]
    runtime: str
    status: str
    error: str
    traceback: str
    metrics: dict[str, Any]
    latency_ms: dict[str, Latency]
    per_example: dict[str, list[float]]
    decode: dict[str, Any]
    size_bytes: int
    peak_memory_bytes: int | None
    samples: dict[str, int]
    time_to_quantize_s: float
    integer_ops: dict[str, Any]
    fixed_point: dict[str, Any] | None
    tflite: dict[str, Any] | None
    gguf: dict[str, Any] | None
    quantized_layers: list[str]
    float_layers: dict[str, str]
    info: dict[str, Any]
    env: dict[str, Any]
    baseline: dict[str, Any]
    metric_change: dict[str, float]
    accuracy_change_points: float
    speedup: dict[str, float]
    speedup_ci: dict[str, list[float]]
    compression: float | None
    uncertainty: dict[str, Any]
    built_on: dict[str, Any]
    measured_on: dict[str, Any]
    stage_seconds: dict[str, Any]
    eval_shards: list[dict[str, Any]]
    run_id: str
    digest: str


RECORD_KEYS = frozenset(Record.__annotations__)
