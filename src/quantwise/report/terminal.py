"""Terminal tables (rich) for result records."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from quantwise.records import Latency, Record


def fmt_metric(v: float | None, fraction: bool = True) -> str:
    """A metric value: a fraction (accuracy) as a percentage, else in its own units (perplexity)."""
    if v is None or v != v:
        return "-"
    return f"{100 * v:.2f}%" if fraction else f"{v:.4g}"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def fmt_ms(lat: Latency | None, key: str = "p50") -> str:
    """A latency; ``~`` marks a measurement flagged noisy (other load, a wide interval, a slow host)."""
    if not lat:
        return "n/a"
    value = lat["p90"] if key == "p90" else lat["p50"]
    return f"{'~' if lat.get('noisy') and key == 'p50' else ''}{value:.2f}"


def int_share(rec: Record) -> str:
    ops = rec.get("integer_ops") or {}
    return f"{ops.get('integer', 0)}/{ops.get('total', 0)}" if ops else "n/a"


def lm_records_table(records: list[Record], title: str) -> Table:
    """One row per causal-LM record: perplexity, agreement with FP32, prefill and decode speed."""
    t = Table(title=title, header_style="bold")
    cols = ("format", "runtime", "perplexity", "KL to FP32", "top-1 agree", "prefill ms", "decode tok/s", "size")
    for col in (*cols, "peak mem", "int ops"):
        t.add_column(col, justify="left" if col in ("format", "runtime") else "right")
    for r in records:
        m, dec = r["metrics"], r.get("decode") or {}
        t.add_row(
            r["recipe"],
            r["runtime"],
            f"{m['perplexity']:.3f}",
            f"{m['kl_to_fp32']:.4f}",
            f"{100 * m['top1_agreement']:.1f}%",
            fmt_ms(r["latency_ms"].get("batch_1")),
            f"{dec['tokens_per_s']:.1f}" if dec.get("status") == "ok" else str(dec.get("status", "n/a")),
            fmt_bytes(r["size_bytes"]),
            fmt_bytes(r["peak_memory_bytes"]),
            int_share(r),
        )
    return t


def records_table(records: list[Record], title: str) -> Table:
    """One row per record: metrics, latency, size, memory, integer share."""
    if records and "perplexity" in records[0]["metrics"]:
        return lm_records_table(records, title)
    t = Table(title=title, header_style="bold")
    for col in (
        "format",
        "runtime",
        "accuracy",
        "macro F1",
        "lat b1 p50 ms",
        "lat b32 p50 ms",
        "size",
        "peak mem",
        "int ops",
    ):
        t.add_column(col, justify="left" if col in ("format", "runtime") else "right")
    for r in records:
        m = r["metrics"]
        t.add_row(
            r["recipe"],
            r["runtime"],
            f"{100 * m['accuracy']:.2f}%",
            f"{m['f1_macro']:.4f}",
            fmt_ms(r["latency_ms"].get("batch_1")),
            fmt_ms(r["latency_ms"].get("batch_32")),
            fmt_bytes(r["size_bytes"]),
            fmt_bytes(r["peak_memory_bytes"]),
            int_share(r),
        )
    return t


def make_console() -> Console:
    """stdout console; wide enough for the compare table when stdout is a file or pipe."""
    import sys

    return Console() if sys.stdout.isatty() else Console(width=220)


def print_records(records: list[Record], title: str, console: Console | None = None) -> None:
    console = console or make_console()
    console.print(records_table(records, title))
    for r in records:
        extra = [
            f"{k}={v:.4f}"
            for k, v in r["metrics"].items()
            if isinstance(v, float) and k not in ("accuracy", "f1_macro")
        ]
        if extra:
            console.print(f"[dim]{r['recipe']} · {r['runtime']}: {', '.join(extra)}[/dim]")
        if r.get("float_layers"):
            names = ", ".join(list(r["float_layers"])[:6]) + (" ..." if len(r["float_layers"]) > 6 else "")
            console.print(f"[yellow]{r['recipe']}: {len(r['float_layers'])} layer(s) kept in float: {names}[/yellow]")
        ops = r.get("integer_ops") or {}
        if ops.get("float") and r["recipe"] != "fp32":
            console.print(
                f"[yellow]{r['recipe']} · {r['runtime']}: {len(ops['float'])} heavy op(s) run in float kernels[/yellow]"
            )


def _side_by_side(result: dict[str, Any], cols: list[str]) -> Table:
    """An empty compare table with ``cols`` (format and runtime left-aligned, figures right)."""
    t = Table(
        title=f"{result['task']}: every format, side by side ({result['settings']['threads']} thread)",
        header_style="bold",
    )
    for c in cols:
        t.add_column(c, justify="left" if c in ("format", "runtime") else "right")
    return t


def _not_ok_row(t: Table, r: dict[str, Any], ncols: int) -> None:
    label = "[yellow]n/a[/yellow]" if r.get("status") == "unsupported" else "[red]failed[/red]"
    t.add_row(r["format"], r["runtime"], label, *[""] * (ncols - 3))


def lm_compare_table(result: dict[str, Any]) -> Table:
    """The side-by-side table of a causal LM's compare: quality vs FP32, prefill and decode speed."""
    base = result["recommendation"].get("baseline_score") or float("nan")
    cols = ["format", "runtime", "perplexity", "Δ ppl", "KL to FP32", "top-1 agree", "zero-shot"]
    cols += ["prefill ms", "decode tok/s", "decode speedup", "size", "peak mem", "quantize s", "int ops"]
    t = _side_by_side(result, cols)
    win = (result["recommendation"].get("winner") or {}).get("key")
    for r in result["records"]:
        k = f"{r['format']} · {r['runtime']}"
        if r.get("status") != "ok":
            _not_ok_row(t, r, len(cols))
            continue
        m, dec = r["metrics"], r.get("decode") or {}
        zs = m.get("zero_shot_accuracy")
        sp = (r.get("speedup") or {}).get("decode_token")
        t.add_row(
            f"[bold green]{r['format']} ★[/bold green]" if k == win else r["format"],
            r["runtime"],
            f"{m['perplexity']:.3f}",
            f"{100 * (m['perplexity'] / base - 1):+.2f}%",
            f"{m['kl_to_fp32']:.4f}",
            f"{100 * m['top1_agreement']:.1f}%",
            f"{100 * zs:.1f}%" if zs is not None else "",
            fmt_ms(r["latency_ms"].get("batch_1")),
            f"{dec['tokens_per_s']:.1f}" if dec.get("status") == "ok" else str(dec.get("status", "n/a")),
            f"{sp:.2f}x" if sp else "n/a",
            fmt_bytes(r["size_bytes"]),
            fmt_bytes(r["peak_memory_bytes"]),
            f"{r['time_to_quantize_s']:.1f}",
            int_share(r),
        )
    return t


