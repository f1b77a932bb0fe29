"""Command line: argument parsing and printing only; the work is in :mod:`quantwise.api`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

from quantwise.cli.args import load_task_from_args, task_args, validate_task_args
from quantwise.cli.recipe_flags import recipe_args, recipe_from_args
from quantwise.errors import UserError
from quantwise.outdir import check_out


class _Parser(argparse.ArgumentParser):
    """argparse with the house rule for mistakes: one line naming the problem, exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    from quantwise.runtime.registry import RUNTIMES, runtime_help

    parser = _Parser(
        prog="quantwise", description="Build, run and measure quantization formats on your model and data."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="FP32 metrics, latency, size and memory of a task's model")
    task_args(ev)
    ev.add_argument(
        "--runtime",
        choices=list(RUNTIMES),
        metavar="RUNTIME",
        help=f"default torch (onnxruntime for an ONNX or TensorFlow model). {runtime_help()}",
    )
    q = sub.add_parser("quantize", help="quantize with one recipe, run it, and print its metrics beside FP32")
    task_args(q)
    recipe_args(q)
    q.add_argument(
        "--runtime",
        choices=list(RUNTIMES),
        metavar="RUNTIME",
        help=f"default torch (onnxruntime for an ONNX or TensorFlow model). {runtime_help()}",
    )
    q.add_argument("--out", help="a new folder for the quantized model, its lowered artifact and result.json")
    q.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier quantwise output")
    sub.add_parser("recipes", help="list recipes and their keys")
    ex = sub.add_parser("explain", help="per-layer sensitivity of a recipe: where accuracy went and what would fix it")
    task_args(ex)
    recipe_args(ex)
    ex.add_argument("--samples", type=int, default=256, help="evaluation examples to measure on (default 256)")
    ex.add_argument("--top", type=int, default=5, help="diagnose causes for the N most sensitive layers (default 5)")
    ex.add_argument("--out", help="a new folder for explain.json and explain.html")
    ex.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier quantwise output")
    from quantwise.cli.compare import add_compare_parser
    from quantwise.cli.export_c import add_export_c_parser
    from quantwise.cli.stream import add_stream_parser

    add_export_c_parser(sub)
    add_stream_parser(sub)

    add_compare_parser(sub)
    return parser


