"""The HTML report opened in a real headless browser: no script errors, every plot drawn."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from quantwise.report.html import write_html
from quantwise.sweep.compare import CompareSettings, run_compare
from quantwise.sweep.recommend import Budget

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def open_in_browser(page: Path, profile: Path) -> tuple[str, str]:
    """``(dom, log)`` of a page loaded by headless Chromium."""
    assert CHROMIUM, "Debian's chromium is required (the test command installs it)"
    p = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return p.stdout, p.stderr


def test_error_detection_works(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefined_fn()</script></body></html>")
    _, log = open_in_browser(bad, tmp_path / "p0")
    assert "Uncaught ReferenceError" in log


def test_report_renders_every_plot_without_errors(mnist, tmp_path):
    s = CompareSettings(
        formats="fp32,static-int8-minmax,weight-int4-g32",
        runtimes="torch,onnxruntime",
        max_drop=Budget(1.0, False),
        measure_memory=False,
        latency_seconds=0.2,
        optimize="size",  # a winner whatever the shared machine's timing noise
    )
    result = run_compare(mnist, s, tmp_path / "run")
    page = write_html(result, tmp_path / "report.html")
    text = page.read_text()
    # opens offline: plotly.js is inlined, nothing is fetched
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", text)
    dom, log = open_in_browser(page, tmp_path / "p1")
    assert "Uncaught" not in log, log
    m = re.search(r'<body data-plots="(\d+)" data-rendered="(\d+)"', dom)
    assert m, "the report's script did not run"
    plots, drawn = int(m.group(1)), int(m.group(2))
    assert plots == 5 and drawn == plots
    assert dom.count('class="main-svg"') >= 2 * plots  # Plotly drew each figure
    assert "Pareto front" in dom and "recommended" in dom and "Confusion matrix change" in dom
    assert "error_y" in text and "arrayminus" in text  # metric and latency intervals are plotted
    assert result["recommendation"]["winner"]["key"] in dom

    # the results table sorts by a clicked column and filters by typed text, in the browser
    size_col = re.findall(r"<th[^>]*>([^<]*)</th>", text.split('id="results"')[1]).index("size MB")
    probe = text.replace(
        "</body>",
        "<script>document.addEventListener('DOMContentLoaded', function () {"
        f"var th = document.querySelectorAll('#results th')[{size_col}]; th.click();"
        f"var sizes = Array.from(document.querySelectorAll('#results tbody tr')).map(r => r.cells[{size_col}].textContent);"
        "document.body.setAttribute('data-sorted', sizes.join('|'));"
        "var f = document.getElementById('filter'); f.value = 'onnxruntime'; f.dispatchEvent(new Event('input'));"
        "var shown = Array.from(document.querySelectorAll('#results tbody tr')).filter(r => r.style.display !== 'none');"
        "document.body.setAttribute('data-shown', shown.map(r => r.cells[1].textContent).join('|'));"
        "});</script></body>",
    )
    (tmp_path / "probe.html").write_text(probe)
    dom, log = open_in_browser(tmp_path / "probe.html", tmp_path / "p3")
    assert "Uncaught" not in log, log
    sizes = [float(v) for v in re.search(r'data-sorted="([^"]*)"', dom).group(1).split("|") if v]
    assert len(sizes) >= 4 and sizes == sorted(sizes)
    shown = re.search(r'data-shown="([^"]*)"', dom).group(1).split("|")
    assert shown and set(shown) == {"onnxruntime"}


def test_report_confusion_change_and_where_accuracy_was_lost_are_shown(mnist_dim_calibration, tmp_path):
    mnist = mnist_dim_calibration  # static-int8 loses here; weight-int4 (no calibration) is the smallest within budget
    s = CompareSettings(
        formats="fp32,static-int8-minmax,weight-int4-g32",
        optimize="size",
        runtimes="onnxruntime",
        measure_memory=False,
        latency_seconds=0.1,
        max_drop=Budget(0.5, False),
        explain_samples=32,
    )
    result = run_compare(mnist, s, tmp_path / "run")
    page = write_html(result, tmp_path / "r.html")
    dom, log = open_in_browser(page, tmp_path / "p2")
    assert "Uncaught" not in log, log
    assert '<table class="cm">' in dom
    assert "Where accuracy was lost" in dom and "<b>static-int8-minmax</b> is worse by" in dom


def test_mixed_precision_map_is_shown_per_layer():
    from quantwise.report.html import precision_maps

    rec = {
        "format": "mixed",
        "runtime": "onnxruntime",
        "status": "ok",
        "info": {"precision_map": {"a.0": "int4 weights", "a.1": "int8 weights", "a.2": "int4 weights"}},
    }
    html = precision_maps({"records": [rec, {"format": "fp32", "runtime": "onnxruntime", "status": "ok", "info": {}}]})
    assert "mixed · onnxruntime: 2 × int4 weights, 1 × int8 weights" in html
    assert html.count("<tr><td>") == 3 and precision_maps({"records": []}) == ""


MARK = '<img src=x onerror="alert(1)">'


def _plant(x, skip=("status", "schema", "metric", "metric_unit")):
    """Append markup to every string in a result (keys of dicts too), except values the report
    dispatches on."""
    if isinstance(x, dict):
        return {
            (MARK + k if isinstance(k, str) and k not in skip and "·" in k else k): (
                v if k in skip else _plant(v, skip)
            )
            for k, v in x.items()
        }
    if isinstance(x, list):
        return [_plant(v, skip) for v in x]
    return MARK + x if isinstance(x, str) else x


def test_every_value_in_the_report_is_escaped(mnist, tmp_path):
    s = CompareSettings(
        formats="fp32,dynamic-int8",
        runtimes="torch,onnxruntime",
        max_drop=Budget(1.0, False),
        measure_memory=False,
        latency_seconds=0.1,
    )
    result = run_compare(mnist, s, tmp_path / "run")
    result["records"].append(
        {"format": "bf16", "runtime": "onnxruntime", "status": "unsupported", "error": "no kernels"}
    )
    result["recommendation"]["others"]["bf16 · onnxruntime"] = "not applicable: no kernels"
    planted = _plant(result)
    planted["records"][0]["integer_ops"]["float"].append(MARK)
    text = write_html(planted, tmp_path / "report.html").read_text()
    assert MARK not in text and 'onerror="alert' not in text
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
