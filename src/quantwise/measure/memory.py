"""Peak memory of inference, measured in a separate process so nothing else is counted.

The child imports the runtime, records its resident-set high-water mark, loads the artifact,
runs one batch, and reports the growth of the high-water mark: the memory the model and its
inference needed beyond the runtime library itself.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def peak_memory(
    runtime: str, artifact: Path, batch: tuple[torch.Tensor, ...], input_names: list[str], threads: int = 1
) -> int | None:
    """Peak extra resident memory in bytes of loading ``artifact`` and running ``batch``; None if it failed."""
    with tempfile.TemporaryDirectory() as d:
        inputs = Path(d) / "inputs.npz"
        arrays: dict[str, Any] = {n: t.numpy() for n, t in zip(input_names, batch)}
        np.savez(inputs, **arrays)
        cmd = [sys.executable, "-m", "quantwise.measure.memory", runtime, str(artifact), str(inputs), str(threads)]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "QUANTWISE_PROGRESS": "0"}
        )
        if proc.returncode != 0:
            return None
        return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"])


def _status_kib(field: str) -> int:
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _baseline() -> int:
    """Current resident memory, after resetting the high-water mark (Linux ``clear_refs`` 5)."""
    import gc

    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass
    return _status_kib("VmRSS") * 1024


def _maxrss() -> int:
    try:
        return _status_kib("VmHWM") * 1024
    except (OSError, RuntimeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _child(runtime: str, artifact: str, inputs: str, threads: int) -> None:
    data = dict(np.load(inputs))
    if runtime == "onnxruntime":
        from quantwise.runtime.onnxrt import OrtRunner  # feeds a causal LM's step graph its empty cache

        base = _baseline()
        OrtRunner(Path(artifact), list(data), threads, census=False).run(
            tuple(torch.from_numpy(v) for v in data.values())
        )
    elif runtime == "llamacpp":
        from quantwise.runtime.llamacpp import LlamaCppRunner

        base = _baseline()
        batch = tuple(torch.from_numpy(v) for v in data.values())
        LlamaCppRunner(Path(artifact), threads, n_ctx=int(batch[0].shape[-1])).run(batch)
    elif runtime == "tflite":
        from quantwise.runtime.tflite import TfliteRunner

        base = _baseline()
        TfliteRunner({1: Path(artifact)}, threads).run(tuple(torch.from_numpy(v) for v in data.values()))
    else:
        torch.set_num_threads(threads)
        import quantwise.runtime.qmodules  # noqa: F401  (classes the pickled module refers to)

        base = _baseline()
        module = torch.load(artifact, weights_only=False)
        with torch.inference_mode():
            module(*(torch.from_numpy(v) for v in data.values()))
    print(json.dumps({"peak_bytes": _maxrss() - base}))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
