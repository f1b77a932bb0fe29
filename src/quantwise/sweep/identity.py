"""What makes a compare run the same run: the identity ``--resume`` checks, and record validation.

The identity is a SHA-256 over the model's structure and weights, the calibration, evaluation
and training data, the labels, every setting that changes a result, and quantwise's version.
Every record carries it and a digest of its own content; a record is reused only when both
match (the digest catches edits and corruption; it is not a signature against someone who
recomputes it).
"""

from __future__ import annotations

import hashlib
import json
import math
from importlib import metadata
from typing import Any

import numpy as np
import torch

from quantwise.records import Record
from quantwise.tasks.base import Task


def _version() -> str:
    try:
        return metadata.version("quantwise")
    except metadata.PackageNotFoundError:
        return "unknown"


def _feed_tensors(h: Any, batches: Any) -> None:
    for b in batches:
        for t in b if isinstance(b, tuple) else (b,):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def run_identity(task: Task, settings: dict[str, Any]) -> str:
    """The run's identity (hex SHA-256); ``settings`` are those that change a result."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {"task": task.name, "settings": settings, "quantwise": _version()}, sort_keys=True, default=str
        ).encode()
    )
    h.update(repr(task.model).encode())  # structure
    _feed_tensors(h, [(v,) for _, v in sorted(task.model.state_dict().items())])
    for part in (task.calibration, task.eval_batches, task.validation, task.train_batches):
        _feed_tensors(h, part)
    if task.labels is not None:
        h.update(np.ascontiguousarray(task.labels).tobytes())
    return h.hexdigest()


def _digest(rec: Record | dict[str, Any]) -> str:
    body = {k: v for k, v in rec.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def seal(rec: Record, run_id: str) -> Record:
    """Stamp a finished record with the run identity and its content digest."""
    rec["run_id"] = run_id
    rec["digest"] = _digest(rec)
    return rec


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def why_stale(rec: Any, run_id: str, fmt: str, runtime: str) -> str | None:
    """Why a saved record cannot be reused for ``(fmt, runtime)`` in run ``run_id``, or None."""
    if not isinstance(rec, dict):
        return "it is not a JSON object"
    if rec.get("run_id") != run_id:
        return "it belongs to another run (model, data, settings or quantwise version changed)"
    if rec.get("digest") != _digest(rec):
        return "its content does not match its digest (edited or corrupt)"
    if rec.get("format") != fmt or rec.get("runtime") != runtime:
        return f"it is for {rec.get('format')} · {rec.get('runtime')}"
    status = rec.get("status")
    if status not in ("ok", "unsupported", "failed"):
        return f"unknown status {status!r}"
    if status == "ok":
        metrics, lat = rec.get("metrics"), rec.get("latency_ms")
        if not isinstance(metrics, dict) or not isinstance(lat, dict):
            return "metrics or latency missing"
        if not all(_finite(v) for k, v in metrics.items() if k != "confusion_matrix"):
            return "a metric is not a finite number"
        if not all(isinstance(v, dict) and _finite(v.get("p50")) and v["p50"] > 0 for v in lat.values()):
            return "a latency is not a positive number"
        if not (isinstance(rec.get("size_bytes"), int) and rec["size_bytes"] > 0):
            return "its size is not a positive number of bytes"
    return None
