"""The ``compare`` subcommand: parsing and printing."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from quantwise.cli.args import load_task_from_args, task_args, validate_task_args


def add_compare_parser(sub: Any) -> None:
    p = sub.add_parser("compare", help="every format in every runtime, side by side, and a recommendation")
    task_args(p)
    p.add_argument("--formats", help="comma-separated formats (prefixes allowed, e.g. static-int8); default: all")
    from quantwise.runtime.registry import RUNTIMES

    p.add_argument("--runtimes", help=f"comma-separated runtimes ({', '.join(RUNTIMES)}); default: every installed one")
    p.add_argument(
        "--max-drop",
        help="budget on the task's metric: points (0.5) or relative to FP32 (1%%); "
        "default 1.0 point, or 2%% for an LLM's perplexity",
    )
    p.add_argument(
        "--optimize",
        default="latency",
        choices=("latency", "prefill", "size", "memory"),
        help="latency (an LLM: decode speed), prefill (an LLM's prompt), size or memory (default latency)",
    )
    p.add_argument(
        "--target", default="this-machine", help="this-machine, x86-avx2, x86-avx512-vnni, arm64, mcu-no-fpu, gpu"
    )
    p.add_argument(
        "--out", default="quantwise-compare", help="folder for records, results.json, report.html, the exported winner"
    )
    p.add_argument("--resume", action="store_true", help="keep finished formats from an interrupted run in --out")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an earlier compare's output in --out (else refused)"
    )
    p.add_argument("--no-train", action="store_true", help="skip the quantization-aware training formats (qat-*)")
    p.add_argument("--batch", type=int, default=32, help="the larger batch size for latency (default 32)")
    p.add_argument(
        "--explain",
        default="worst",
        choices=("worst", "all", "none"),
        help="per-layer explanation of the formats over the budget: the largest drop (default), all, or none",
    )
    p.add_argument(
        "--explain-samples", type=int, default=128, help="evaluation examples explain measures on (default 128)"
    )
    p.add_argument(
        "--executor",
        choices=("in-process", "ray"),
        default="in-process",
        help="in-process (default) or ray: trials on a Ray cluster, build/score fanned out, measuring exclusive "
        "on labelled nodes (needs quantwise[ray])",
    )
    p.add_argument(
        "--shards",
        type=int,
        default=0,
        help="--executor ray: split each trial's test set across N workers, scored as one (default 0: one "
        "shard per node of the cluster)",
    )
    p.add_argument("--address", help="--executor ray: an existing cluster (host:port); default: start a local Ray")
    p.add_argument(
        "--measure-on",
        default="quantwise-measure",
        help="--executor ray: the Ray resource marking the nodes that may measure latency and memory "
        "(one unit per node; default quantwise-measure, which a local Ray gets)",
    )


def cmd_compare(args: argparse.Namespace) -> int:
    from quantwise.errors import UserError
    from quantwise.report.html import write_html
    from quantwise.report.terminal import print_compare
    from quantwise.sweep.compare import CompareSettings, run_compare, write_json
    from quantwise.sweep.export import ExportMismatch, export_recommended
    from quantwise.sweep.formats import select_formats
    from quantwise.sweep.profiles import get_profile
    from quantwise.sweep.recommend import parse_budget

    validate_task_args(args)
    if args.shards < 0:
        raise UserError("--shards must be 0 (one per node of the Ray cluster) or a positive number of workers")
    settings = CompareSettings(
        formats=args.formats,
        runtimes=args.runtimes,
        max_drop=parse_budget(args.max_drop or "1.0"),
        optimize=args.optimize,
        target=args.target,
        threads=args.threads,
        score_threads=args.score_threads or os.cpu_count() or 1,
        measure_memory=not args.no_memory,
        batch_n=args.batch,
        train=not args.no_train,
        explain=args.explain,
        explain_samples=args.explain_samples,
        executor=args.executor,
        address=args.address,
        shards=args.shards,
        measure_on=args.measure_on,
    )
    if args.explain_samples < 1:
        raise UserError("--explain-samples must be a positive number of examples")
    get_profile(args.target)
    from quantwise.outdir import check_out

    check_out(args.out, args.overwrite, resume=args.resume)
    if args.address and args.executor != "ray":
        raise UserError("--address names a Ray cluster: add --executor ray")
    if args.executor == "ray":  # reach the cluster and find a measuring node before any work
        from quantwise.sweep.ray_executor import connect

        connect(args.address, args.measure_on)
    select_formats(args.formats, args.runtimes)  # validate names before loading anything
    task = load_task_from_args(args)
    if args.max_drop is None and task.info.get("kind") == "causal-lm":
        settings.max_drop = parse_budget("2%")  # perplexity has no points: a relative rise
    from quantwise.outdir import locked_out

    out = Path(args.out)
    built: dict = {}
    with locked_out(out):
        result = run_compare(task, settings, out, resume=args.resume, built=built)
        export_error = None
        try:
            exported = export_recommended(
                task,
                result,
                out,
                args.threads,
                settings.max_drop.points(1.0),
                built,
                settings.optimize,
                settings.score_threads,
            )
        except ExportMismatch as e:  # recorded, reported, and the run fails
            exported, export_error = None, str(e)
        result["exported"] = str(exported) if exported else None
        result["export_error"] = export_error
        write_json(out / "results.json", result)
        write_html(result, out / "report.html")
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        print_compare(result)
        print(
            f"results: {out / 'results.json'} · report: {out / 'report.html'}"
            + (f" · model: {exported}" if exported else "")
        )
    if export_error:
        print(f"error: {export_error}", file=sys.stderr)
        return 1
    failed = [r for r in result["records"] if r.get("status") == "failed"]
    if failed:
        print(
            f"{len(failed)} format(s) failed: "
            + "; ".join(f"{r['format']} · {r['runtime']}: {r['error']}" for r in failed),
            file=sys.stderr,
        )
        return 1
    return 0
