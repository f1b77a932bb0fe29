"""measure_decode times each new token inside the generation loop, and spends a bounded time on
slow formats (fewer repeats once the budget is used, the count recorded)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch

from quantwise.measure.decode import measure_decode


class _Runner:
    """A generator whose every token takes ``step_s`` (a stand-in for the runtime, whose speed is the input here)."""

    def __init__(self, step_s: float) -> None:
        self.step_s, self.calls = step_s, 0

    def generate(self, prompt: torch.Tensor, n: int, times: list[float] | None = None) -> list[int]:
        self.calls += 1
        out = []
        for i in range(n):
            time.sleep(self.step_s)
            out.append(i)
            if times is not None:
                times.append(time.perf_counter())
        return out


def test_decode_repeats_until_its_time_budget_and_records_how_many_ran() -> None:
    gen = SimpleNamespace(new_tokens=4, prompt=torch.zeros(1, 3, dtype=torch.long))
    fast, slow = _Runner(0.001), _Runner(0.02)
    f = measure_decode(fast, gen, repeats=3, budget_s=10.0)
    s = measure_decode(slow, gen, repeats=3, budget_s=0.05)  # one run of 5 tokens takes ~0.1 s
    assert f["per_token_ms"]["n"] == 3 and fast.calls == 1 + 3  # warm-up + repeats
    assert s["per_token_ms"]["n"] == 1 and slow.calls == 1 + 1
    assert s["tokens_per_s"] < f["tokens_per_s"] and s["greedy_tokens"] == [0, 1, 2, 3, 4]
    assert 15 <= s["per_token_ms"]["p50"] <= 200  # 20 ms a token, measured between the first and last
