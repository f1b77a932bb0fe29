"""Decode speed of a generative model: greedy tokens per second with a KV cache, batch 1."""

from __future__ import annotations

import time
from typing import Any

REPEATS = 3
BUDGET_S = 20.0  # no further repeat once this much time went to decoding: a slow format is timed once
WARMUP_PROMPT = 8  # tokens of the prompt the untimed warm-up generation reads
PARITY_TOKENS = 8  # greedy tokens a simulation generates, for parity only (its speed is not timed)


def measure_decode(runner: Any, generation: Any, repeats: int = REPEATS, budget_s: float = BUDGET_S) -> dict[str, Any]:
    """Tokens/s over ``generation.new_tokens`` greedy steps after the prompt's prefill.

    Each token's arrival is timed inside the generation loop: the decode time is from the first
    new token (which ends the prefill) to the last, so it counts only the N cached decode steps.
    Best of ``repeats`` (the least disturbed run on a shared machine), fewer once the runs so far
    took ``budget_s`` (64 tokens at ONNX Runtime's 8-bit level-0 speed take half a minute each;
    ``per_token_ms.n`` says how many ran). ``per_token_ms`` is shaped
    like a latency entry (median, range of the runs as its interval) so that compare can rank on
    decode speed. The greedy tokens are kept for parity checks between runtimes.
    """
    if not hasattr(runner, "generate"):
        return {"status": "n/a", "reason": f"the {getattr(runner, 'runtime', '?')} runner cannot generate"}
    n = int(generation.new_tokens)
    prompt = generation.prompt
    if getattr(runner, "simulated", False):
        return {
            "status": "simulation",
            "reason": "fake-quant simulation computes in float: its decode speed is no deployment speed",
            "prompt_tokens": int(prompt.shape[-1]),
            "greedy_tokens": [int(t) for t in runner.generate(prompt, PARITY_TOKENS)],
        }
    # warm-up of the decode path (a step with the cache) on a short prompt: the full-length prefill
    # is warm from scoring and the prefill timing
    runner.generate(prompt[:, :WARMUP_PROMPT], 2)
    per_token: list[float] = []
    first_ms: list[float] = []
    tokens: list[int] = []
    start = time.perf_counter()
    for _ in range(repeats):
        if per_token and time.perf_counter() - start > budget_s:
            break
        times: list[float] = []
        t0 = time.perf_counter()
        tokens = [int(t) for t in runner.generate(prompt, n + 1, times)]
        if len(times) != n + 1:
            return {"status": "n/a", "reason": f"the runner reported {len(times)} token times for {n + 1} tokens"}
        first_ms.append(1e3 * (times[0] - t0))
        per_token.append(1e3 * (times[-1] - times[0]) / n)
    per_token.sort()
    return {
        "per_token_ms": {
            "p50": per_token[len(per_token) // 2],
            "ci95": [per_token[0], per_token[-1]],
            "n": len(per_token),
        },
        "status": "ok",
        "new_tokens": n,
        "prompt_tokens": int(prompt.shape[-1]),
        "tokens_per_s": float(1e3 / per_token[0]),
        "first_token_ms": float(min(first_ms)),
        "greedy_tokens": tokens,
    }
