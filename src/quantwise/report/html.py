"""A self-contained ``report.html``: inline SVG plots, no external files, opens offline."""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any

from quantwise.records import Record
from quantwise.report.terminal import fmt_metric, metric_cells
from quantwise.runtime.registry import RUNTIMES

W, H, PAD = 560, 340, 56
_COLORS = {name: spec.colour for name, spec in RUNTIMES.items()}


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _ok(result: dict[str, Any]) -> list[Record]:
    return [r for r in result["records"] if r.get("status") == "ok"]


def _key(r: Record) -> str:
    return f"{r['format']} · {r['runtime']}"


def scatter(result: dict[str, Any], cost_name: str, cost: Any, unit: str, front: list[str], log_x: bool = False) -> str:
    """Accuracy (y) against a cost (x): the Pareto front joined, the winner starred."""
    metric = result["recommendation"]["metric"]
    frac = result["recommendation"].get("metric_unit", "points") == "points"
    pts = [
        (_key(r), cost(r), (100 if frac else 1) * r["metrics"][metric], r["runtime"]) for r in _ok(result) if cost(r)
    ]
    if not pts:
        return "<p>no data</p>"
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    xs, ys = [fx(p[1]) for p in pts], [p[2] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x0, x1 = (x0 - 0.5, x1 + 0.5) if x1 == x0 else (x0 - 0.05 * (x1 - x0), x1 + 0.05 * (x1 - x0))
    y0, y1 = (y0 - 0.5, y1 + 0.5) if y1 == y0 else (y0 - 0.08 * (y1 - y0), y1 + 0.08 * (y1 - y0))

    def sx(v: float) -> float:
        return PAD + (fx(v) - x0) / (x1 - x0) * (W - 2 * PAD)

    def sy(v: float) -> float:
        return H - PAD - (v - y0) / (y1 - y0) * (H - 2 * PAD)

    win = (result["recommendation"].get("winner") or {}).get("key")
    parts = [
        f'<svg class="plot" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="accuracy vs {_esc(cost_name)}">',
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#444"/>',
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#444"/>',
    ]
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        xv = x0 + (x1 - x0) * i / 4
        xl = 10**xv if log_x else xv
        parts.append(f'<text x="{PAD - 6}" y="{sy(yv) + 4:.1f}" font-size="10" text-anchor="end">{yv:.2f}</text>')
        parts.append(
            f'<text x="{PAD + (xv - x0) / (x1 - x0) * (W - 2 * PAD):.1f}" y="{H - PAD + 16}" font-size="10" text-anchor="middle">{xl:.3g}</text>'
        )
    parts.append(
        f'<text x="{W / 2}" y="{H - 12}" font-size="12" text-anchor="middle">{_esc(cost_name)} ({_esc(unit)}{", log scale" if log_x else ""}) — lower is better</text>'
    )
    parts.append(
        f'<text x="14" y="{H / 2}" font-size="12" text-anchor="middle" transform="rotate(-90 14 {H / 2})">{_esc(metric)}{" (%)" if frac else ""}</text>'
    )
    fpts = sorted((p for p in pts if p[0] in front), key=lambda p: p[1])
    if len(fpts) > 1:
        parts.append(
            '<polyline fill="none" stroke="#2a9d4a" stroke-width="2" stroke-dasharray="5,3" points="'
            + " ".join(f"{sx(p[1]):.1f},{sy(p[2]):.1f}" for p in fpts)
            + '"/>'
        )
    for name, c, y, rt in pts:
        col = _COLORS.get(rt, "#777")
        parts.append(
            f'<circle cx="{sx(c):.1f}" cy="{sy(y):.1f}" r="{6 if name in front else 4}" fill="{col}" '
            f'stroke="{"#2a9d4a" if name in front else "none"}" stroke-width="2"><title>{_esc(name)}: {y:.2f}%, {c:.4g} {_esc(unit)}</title></circle>'
        )
        if name == win:
            parts.append(
                f'<text x="{sx(c):.1f}" y="{sy(y) - 10:.1f}" font-size="18" text-anchor="middle" fill="#c00">★</text>'
            )
        if name in front or name == win:  # label the front and the winner; every point has a tooltip
            parts.append(f'<text x="{sx(c) + 7:.1f}" y="{sy(y) + 3:.1f}" font-size="9" fill="#333">{_esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bars(result: dict[str, Any], title: str, value: Any, fmt: str) -> str:
    """Horizontal bars, one per format/runtime."""
    rows = [(_key(r), value(r), r["runtime"]) for r in _ok(result) if value(r) is not None]
    if not rows:
        return "<p>no data</p>"
    vmax = max(abs(v) for _, v, _ in rows) or 1.0
    bh, left = 18, 230
    h = len(rows) * (bh + 4) + 30
    parts = [
        f'<svg class="plot" viewBox="0 0 {W + 120} {h}" width="{W + 120}" height="{h}" role="img" aria-label="{_esc(title)}">',
        f'<text x="4" y="14" font-size="12" font-weight="bold">{_esc(title)}</text>',
    ]
    for i, (name, v, rt) in enumerate(rows):
        y = 24 + i * (bh + 4)
        wv = max(1.0, (W - left) * max(v, 0.0) / vmax)
        parts.append(f'<text x="{left - 6}" y="{y + 13}" font-size="10" text-anchor="end">{_esc(name)}</text>')
        parts.append(
            f'<rect x="{left}" y="{y}" width="{wv:.1f}" height="{bh}" fill="{_COLORS.get(rt, "#777")}"><title>{_esc(name)}: {_esc(fmt.format(v))}</title></rect>'
        )
        parts.append(f'<text x="{left + wv + 4:.1f}" y="{y + 13}" font-size="10">{_esc(fmt.format(v))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def confusion_change(result: dict[str, Any]) -> str:
    """Winner's confusion matrix minus FP32's, as a coloured table."""
    ok = _ok(result)
    win = (result["recommendation"].get("winner") or {}).get("key")
    w = next((r for r in ok if _key(r) == win), None)
    b = next((r for r in ok if r["format"] == "fp32" and (w is None or r["runtime"] == w["runtime"])), None)
    if not w or not b or "confusion_matrix" not in w["metrics"]:
        return "<p>No recommended format, or the task is not a classification task: no confusion-matrix change to show.</p>"
    cw, cb = w["metrics"]["confusion_matrix"], b["metrics"]["confusion_matrix"]
    out = [
        f"<p>{_esc(win)} minus FP32 (rows: true class, columns: predicted). Positive off-diagonal cells are new mistakes.</p>",
        '<table class="cm"><tr><th></th>' + "".join(f"<th>{j}</th>" for j in range(len(cw))) + "</tr>",
    ]
    for i, (rw, rb) in enumerate(zip(cw, cb)):
        cells = []
        for j, (a, c) in enumerate(zip(rw, rb)):
            d = a - c
            bad = (d > 0) != (i == j) and d != 0
            bg = "#fff" if d == 0 else ("#f4b6b6" if bad else "#b9e4c3")
            cells.append(f'<td style="background:{bg}">{d:+d}</td>')
        out.append(f"<tr><th>{i}</th>{''.join(cells)}</tr>")
    out.append("</table>")
    return "".join(out)


def _is_lm(result: dict[str, Any]) -> bool:
    return any("decode" in r for r in result["records"])


def _table(result: dict[str, Any]) -> str:
    metric = result["recommendation"]["metric"]
    lm = _is_lm(result)
    head = [
        "format",
        "runtime",
        metric,
        "Δ pts",
        "macro F1",
        "b1 p50 ms",
        f"b{result['settings']['batch_n']} p50 ms",
        "speedup",
        "size MB",
        "int ops",
        "status",
    ]
    if lm:  # a causal LM: agreement with FP32 and decode speed instead of F1 and a batch of 32
        head[3:7] = ["Δ", "KL to FP32", "prefill ms", "decode tok/s"]
    rows = []
    for r in result["records"]:
        if r.get("status") != "ok":
            rows.append([r["format"], r["runtime"], *[""] * (len(head) - 3), r.get("error", "failed")])
            continue
        lat = r["latency_ms"]
        b1, bn = (
            lat.get(f"batch_{result['settings']['latency_batch']}"),
            lat.get(f"batch_{result['settings']['batch_n']}"),
        )
        sp = r.get("speedup", {}).get(f"batch_{result['settings']['latency_batch']}")
        ops = r.get("integer_ops") or {}
        cells = list(metric_cells(result, r))
        times = [f"{b1['p50']:.2f}" if b1 else "", f"{bn['p50']:.2f}" if bn else ""]
        if lm:
            dec = r.get("decode") or {}
            cells[2] = f"{r['metrics'].get('kl_to_fp32', float('nan')):.4f}"
            times = [
                times[0],
                f"{dec['tokens_per_s']:.1f}" if dec.get("status") == "ok" else str(dec.get("status", "")),
            ]
            sp = r.get("speedup", {}).get("decode_token")
        rows.append(
            [
                r["format"],
                r["runtime"],
                *cells,
                *times,
                f"{sp:.2f}x" if sp else "",
                f"{r['size_bytes'] / 1e6:.2f}",
                f"{ops.get('integer', 0)}/{ops.get('total', 0)}",
                "ok",
            ]
        )
    return (
        '<table class="data"><tr>'
        + "".join(f"<th>{_esc(h)}</th>" for h in head)
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
        + "</table>"
    )


_SCRIPT = """
document.addEventListener('DOMContentLoaded', function () {
  var plots = document.querySelectorAll('svg.plot');
  var drawn = 0;
  plots.forEach(function (p) { if (p.querySelectorAll('circle,rect,polyline').length > 0) drawn++; });
  document.body.setAttribute('data-plots', String(plots.length));
  document.body.setAttribute('data-rendered', String(drawn));
});
"""


def render_html(result: dict[str, Any]) -> str:
    rec = result["recommendation"]
    lat_key = "decode_token" if _is_lm(result) else f"batch_{result['settings']['latency_batch']}"

    def lat(r: Record) -> float | None:
        v = r["latency_ms"].get(lat_key)
        return v["p50"] if v else None

    env = result.get("env", {})
    others = "".join(f"<li><b>{_esc(k)}</b>: {_esc(v)}</li>" for k, v in rec["others"].items())
    notes = "".join(f"<li>{_esc(n)}</li>" for n in rec.get("notes", []))
    env_rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in env.items())
    runtimes = list(dict.fromkeys(r["runtime"] for r in result["records"]))
    legend = "".join(f'<span style="background:{_COLORS.get(rt, "#777")}"></span>{_esc(rt)}' for rt in runtimes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>quantwise compare: {_esc(result["task"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1200px; }}
table {{ border-collapse: collapse; margin: 8px 0 20px; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
.data td:first-child, .data td:nth-child(2) {{ text-align: left; }}
.winner {{ background: #eef9f0; border-left: 4px solid #2a9d4a; padding: 8px 12px; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 16px; }}
.legend span {{ display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px; }}
</style></head>
<body>
<h1>quantwise compare — {_esc(result["task"])}</h1>
<div class="winner"><b>{_esc(rec["message"])}</b><br>target {_esc(rec["target"])} · optimize {_esc(rec["objective"])} · budget {_esc(rec["budget"])}
{f"<br>runner-up: {_esc(rec['runner_up']['key'])}" if rec.get("runner_up") else ""}</div>
<ul>{notes}</ul>
<h2>Accuracy against cost</h2>
<p class="legend">runtime:{legend} · green ring and dashed line: Pareto front · ★ recommended</p>
<div class="plots">
{scatter(result, f"latency {lat_key.replace('_', ' ')} p50", lat, "ms", rec["pareto"]["latency"], log_x=True)}
{scatter(result, "size on disk", lambda r: r.get("size_bytes") and r["size_bytes"] / 1e6, "MB", rec["pareto"]["size"])}
</div>
<h2>Per format</h2>
<div class="plots">
{bars(result, f"latency {lat_key.replace('_', ' ')} p50 (ms)", lat, "{:.2f} ms")}
{bars(result, "size on disk (MB)", lambda r: r["size_bytes"] / 1e6, "{:.2f} MB")}
{bars(result, f"{rec['metric']} change vs FP32 ({rec.get('metric_unit', 'points')})", lambda r: (r.get("metric_change") or {}).get(rec["metric"], 0.0), "{:+.3g}")}
</div>
<h2>All results</h2>
{_table(result)}
<h2>Why the others lost</h2><ul>{others}</ul>
{precision_maps(result)}
{losses_html(result.get("losses") or {})}
<h2>Confusion matrix change</h2>
{confusion_change(result)}
<h2>Environment</h2><table>{env_rows}</table>
<p>schema {_esc(result["schema"])} · created {_esc(result["created"])}</p>
<script>{_SCRIPT}</script>
</body></html>
"""


def precision_maps(result: dict[str, Any]) -> str:
    """Per-layer precision of each mixed-precision record (one table per distinct map)."""
    seen: dict[str, list[str]] = {}
    maps: dict[str, dict[str, str]] = {}
    for r in _ok(result):
        pm = (r.get("info") or {}).get("precision_map")
        if pm:
            k = repr(sorted(pm.items()))
            seen.setdefault(k, []).append(f"{r['format']} · {r['runtime']}")
            maps[k] = pm
    if not maps:
        return ""
    out = ["<h2>Mixed precision: per-layer map</h2>"]
    for k, pm in maps.items():
        counts: dict[str, int] = {}
        for v in pm.values():
            counts[v] = counts.get(v, 0) + 1
        rows = "".join(f"<tr><td>{_esc(n)}</td><td>{_esc(v)}</td></tr>" for n, v in pm.items())
        out.append(
            f"<p>{_esc(', '.join(seen[k]))}: "
            + ", ".join(f"{c} × {_esc(v)}" for v, c in counts.items())
            + f'</p><table class="data"><tr><th>layer</th><th>precision</th></tr>{rows}</table>'
        )
    return "".join(out)


def losses_html(losses: dict[str, Any]) -> str:
    """Where the over-budget formats lost accuracy, per layer (from ``explain``)."""
    explained, skipped = losses.get("explained") or {}, losses.get("not_explained") or {}
    if not explained and not skipped:
        return ""
    out = ["<h2>Where accuracy was lost</h2>"]
    for fmt, ex in explained.items():
        s = ex["summary"]
        fr = s.get("fraction", True)
        what = "each block quantized alone" if s.get("groups") else "each layer quantized alone and left out"
        out.append(
            f"<p><b>{_esc(fmt)}</b> is worse by {ex['drop_points']:.4g} {'points' if fr else _esc(s['metric'])}. Measured in the PyTorch simulation on "
            f"{s['samples']} {s.get('unit', 'samples')} (FP32 {fmt_metric(s['fp32_metric'], fr)}, quantized {fmt_metric(s['quantized_metric'], fr)}): {what}, "
            f"most sensitive first. More: <code>{_esc(ex['command'])}</code></p>"
        )
        out.append(layers_table_html(ex["layers"], fr))
    if skipped:
        out.append(
            "<ul>" + "".join(f"<li>{_esc(k)}: not explained ({_esc(v)})</li>" for k, v in skipped.items()) + "</ul>"
        )
    return "".join(out)


def layers_table_html(rows: list[dict[str, Any]], fraction: bool = True) -> str:
    """The per-layer table (worst first): alone and left out, with measured causes and suggestions."""
    trs = "".join(
        f"<tr><td>{_esc(r['name'])}</td><td>{fmt_metric(r['only_metric'], fraction)}</td><td>{fmt_sqnr(r['only_sqnr_db'])}</td>"
        f"<td>{fmt_metric(r['all_but_metric'], fraction)}</td><td>{fmt_sqnr(r['all_but_sqnr_db'])}</td><td>{_esc('; '.join(r['causes']))}</td>"
        f"<td>{_esc('; '.join(r['suggestions']))}</td></tr>"
        for r in rows
    )
    return (
        "<table><tr><th>layer</th><th>only it quantized</th><th>SQNR dB</th><th>all but it</th><th>SQNR dB</th>"
        f"<th>measured cause</th><th>suggestion</th></tr>{trs}</table>"
    )


def fmt_sqnr(v: float | None) -> str:
    """An SQNR in dB; None (infinite) means the output was exact."""
    return "exact" if v is None else f"{v:.1f}"


def write_html(result: dict[str, Any], path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_html(result), encoding="utf-8")
    os.replace(tmp, path)
    return path
