"""``explain``'s result in the terminal (a rich table) and as JSON + a self-contained HTML page."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from quantwise.outdir import atomic_dir
from quantwise.report.html import fmt_sqnr, layers_table_html
from quantwise.report.terminal import fmt_metric


def explain_table(result: dict[str, Any], rows: int = 15) -> Table:
    s = result["summary"]
    m = s["metric"]
    fr = s.get("fraction", True)
    per = "per-block" if s.get("groups") else "per-layer"
    t = Table(
        title=f"{result['task']} · {result['recipe']['recipe']}: {per} sensitivity on {s['samples']} {s.get('unit', 'samples')} "
        f"(FP32 {fmt_metric(s['fp32_metric'], fr)}, all quantized {fmt_metric(s['quantized_metric'], fr)}, SQNR {fmt_sqnr(s['quantized_sqnr_db'])} dB)",
        header_style="bold",
    )
    for c in (
        "layer",
        f"only it: {m}",
        "only it: SQNR dB",
        f"all but it: {m}",
        "all but it: SQNR dB",
        "measured cause",
        "suggestion",
    ):
        t.add_column(c, justify="left" if c in ("layer", "measured cause", "suggestion") else "right", overflow="fold")
    for r in result["layers"][:rows]:
        t.add_row(
            r["name"],
            fmt_metric(r["only_metric"], fr),
            fmt_sqnr(r["only_sqnr_db"]),
            fmt_metric(r["all_but_metric"], fr),
            fmt_sqnr(r["all_but_sqnr_db"]),
            "; ".join(r["causes"]),
            "; ".join(r["suggestions"][:2]),
        )
    return t


def write_explain(result: dict[str, Any], out: Path) -> None:
    """``explain.json`` and a self-contained ``explain.html`` in ``out``."""
    with atomic_dir(out) as tmp:
        for name, text in (
            ("explain.json", json.dumps(result, indent=2)),
            ("explain.html", render_explain_html(result)),
        ):
            (tmp / name).write_text(text, encoding="utf-8")


def render_explain_html(result: dict[str, Any]) -> str:
    s, rows = result["summary"], result["layers"]
    fr = s.get("fraction", True)
    vals = [r["only_sqnr_db"] for r in rows if r["only_sqnr_db"] is not None]
    vmax = max(vals) if vals else 1.0
    bars = []
    for i, r in enumerate(rows):
        v = r["only_sqnr_db"]
        w = 0 if v is None else max(1.0, 420 * max(v, 0.0) / max(vmax, 1e-9))
        bars.append(
            f'<text x="296" y="{22 + i * 18}" font-size="10" text-anchor="end">{html.escape(r["name"])}</text>'
            f'<rect x="300" y="{11 + i * 18}" width="{w:.1f}" height="14" fill="#2b6cd9"><title>{fmt_sqnr(v)} dB</title></rect>'
            f'<text x="{304 + w:.1f}" y="{22 + i * 18}" font-size="10">{fmt_sqnr(v)} dB</text>'
        )
    svg = f'<svg class="plot" width="800" height="{30 + 18 * len(rows)}" viewBox="0 0 800 {30 + 18 * len(rows)}">{"".join(bars)}</svg>'
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>quantwise explain</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px}} td,th{{border:1px solid #ccc;padding:3px 6px;font-size:13px}} table{{border-collapse:collapse}}</style></head>
<body><h1>Where accuracy went: {html.escape(result["task"])} · {html.escape(result["recipe"]["recipe"])}</h1>
<p>{s["samples"]} {s.get("unit", "samples")} · FP32 {fmt_metric(s["fp32_metric"], fr)} · all layers quantized {fmt_metric(s["quantized_metric"], fr)} (output SQNR {fmt_sqnr(s["quantized_sqnr_db"])} dB) · {result["evaluations"]} evaluations</p>
<h2>Output SQNR with only this layer quantized (lower: more sensitive)</h2>{svg}
<h2>Per layer, worst first</h2>{layers_table_html(rows, fr)}
</body></html>"""
