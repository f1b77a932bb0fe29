"""compare through a real local Ray cluster (2 CPUs, loopback): the same records as in-process,
a worker killed mid-trial is retried, a driver killed mid-run resumes without recomputing what
finished, and a measuring label no node has is refused up front."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import ray  # the ray extra is part of the README's set-up

from quantwise.errors import UserError
from quantwise.sweep.compare import CompareSettings, run_compare
from quantwise.sweep.recommend import Budget

pytestmark = pytest.mark.xdist_group("ray")  # one local Ray at a time

FORMATS = dict(
    formats="fp32,static-int8-minmax,dynamic-int8",
    runtimes="onnxruntime,torch",
    max_drop=Budget(1.0, False),
    measure_memory=False,
    latency_seconds=0.1,
    optimize="size",
    explain="none",
)
SAME = ("status", "metrics", "per_example", "integer_ops", "quantized_layers", "float_layers", "recipe_params")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, resources={"quantwise-measure": 1}, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _check_same(a, b):
    assert [(r["format"], r["runtime"]) for r in a["records"]] == [(r["format"], r["runtime"]) for r in b["records"]]
    for x, y in zip(a["records"], b["records"]):
        for k in SAME:
            assert x.get(k) == y.get(k), (x["format"], x["runtime"], k)
        assert abs(x["size_bytes"] - y["size_bytes"]) <= 16  # quantwise.json's timings differ by digits
        assert set(y["latency_ms"]) == set(x["latency_ms"]) and "measured_on" in y and "built_on" in y
    assert a["recommendation"]["winner"]["key"] == b["recommendation"]["winner"]["key"]


def test_ray_compare_equals_in_process_and_resumes(mnist, local_ray, tmp_path):
    here = run_compare(mnist, CompareSettings(**FORMATS), tmp_path / "here")
    there = run_compare(mnist, CompareSettings(executor="ray", **FORMATS), tmp_path / "ray")
    _check_same(here, there)
    # a driver restarted with --resume against the same records/ reuses what finished, byte for byte
    kept = tmp_path / "ray" / "records" / "static-int8-minmax__onnxruntime.json"
    lost = tmp_path / "ray" / "records" / "dynamic-int8__torch.json"
    before = kept.read_bytes()
    lost.unlink()
    again = run_compare(mnist, CompareSettings(executor="ray", **FORMATS), tmp_path / "ray", resume=True)
    assert kept.read_bytes() == before and lost.exists()
    _check_same(here, again)


def test_a_test_set_sharded_across_workers_scores_as_one(mnist, local_ray, tmp_path):
    """Up to three shards per trial (build, then each shard lowers the model and runs its batches on
    any worker, then score): the same records as in-process, per-example outcomes included."""
    formats = {**FORMATS, "formats": "fp32,static-int8-minmax"}
    here = run_compare(mnist, CompareSettings(**formats), tmp_path / "here")
    there = run_compare(mnist, CompareSettings(executor="ray", shards=3, **formats), tmp_path / "ray")
    _check_same(here, there)
    for r in there["records"]:
        spans = [s["batches"] for s in r["eval_shards"]]
        assert len(spans) == min(3, len(mnist.eval_batches)) > 1  # no more shards than batches
        assert spans[0][0] == 0 and spans[-1][1] == len(mnist.eval_batches)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))  # contiguous, in order
        assert set(r["stage_seconds"]) == {"build", "shards", "score", "measure"}


def test_a_worker_killed_mid_trial_is_retried(mnist, local_ray, tmp_path):
    result: dict = {}
    s = CompareSettings(executor="ray", **{**FORMATS, "formats": "fp32,static-int8-minmax"})
    runner = threading.Thread(target=lambda: result.update(run_compare(mnist, s, tmp_path / "ray")))
    runner.start()
    killed = None
    deadline = time.time() + 120
    while killed is None and time.time() < deadline and runner.is_alive():
        for p in psutil.process_iter(["pid", "cmdline"]):
            if any("build_and_score" in part for part in (p.info["cmdline"] or [])):
                os.kill(p.info["pid"], signal.SIGKILL)
                killed = p.info["pid"]
                break
        time.sleep(0.05)
    runner.join(timeout=300)
    assert killed is not None, "no Ray worker was seen running a build stage"
    assert result and all(r["status"] == "ok" for r in result["records"]), [r.get("error") for r in result["records"]]
    assert len(result["records"]) == 4


def test_a_measuring_label_no_node_has_is_refused_before_any_trial(local_ray):
    from quantwise.sweep.ray_executor import connect

    with pytest.raises(UserError, match="no node of the Ray cluster carries the measuring label 'hw:nope'"):
        connect(None, "hw:nope")


def test_a_killed_driver_is_resumed_against_the_same_cluster_without_recomputing(local_ray, tmp_path: Path):
    """``quantwise compare --executor ray --address`` as its own process, killed (SIGKILL) once a
    trial has finished; the same command with --resume keeps that record byte for byte."""
    address = ray.get_runtime_context().gcs_address
    out = tmp_path / "ray"
    cmd = [sys.executable, "-m", "quantwise.cli", "compare", "--formats", "fp32,static-int8-minmax,dynamic-int8,fp16"]
    cmd += ["--runtimes", "onnxruntime", "--no-memory", "--explain", "none", "--optimize", "size", "--limit", "400"]
    cmd += ["--executor", "ray", "--address", address, "--out", str(out)]
    env = {**os.environ, "QUANTWISE_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    records = out / "records"
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None and not list(records.glob("*.json")):
        time.sleep(0.05)
    assert driver.poll() is None, "the driver ended before it could be killed: " + driver.stderr.read().decode()[-500:]
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    done = {f.name: f.read_bytes() for f in records.glob("*.json")}
    assert 1 <= len(done) < 4
    again = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode in (0, 1), again.stderr[-1500:]  # 1: no format met the budget, still a full run
    for name, data in done.items():
        assert (records / name).read_bytes() == data, f"{name} was recomputed"
    results = json.loads((out / "results.json").read_text())
    assert sorted((r["format"], r["status"]) for r in results["records"]) == sorted(
        (f, "ok") for f in ("fp32", "static-int8-minmax", "dynamic-int8", "fp16")
    )