def compare_table(result: dict[str, Any]) -> Table:
    """The side-by-side table of a compare run."""
    if any("decode" in r for r in result["records"]):
        return lm_compare_table(result)
    metric = result["recommendation"]["metric"]
    batch_n = f"batch_{result['settings']['batch_n']}"
    b1 = f"batch_{result['settings']['latency_batch']}"
    cols = [
        "format",
        "runtime",
        metric,
        "Δ pts" if result["recommendation"].get("metric_unit", "points") == "points" else "Δ",
        "macro F1",
        f"{b1} p50/p90 ms",
        f"{batch_n} p50/p90 ms",
        "speedup",
        "size",
        "compr.",
        "peak mem",
        "quantize s",
        "int ops",
    ]
    t = _side_by_side(result, cols)
    win = (result["recommendation"].get("winner") or {}).get("key")
    for r in result["records"]:
        k = f"{r['format']} · {r['runtime']}"
        if r.get("status") != "ok":
            _not_ok_row(t, r, len(cols))
            continue
        lat = r["latency_ms"]
        sp = r.get("speedup", {}).get(b1)
        t.add_row(
            f"[bold green]{r['format']} ★[/bold green]" if k == win else r["format"],
            r["runtime"],
            *metric_cells(result, r),
            f"{fmt_ms(lat.get(b1))}/{fmt_ms(lat.get(b1), 'p90')}",
            f"{fmt_ms(lat.get(batch_n))}/{fmt_ms(lat.get(batch_n), 'p90')}",
            f"{sp:.2f}x" if sp else "n/a",
            fmt_bytes(r["size_bytes"]),
            f"{r['compression']:.2f}x" if r.get("compression") else "n/a",
            fmt_bytes(r["peak_memory_bytes"]),
            f"{r['time_to_quantize_s']:.1f}",
            int_share(r),
        )
    return t


