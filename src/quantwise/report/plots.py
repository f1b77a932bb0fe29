"""The report's interactive plots, built with Plotly (its JavaScript is embedded, so the page opens offline).

Each plot is a Plotly figure spec (``{"data", "layout"}``) validated by ``plotly.graph_objects``;
the page draws them with ``Plotly.newPlot``. Error bars are the record's own intervals: the
bootstrap 95% interval of each latency median and the paired-bootstrap 95% interval of the metric
change against FP32.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import plotly.graph_objects as go

from quantwise.records import Record
from quantwise.runtime.registry import RUNTIMES

COLOURS = {name: spec.colour for name, spec in RUNTIMES.items()}
_FONT = {"family": "system-ui, sans-serif", "size": 12}


def key(r: Record) -> str:
    return f"{r['format']} · {r['runtime']}"


def ok_records(result: dict[str, Any]) -> list[Record]:
    return [r for r in result["records"] if r.get("status") == "ok"]


def _metric_point(result: dict[str, Any], r: Record) -> tuple[float, float, float] | None:
    """``(value, minus, plus)`` of the task metric, with the paired interval of its change when measured."""
    rec = result["recommendation"]
    metric, frac = rec["metric"], rec.get("metric_unit", "points") == "points"
    v = r["metrics"].get(metric)
    if v is None:
        return None
    y = 100 * v if frac else v
    unc = r.get("uncertainty") or {}
    ci, change = unc.get("change_ci"), unc.get("change_points")
    if ci is None or change is None:
        return y, 0.0, 0.0
    return y, max(change - ci[0], 0.0), max(ci[1] - change, 0.0)


def _latency(r: Record, lat_key: str) -> tuple[float, float, float] | None:
    lat = r["latency_ms"].get(lat_key)
    if not lat:
        return None
    ci = lat.get("ci95") or [lat["p50"], lat["p50"]]
    return lat["p50"], max(lat["p50"] - ci[0], 0.0), max(ci[1] - lat["p50"], 0.0)


def scatter(
    result: dict[str, Any],
    cost: Callable[[Record], tuple[float, float, float] | None],
    cost_title: str,
    front: list[str],
    log_x: bool,
) -> dict[str, Any]:
    """The task metric (y) against a cost (x), one trace per runtime, error bars both ways, the Pareto
    front joined and the recommendation starred."""
    rec = result["recommendation"]
    frac = rec.get("metric_unit", "points") == "points"
    points: dict[str, tuple[Record, tuple[float, float, float], tuple[float, float, float]]] = {}
    for r in ok_records(result):
        c, m = cost(r), _metric_point(result, r)
        if c is not None and m is not None and c[0] > 0:
            points[key(r)] = (r, c, m)
    fig = go.Figure()
    for runtime in dict.fromkeys(r["runtime"] for r, _, _ in points.values()):
        mine = [(k, c, m) for k, (r, c, m) in points.items() if r["runtime"] == runtime]
        fig.add_trace(
            go.Scatter(
                x=[c[0] for _, c, _ in mine],
                y=[m[0] for _, _, m in mine],
                error_x={"type": "data", "array": [c[2] for _, c, _ in mine], "arrayminus": [c[1] for _, c, _ in mine]},
                error_y={"type": "data", "array": [m[2] for _, _, m in mine], "arrayminus": [m[1] for _, _, m in mine]},
                mode="markers",
                name=runtime,
                text=[k for k, _, _ in mine],
                marker={"color": COLOURS.get(runtime, "#777"), "size": 9},
                hovertemplate="%{text}<br>" + rec["metric"] + " %{y:.4g}<br>" + cost_title + " %{x:.4g}<extra></extra>",
            )
        )
    on_front = sorted((points[k] for k in front if k in points), key=lambda p: p[1][0])
    if len(on_front) > 1:
        fig.add_trace(
            go.Scatter(
                x=[c[0] for _, c, _ in on_front],
                y=[m[0] for _, _, m in on_front],
                mode="lines",
                name="Pareto front",
                line={"color": "#2a9d4a", "dash": "dash"},
                hoverinfo="skip",
            )
        )
    win = (rec.get("winner") or {}).get("key")
    if win in points:
        _, c, m = points[win]
        fig.add_trace(
            go.Scatter(
                x=[c[0]],
                y=[m[0]],
                mode="markers",
                name="recommended",
                text=[win],
                marker={"symbol": "star", "size": 18, "color": "#c00"},
                hovertemplate="recommended: %{text}<extra></extra>",
            )
        )
    fig.update_layout(
        title=f"{rec['metric']} against {cost_title}",
        xaxis={"title": f"{cost_title} — lower is better", "type": "log" if log_x else "linear"},
        yaxis={"title": rec["metric"] + (" (%)" if frac else "")},
        font=_FONT,
        height=420,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
    )
    return fig.to_plotly_json()


def bars(
    result: dict[str, Any],
    value: Callable[[Record], tuple[float, float, float] | None],
    title: str,
    unit: str,
) -> dict[str, Any]:
    """Horizontal bars, one per format and runtime, smallest at the top, with error bars where measured."""
    rows = [(key(r), r["runtime"], v) for r in ok_records(result) if (v := value(r)) is not None]
    rows.sort(key=lambda row: row[2][0])
    fig = go.Figure(
        go.Bar(
            x=[v[0] for _, _, v in rows],
            y=[k for k, _, _ in rows],
            orientation="h",
            marker={"color": [COLOURS.get(rt, "#777") for _, rt, _ in rows]},
            error_x={"type": "data", "array": [v[2] for _, _, v in rows], "arrayminus": [v[1] for _, _, v in rows]},
            hovertemplate="%{y}: %{x:.4g} " + unit + "<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        xaxis={"title": unit},
        yaxis={"automargin": True, "autorange": "reversed"},  # smallest first, read top-down
        font=_FONT,
        height=max(260, 24 * len(rows) + 110),
        margin={"l": 10, "r": 20, "t": 50, "b": 50},
        showlegend=False,
    )
    return fig.to_plotly_json()


def figures(result: dict[str, Any], lat_key: str) -> list[tuple[str, dict[str, Any]]]:
    """Every plot of the report as ``(id, figure spec)``."""
    rec = result["recommendation"]
    lat_title = f"latency {lat_key.replace('_', ' ')} p50 (ms)"

    def size(r: Record) -> tuple[float, float, float] | None:
        return (r["size_bytes"] / 1e6, 0.0, 0.0) if r.get("size_bytes") else None

    def change(r: Record) -> tuple[float, float, float] | None:
        unc = r.get("uncertainty") or {}
        ci, v = unc.get("change_ci"), (r.get("metric_change") or {}).get(rec["metric"])
        if v is None:
            return None
        if ci is None or unc.get("change_points") is None:
            return v, 0.0, 0.0
        return v, max(v - ci[0], 0.0), max(ci[1] - v, 0.0)

    unit = rec.get("metric_unit", "points")
    return [
        ("plot-latency", scatter(result, lambda r: _latency(r, lat_key), lat_title, rec["pareto"]["latency"], True)),
        ("plot-size", scatter(result, size, "size on disk (MB)", rec["pareto"]["size"], False)),
        ("bars-latency", bars(result, lambda r: _latency(r, lat_key), lat_title, "ms")),
        ("bars-size", bars(result, size, "size on disk (MB)", "MB")),
        ("bars-change", bars(result, change, f"{rec['metric']} change vs FP32 ({unit}), 95% interval", unit)),
    ]


def script_json(value: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``</script>``, no markup, whatever the values hold."""
    text = json.dumps(value, default=_plain)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _plain(x: Any) -> Any:
    import numpy as np

    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON: {type(x).__name__}")


def plotly_js() -> str:
    """plotly.js from the installed plotly package, inlined so the report needs no network."""
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())
