"""A self-contained ``report.html``: Plotly plots with plotly.js inlined, a sortable and filterable
results table, no external files; opens offline."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from quantwise.report.plots import COLOURS, figures, key, ok_records, plotly_js, script_json
from quantwise.report.terminal import fmt_metric, metric_cells


def _esc(x: Any) -> str:
    return html.escape(str(x))


_ok, _key = ok_records, key


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
        '<p><input id="filter" type="search" placeholder="filter rows (format, runtime, status ...)" size="40"> '
        "click a column heading to sort</p>"
        '<table class="data sortable" id="results"><thead><tr>'
        + "".join(f'<th title="sort">{_esc(h)}</th>' for h in head)
        + "</tr></thead><tbody>"
        + "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
        + "</tbody></table>"
    )


_SCRIPT = """
function qwCell(td) {
  var t = td.textContent.trim().replace(/^~/, '');
  var n = parseFloat(t);
  return (/^[-+]?[0-9.]/.test(t) && !isNaN(n)) ? n : t.toLowerCase();
}
function qwSort(table, col, th) {
  var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
  var asc = th.getAttribute('data-sort') !== 'asc';
  table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('data-sort'); });
  th.setAttribute('data-sort', asc ? 'asc' : 'desc');
  rows.sort(function (a, b) {
    var x = qwCell(a.cells[col]), y = qwCell(b.cells[col]);
    if (typeof x !== typeof y) { return typeof x === 'number' ? -1 : 1; }  // numbers first, then text
    return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
  });
  rows.forEach(function (r) { body.appendChild(r); });
}
document.addEventListener('DOMContentLoaded', function () {
  var drawn = 0;
  QW_FIGURES.forEach(function (f) {
    var el = document.getElementById(f[0]);
    Plotly.newPlot(el, f[1].data, f[1].layout, {displaylogo: false, responsive: true});
    if (el.querySelector('.main-svg')) { drawn++; }
  });
  document.body.setAttribute('data-plots', String(QW_FIGURES.length));
  document.body.setAttribute('data-rendered', String(drawn));
  document.querySelectorAll('table.sortable').forEach(function (table) {
    table.querySelectorAll('th').forEach(function (th, i) {
      th.addEventListener('click', function () { qwSort(table, i, th); });
    });
  });
  var filter = document.getElementById('filter');
  if (filter) {
    filter.addEventListener('input', function () {
      var q = filter.value.toLowerCase();
      document.querySelectorAll('#results tbody tr').forEach(function (tr) {
        tr.style.display = tr.textContent.toLowerCase().indexOf(q) >= 0 ? '' : 'none';
      });
    });
  }
});
"""


def _tie(rec: dict[str, Any]) -> str:
    tie = rec.get("tie")
    if not tie:
        return ""
    return (
        f"<br>tie: {_esc(', '.join(tie.get('keys', [])))} could not be told apart ({_esc(tie.get('why', ''))}); "
        f"broken by {_esc(tie.get('rule', ''))}"
    )


def render_html(result: dict[str, Any]) -> str:
    rec = result["recommendation"]
    lat_key = "decode_token" if _is_lm(result) else f"batch_{result['settings']['latency_batch']}"
    figs = figures(result, lat_key)
    env = result.get("env", {})
    others = "".join(f"<li><b>{_esc(k)}</b>: {_esc(v)}</li>" for k, v in rec["others"].items())
    notes = "".join(f"<li>{_esc(n)}</li>" for n in rec.get("notes", []))
    env_rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in env.items())
    runtimes = list(dict.fromkeys(r["runtime"] for r in result["records"]))
    legend = "".join(f'<span style="background:{COLOURS.get(rt, "#777")}"></span>{_esc(rt)}' for rt in runtimes)
    divs = {fid: f'<div class="plot" id="{fid}"></div>' for fid, _ in figs}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>quantwise compare: {_esc(result["task"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1280px; }}
table {{ border-collapse: collapse; margin: 8px 0 20px; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
.data td:first-child, .data td:nth-child(2) {{ text-align: left; }}
.sortable th {{ cursor: pointer; background: #f4f4f4; }}
.sortable th[data-sort=asc]::after {{ content: " ▲"; }}
.sortable th[data-sort=desc]::after {{ content: " ▼"; }}
.winner {{ background: #eef9f0; border-left: 4px solid #2a9d4a; padding: 8px 12px; }}
.plots {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 16px; }}
.legend span {{ display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px; }}
</style>
<script>{plotly_js()}</script>
</head>
<body>
<h1>quantwise compare — {_esc(result["task"])}</h1>
<div class="winner"><b>{_esc(rec["message"])}</b><br>target {_esc(rec["target"])} · optimize {_esc(rec["objective"])} · budget {_esc(rec["budget"])}
{f"<br>runner-up: {_esc(rec['runner_up']['key'])}" if rec.get("runner_up") else ""}{_tie(rec)}</div>
<ul>{notes}</ul>
<h2>Accuracy against cost</h2>
<p class="legend">runtime:{legend} · dashed line: Pareto front · ★ recommended · error bars: 95% intervals
(latency: bootstrap of the median; metric: paired bootstrap of the change vs FP32). Hover a point for its format.</p>
<div class="plots">{divs["plot-latency"]}{divs["plot-size"]}</div>
<h2>Per format</h2>
<div class="plots">{divs["bars-latency"]}{divs["bars-size"]}{divs["bars-change"]}</div>
<h2>All results</h2>
{_table(result)}
<h2>Why the others lost</h2><ul>{others}</ul>
{precision_maps(result)}
{losses_html(result.get("losses") or {})}
<h2>Confusion matrix change</h2>
{confusion_change(result)}
<h2>Environment</h2><table>{env_rows}</table>
<p>schema {_esc(result["schema"])} · created {_esc(result["created"])}</p>
<script>var QW_FIGURES = {script_json(figs)};
{_SCRIPT}</script>
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