def print_compare(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or make_console()
    console.print(compare_table(result))
    if any(v.get("noisy") for r in result["records"] for v in (r.get("latency_ms") or {}).values()):
        console.print(
            "[yellow]~ noisy latency: other processes used the CPU, the 95% interval of the median is wide, "
            "or a reference kernel ran slow (host contention) (results.json: latency_ms.*.other_load, ci95, "
            "reference)[/yellow]"
        )
    console.print(
        "[dim]Δ: change vs FP32 with its 95% paired-bootstrap interval where per-example outcomes exist[/dim]"
    )
    rec = result["recommendation"]
    console.print(
        f"[bold]{rec['message']}[/bold]  (target {rec['target']}, optimize {rec['objective']}, budget {rec['budget']})"
    )
    if rec.get("runner_up"):
        console.print(f"runner-up: {rec['runner_up']['key']}")
    for k, why in rec["others"].items():
        if not why.startswith("runner-up"):
            console.print(f"[dim]  {k}: {why}[/dim]")
    for f, why in (result.get("skipped_formats") or {}).items():
        console.print(f"[dim]  {f}: not run: {why}[/dim]")
    console.print(f"Pareto front, accuracy vs latency: {', '.join(rec['pareto']['latency'])}")
    console.print(f"Pareto front, accuracy vs size: {', '.join(rec['pareto']['size'])}")
    for r in result["records"]:
        pm = (r.get("info") or {}).get("precision_map") if r.get("status") == "ok" else None
        if pm:
            counts: dict[str, int] = {}
            for v in pm.values():
                counts[v] = counts.get(v, 0) + 1
            console.print(
                f"precision map of {r['format']} · {r['runtime']}: "
                + ", ".join(f"{c} × {v}" for v, c in counts.items())
            )
    print_losses(result.get("losses") or {}, console)
    for a in result.get("runtime_agreement") or []:
        if not a["agree"]:
            console.print(
                f"[yellow]runtimes disagree: {a['format']} is {a['difference_points']:+.2f} points in {a['runtimes'][1]} vs "
                f"{a['runtimes'][0]} (95% interval {a['difference_ci'][0]:+.2f} to {a['difference_ci'][1]:+.2f}, "
                f"McNemar p = {a['mcnemar_p']:.3g}, {a['examples_differing']} examples differ)[/yellow]"
            )
    for r in result["records"]:
        par = (r.get("info") or {}).get("runtime_vs_simulation") or {}
        if par.get("status") == "differs":
            console.print(
                f"[yellow]{r['format']} · {r['runtime']} does not compute what its simulation says: {par['reason']} "
                "(results.json: info.runtime_vs_simulation)[/yellow]"
            )
    for n in rec.get("notes", []):
        console.print(f"[yellow]note: {n}[/yellow]")


def print_losses(losses: dict[str, Any], console: Console, rows: int = 3) -> None:
    """Where each explained over-budget format lost accuracy: its most sensitive layers, cause and fix."""
    for fmt, ex in (losses.get("explained") or {}).items():
        s = ex["summary"]
        fr = s.get("fraction", True)
        console.print(
            f"[bold]where {fmt} lost {ex['drop_points']:.4g} {'points' if fr else s['metric']}[/bold] (PyTorch simulation, "
            f"{s['samples']} {s.get('unit', 'samples')}: FP32 {fmt_metric(s['fp32_metric'], fr)}, quantized {fmt_metric(s['quantized_metric'], fr)}):"
        )
        for r in ex["layers"][:rows]:
            sq = "exact" if r["only_sqnr_db"] is None else f"{r['only_sqnr_db']:.1f} dB"
            why = "; ".join(r["causes"]) or "no single cause measured"
            fix = f"; fix: {r['suggestions'][0]}" if r["suggestions"] else ""
            console.print(
                f"  {r['name']}: alone {fmt_metric(r['only_metric'], fr)} (SQNR {sq}), all but it {fmt_metric(r['all_but_metric'], fr)}: {why}{fix}"
            )
        console.print(f"[dim]  more: {ex['command']}[/dim]")
    for fmt, why in (losses.get("not_explained") or {}).items():
        console.print(f"[dim]over budget, not explained: {fmt} ({why})[/dim]")


def metric_cells(result: dict[str, Any], r: dict[str, Any]) -> tuple[str, str, str]:
    """The primary metric's value, its change vs FP32 and the secondary metric (macro F1 when the
    task has it), formatted in the metric's own units (a percentage for fractions)."""
    rec = result["recommendation"]
    metric, frac = rec["metric"], rec.get("metric_unit", "points") == "points"
    v = r["metrics"][metric]
    change = (r.get("metric_change") or {}).get(
        metric, r.get("accuracy_change_points", 0.0) if metric == "accuracy" else 0.0
    )
    f1 = r["metrics"].get("f1_macro")
    unc = r.get("uncertainty") or {}
    ci = unc.get("change_ci") if unc.get("metric", "accuracy") == metric else None
    shown = f"{change:+.2f}" if frac else f"{change:+.4g}"
    if ci:
        shown += f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if frac else f" [{ci[0]:+.3g}, {ci[1]:+.3g}]"
    return (
        f"{100 * v:.2f}%" if frac else f"{v:.4g}",
        shown,
        f"{f1:.4f}" if isinstance(f1, float) else "",
    )