def default_runtime(given: str | None, task: Any) -> str:
    """The runtime the user named, else ONNX Runtime for a graph (ONNX, TensorFlow) and torch otherwise."""
    return given or ("onnxruntime" if task.info.get("kind") in ("onnx-graph", "tf-graph") else "torch")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from quantwise.api import evaluate
    from quantwise.report.terminal import print_records

    validate_task_args(args)

    from quantwise.sweep.formats import task_for_recipe

    task = load_task_from_args(args)
    args.runtime = default_runtime(args.runtime, task)
    task = task_for_recipe(task, None, args.runtime)  # a graph's checked import where the runtime needs it
    rec = evaluate(
        task,
        None,
        args.runtime,
        threads=args.threads,
        measure_memory=not args.no_memory,
        score_threads=args.score_threads,
    )
    if args.format == "json":
        print(json.dumps(rec, indent=2))
    else:
        print_records([rec], f"{task.name}: FP32 in {args.runtime}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from quantwise.api import evaluate
    from quantwise.report.terminal import print_records

    recipe = recipe_from_args(args)  # validate before loading anything heavy
    validate_task_args(args)
    if args.out:
        check_out(args.out, args.overwrite)
    task = load_task_from_args(args)
    args.runtime = default_runtime(args.runtime, task)
    from quantwise.api import build_quantized
    from quantwise.runtime.registry import baseline_runtime, check_can_run
    from quantwise.sweep.formats import task_for_recipe

    base_runtime = baseline_runtime(args.runtime)  # e.g. torch-int8 and integer are measured against torch FP32
    # a graph (ONNX, TensorFlow) runs on its checked PyTorch import where compare would: QAT, fixed point, LiteRT
    qtask, base_task = task_for_recipe(task, recipe, args.runtime), task_for_recipe(task, None, base_runtime)
    qm = build_quantized(qtask, recipe)
    check_can_run(args.runtime, qm)  # refuse before the FP32 baseline is measured
    base = evaluate(
        base_task,
        None,
        base_runtime,
        threads=args.threads,
        measure_memory=not args.no_memory,
        score_threads=args.score_threads,
    )
    rec = evaluate(
        qtask,
        recipe,
        args.runtime,
        out=args.out,
        threads=args.threads,
        measure_memory=not args.no_memory,
        quantized=qm,
        score_threads=args.score_threads,
    )
    rec["baseline"] = {
        "metrics": base["metrics"],
        "latency_ms": base["latency_ms"],
        "size_bytes": base["size_bytes"],
        "peak_memory_bytes": base["peak_memory_bytes"],
    }
    if args.format == "json":
        print(json.dumps(rec, indent=2))
    else:
        print_records([base, rec], f"{task.name}: {recipe.name} in {args.runtime} vs FP32 in {base_runtime}")
        if args.out:
            print(f"wrote {args.out}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from quantwise.explain.run import explain
    from quantwise.report.explain import explain_table, write_explain
    from quantwise.report.terminal import make_console

    recipe = recipe_from_args(args)
    validate_task_args(args)
    if args.samples <= 0 or args.top <= 0:
        raise UserError("--samples and --top must be positive")
    if args.out:
        check_out(args.out, args.overwrite)
    task = load_task_from_args(args)
    result = explain(task, recipe, samples=args.samples, top=args.top)
    if args.out:
        write_explain(result, Path(args.out))
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        make_console().print(explain_table(result))
    return 0


_ALIASES = {  # registry names that share a class with another, said in their own terms
    "bf16": "Cast the whole model to bfloat16",
    "weight-int4": "INT4 weights in groups of 32, float activations",
    "w8a16": "INT8 weights, float (FP32 on a CPU) activations: weight-int8 named by the use case",
    "w4a16": "INT4 weights in groups of 32, float activations: weight-int4 named by the use case",
    "static-w4a8": "W4A8: int4 weight values with static INT8 activations (the PTQ baseline for qat-w4a8)",
    "qat-w4a8": "Quantization-aware training at W4A8, started from static-w4a8",
    "qat-w4": "Quantization-aware training of INT4 weights (groups of 32), float activations",
    "qat-w8": "Quantization-aware training of INT8 weights, float activations",
}


def cmd_recipes(_args: argparse.Namespace) -> int:
    from quantwise.cli.recipe_flags import recipe_keys
    from quantwise.recipes import RECIPES

    for name, (cls, _defaults) in RECIPES.items():
        doc = " ".join((cls.__doc__ or "").split("\n\n")[0].split())
        print(f"{name}: {_ALIASES.get(name, doc.split('. ')[0].rstrip('.'))}")
        for key in recipe_keys(name):
            print(f"    {key.key}={key.default!r}  ({key.takes}; {key.flag or 'recipe file only'}) {key.help}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code. Warning filters set here are restored on return."""
    import warnings

    with warnings.catch_warnings():
        # PyTorch deprecates the quantized-tensor API torch-int8's kernels still need: not the user's concern
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    handlers = {"evaluate": cmd_evaluate, "quantize": cmd_quantize, "recipes": cmd_recipes, "explain": cmd_explain}
    try:
        args = build_parser().parse_args(argv)
        if args.command == "export-c":
            from quantwise.cli.export_c import cmd_export_c

            return cmd_export_c(args)
        if args.command == "compare":
            from quantwise.cli.compare import cmd_compare

            return cmd_compare(args)
        if args.command == "stream":
            from quantwise.cli.stream import cmd_stream

            return cmd_stream(args)
        return handlers[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # the file system said no (full disk, permissions): one line, nothing half-written
        where = f" ({e.filename})" if e.filename else ""
        print(
            f"error: cannot write or read a file{where}: {e.strerror or e}; free space or fix permissions and rerun",
            file=sys.stderr,
        )
        return 2
